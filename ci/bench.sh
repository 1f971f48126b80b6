#!/usr/bin/env bash
# The benchmark: `ci/bench.sh [--runs N] [--quick] [--json PATH]`. Builds Tidal and the guest,
# then runs tidal-bench (tests/src/bin/tidal-bench.rs) directly on hardware KVM, or inside the
# QEMU test host where /dev/kvm is KVM-PVM, and prints a table of medians. Figures measured in
# the test host are emulated: compare them with each other, not with hardware.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

resources/build-guest.sh >/dev/null
cargo build --release --quiet -p tidal-vmm -p tidal-tests --bin tidal --bin tidal-bench
bench=(target/release/tidal-bench "$@")
case "$(ci/kvm-kind.sh)" in
    hardware) echo "bench: hardware KVM on $(uname -n)" >&2; exec "${bench[@]}" ;;
    pvm)
        echo "bench: /dev/kvm is KVM-PVM: running inside the QEMU test host (emulated figures)" >&2
        exec ci/testhost.sh -- "${bench[@]}"
        ;;
    *) echo "bench: no /dev/kvm" >&2; exit 1 ;;
esac
