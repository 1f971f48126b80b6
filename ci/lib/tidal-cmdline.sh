# Tidal's command line, read for the wrappers that run another VMM in Tidal's place
# (ci/qemu-as-tidal.sh, ci/ch-as-tidal.sh): sourced, not run. The wrapper sets `wrapper` (its
# name, for messages) and defines `wrapper_option NAME VALUE`, which takes its own options and
# returns 1 for one it does not know; then `read_tidal_args "$@"` sets:
#   kernel initramfs cmdline cpus        --kernel --initramfs --cmdline --cpus
#   size_mib hotplug_mib slots           --memory size=SIZE[,hotplug_size=SIZE][,slots=N]
# Sizes are in Tidal's syntax (bytes, or K/M/G/T, powers of 1024), whole MiB. `--serial stdio`
# is the only serial option understood.

die() {
    echo "${wrapper:?}: $*" >&2
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

# --memory's key=value list.
read_memory_option() {
    local item value items
    IFS=, read -ra items <<<"$1"
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
    [ "$hotplug_mib" -gt 0 ] || [ -z "$slots" ] || die "--memory: slots needs hotplug_size"
}

read_tidal_args() {
    kernel='' initramfs='' cmdline='console=ttyS0 reboot=acpi panic=1' cpus=1
    size_mib=512 hotplug_mib=0 slots=''
    while [ $# -gt 0 ]; do
        [ $# -ge 2 ] || die "$1 needs a value"
        case "$1" in
            --kernel) kernel=$2 ;;
            --initramfs) initramfs=$2 ;;
            --cmdline) cmdline=$2 ;;
            --cpus) cpus=$2 ;;
            --memory) read_memory_option "$2" ;;
            --serial) [ "$2" = stdio ] || die "only --serial stdio is understood" ;;
            *) wrapper_option "$1" "$2" || die "unsupported argument '$1'" ;;
        esac
        shift 2
    done
    [ -n "$kernel" ] || die "--kernel is required"
    if [ "$hotplug_mib" -gt 0 ]; then
        add_online_movable
    fi
}

# With a hotplug region the kernel command line gets memhp_default_state=online_movable, as
# tidal adds it (unless the line sets it before any `--`): the guest onlines hot-added memory
# itself, into ZONE_MOVABLE, so that it can be removed again.
add_online_movable() {
    # The kernel's own parameters end at the first ` -- `; what follows is init's.
    local kernel_params=${cmdline%% -- *}
    if [[ " $kernel_params " != *" memhp_default_state="* ]]; then
        cmdline="$kernel_params memhp_default_state=online_movable${cmdline:${#kernel_params}}"
    fi
}
