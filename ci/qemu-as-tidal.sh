#!/usr/bin/env bash
# Runs QEMU with tidal's command line, so the harness can boot the same guest under a reference
# VMM: `TIDAL_BIN=ci/qemu-as-tidal.sh` points the integration tests at QEMU, and tidal-bench
# (tests/src/bench/) runs it beside Tidal. The one place that knows QEMU's flags.
#
# Understood:
#   --kernel PATH --initramfs PATH --cmdline "..." --cpus N --serial stdio
#   --memory size=SIZE[,hotplug_size=SIZE][,slots=N]
#       -> -m SIZE, or with a hotplug region -m SIZE,slots=N,maxmem=SIZE+HOTPLUG_SIZE (slots
#          default 32, as tidal's); sizes in tidal's syntax (bytes, or K/M/G/T, powers of 1024),
#          whole MiB. With a hotplug region the kernel command line also gets
#          memhp_default_state=online_movable, as tidal adds it (ci/lib/tidal-cmdline.sh, which
#          reads the options both wrappers share).
#   --qmp-socket PATH
#       a QMP server (QEMU's machine protocol) on this Unix socket, QEMU's counterpart of
#       tidal's --api-socket: object-add memory-backend-ram + device_add pc-dimm plug a DIMM,
#       device_del unplugs it (DEVICE_DELETED once the guest has ejected it).
# Refused: anything else (--dump-acpi among them: QEMU's tables are not Tidal's).
# Machine: `pc` (i440fx), whose ACPI memory hotplug Debian's kernel drives. Accelerator: KVM
# where /dev/kvm is hardware-backed (kvm_amd or kvm_intel loaded), else TCG;
# QEMU_AS_TIDAL_ACCEL=kvm|tcg overrides.
set -euo pipefail

wrapper=qemu-as-tidal
# shellcheck source=ci/lib/tidal-cmdline.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/tidal-cmdline.sh"

qmp=''
wrapper_option() {
    case "$1" in
        --qmp-socket) qmp=$2 ;;
        *) return 1 ;;
    esac
}
read_tidal_args "$@"

memory="${size_mib}M"
if [ "$hotplug_mib" -gt 0 ]; then
    memory+=",slots=${slots:-32},maxmem=$((size_mib + hotplug_mib))M"
fi

accel=${QEMU_AS_TIDAL_ACCEL:-}
if [ -z "$accel" ]; then
    if [ -d /sys/module/kvm_amd ] || [ -d /sys/module/kvm_intel ]; then accel=kvm; else accel=tcg; fi
fi
cpu=max
[ "$accel" = kvm ] && cpu=host

# debug-threads=on names the vCPU threads `CPU N/KVM`, so the test harness's reports on a
# silent guest (tests/src/threads.rs) and ci/test.sh's soft-lockup check can find them.
args=(-machine pc -accel "$accel" -cpu "$cpu" -smp "$cpus" -m "$memory" -nodefaults
    -no-user-config -display none -serial stdio -monitor none -no-reboot -name debug-threads=on
    -kernel "$kernel" -append "$cmdline")
[ -n "$initramfs" ] && args+=(-initrd "$initramfs")
# In QEMU's option syntax a comma is written twice.
# shellcheck disable=SC2054 # the commas belong to QEMU's option syntax
[ -n "$qmp" ] && args+=(-chardev "socket,id=qmp,path=${qmp//,/,,},server=on,wait=off"
    -mon chardev=qmp,mode=control)
exec qemu-system-x86_64 "${args[@]}"
