#!/usr/bin/env bash
# Prints what backs this machine's /dev/kvm:
#   hardware  kvm_amd or kvm_intel is loaded: Linux guests boot directly, no test host needed
#   pvm       KVM-PVM (software, see /work/shared/TESTHOST.md): Linux guests need the test host
#   none      no usable /dev/kvm at all
# Usable as `ci/kvm-kind.sh` or, sourced, as the function `kvm_kind`.

kvm_kind() {
    if [ -d /sys/module/kvm_amd ] || [ -d /sys/module/kvm_intel ]; then
        echo hardware
    elif [ -d /sys/module/kvm_pvm ] && [ -c /dev/kvm ]; then
        echo pvm
    else
        echo none
    fi
}

# Run as a script (not sourced): print the answer.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    kvm_kind
fi
