#!/usr/bin/env bash
# Runs QEMU with tidal's command line, so the integration tests (and benchmarks) can be pointed
# at a reference VMM: `TIDAL_BIN=ci/qemu-as-tidal.sh`. It proves the tests themselves and the
# guest images on QEMU, and gives the side-by-side numbers TESTHOST.md asks for.
#
# Understood: --kernel --initramfs --cmdline --cpus --memory size=SIZE --serial stdio
#             --dump-acpi is refused (QEMU's tables are not Tidal's).
# Uses KVM when /dev/kvm is hardware-backed (or QEMU_AS_TIDAL_ACCEL=kvm), else TCG.
set -euo pipefail

kernel='' initramfs='' cmdline="console=ttyS0" cpus=1 memory=512M
while [ $# -gt 0 ]; do
    case "$1" in
        --kernel) kernel=$2; shift 2 ;;
        --initramfs) initramfs=$2; shift 2 ;;
        --cmdline) cmdline=$2; shift 2 ;;
        --cpus) cpus=$2; shift 2 ;;
        --memory)
            memory=${2#size=}
            [[ "$memory" != *,* && "$memory" != *=* ]] || { echo "qemu-as-tidal: only --memory size=SIZE is understood" >&2; exit 2; }
            shift 2
            ;;
        --serial)
            [ "$2" = stdio ] || { echo "qemu-as-tidal: only --serial stdio is understood" >&2; exit 2; }
            shift 2
            ;;
        *) echo "qemu-as-tidal: unsupported argument '$1'" >&2; exit 2 ;;
    esac
done
[ -n "$kernel" ] || { echo "qemu-as-tidal: --kernel is required" >&2; exit 2; }

accel=${QEMU_AS_TIDAL_ACCEL:-}
if [ -z "$accel" ]; then
    if [ -d /sys/module/kvm_amd ] || [ -d /sys/module/kvm_intel ]; then accel=kvm; else accel=tcg; fi
fi
cpu=max
[ "$accel" = kvm ] && cpu=host

args=(-accel "$accel" -cpu "$cpu" -smp "$cpus" -m "$memory" -nodefaults -no-user-config
    -display none -serial stdio -monitor none -no-reboot -kernel "$kernel" -append "$cmdline")
[ -n "$initramfs" ] && args+=(-initrd "$initramfs")
exec qemu-system-x86_64 "${args[@]}"
