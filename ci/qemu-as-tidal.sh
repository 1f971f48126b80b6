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
#          memhp_default_state=online_movable, as tidal adds it (unless the line sets it before
#          any `--`): the guest onlines hot-added DIMMs itself, into ZONE_MOVABLE, so they can be
#          removed again.
#   --qmp-socket PATH
#       a QMP server (QEMU's machine protocol) on this Unix socket, QEMU's counterpart of
#       tidal's --api-socket: object-add memory-backend-ram + device_add pc-dimm plug a DIMM,
#       device_del unplugs it (DEVICE_DELETED once the guest has ejected it).
# Refused: anything else (--dump-acpi among them: QEMU's tables are not Tidal's).
# Machine: `pc` (i440fx), whose ACPI memory hotplug Debian's kernel drives. Accelerator: KVM
# where /dev/kvm is hardware-backed (kvm_amd or kvm_intel loaded), else TCG;
# QEMU_AS_TIDAL_ACCEL=kvm|tcg overrides.
set -euo pipefail

die() {
    echo "qemu-as-tidal: $*" >&2
    exit 2
}

# Prints tidal SIZE in MiB (tidal's syntax: digits with an optional K, M, G or T suffix, powers
# of 1024, optionally followed by B or iB); refuses what is not a whole number of MiB.
mib() {
    local text=${1^^} shift=0 number bytes
    text=${text%IB}
    text=${text%B}
    case "$text" in
        *K) shift=10 ;;
        *M) shift=20 ;;
        *G) shift=30 ;;
        *T) shift=40 ;;
    esac
    number=${text%[KMGT]}
    [[ "$number" =~ ^[0-9]{1,12}$ ]] || die "invalid size '$1'"
    bytes=$((10#$number << shift))
    [ $((bytes % (1 << 20))) -eq 0 ] || die "size '$1' is not a whole number of MiB"
    echo $((bytes >> 20))
}

kernel='' initramfs='' cmdline='console=ttyS0 reboot=acpi panic=1' cpus=1 qmp=''
size_mib=512 hotplug_mib=0 slots=''
while [ $# -gt 0 ]; do
    [ $# -ge 2 ] || die "$1 needs a value"
    case "$1" in
        --kernel) kernel=$2 ;;
        --initramfs) initramfs=$2 ;;
        --cmdline) cmdline=$2 ;;
        --cpus) cpus=$2 ;;
        --memory)
            IFS=, read -ra items <<<"$2"
            for item in "${items[@]}"; do
                [[ "$item" == *=* ]] || die "--memory: expected key=value, not '$item'"
                value=${item#*=}
                case "${item%%=*}" in
                    size) size_mib=$(mib "$value") ;;
                    hotplug_size) hotplug_mib=$(mib "$value") ;;
                    slots)
                        [[ "$value" =~ ^[0-9]{1,3}$ ]] || die "--memory: slots must be a number, not '$value'"
                        slots=$value
                        ;;
                    *) die "--memory: unknown key '${item%%=*}' (size, hotplug_size, slots)" ;;
                esac
            done
            ;;
        --serial) [ "$2" = stdio ] || die "only --serial stdio is understood" ;;
        --qmp-socket) qmp=$2 ;;
        *) die "unsupported argument '$1'" ;;
    esac
    shift 2
done
[ -n "$kernel" ] || die "--kernel is required"

memory="${size_mib}M"
if [ "$hotplug_mib" -gt 0 ]; then
    memory+=",slots=${slots:-32},maxmem=$((size_mib + hotplug_mib))M"
    # The kernel's own parameters end at the first ` -- `; what follows is init's.
    kernel_params=${cmdline%% -- *}
    if [[ " $kernel_params " != *" memhp_default_state="* ]]; then
        cmdline="$kernel_params memhp_default_state=online_movable${cmdline:${#kernel_params}}"
    fi
elif [ -n "$slots" ]; then
    die "--memory: slots needs hotplug_size"
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
