#!/usr/bin/env bash
# Runs Cloud Hypervisor with tidal's command line, so tidal-bench (tests/src/bench/) can boot
# the same guest under it beside Tidal and QEMU. The one place that knows Cloud Hypervisor's
# flags.
#
# Understood:
#   --cloud-hypervisor PATH
#       the cloud-hypervisor binary to run (required: Debian does not package it, the user
#       passes their own, ci/bench.sh --ch PATH).
#   --kernel PATH --initramfs PATH --cmdline "..." --cpus N --serial stdio
#       -> --kernel, --initramfs, --cmdline, --cpus boot=N; the kernel must be an ELF vmlinux
#          with a PVH note (Cloud Hypervisor boots no bzImage).
#   --memory size=SIZE[,hotplug_size=SIZE][,slots=N]
#       -> --memory size=SIZE, with a hotplug region also hotplug_method=acpi,hotplug_size=SIZE
#          (memory arrives as ACPI memory devices, as under Tidal and QEMU; Cloud Hypervisor
#          has a fixed count of them, so slots is accepted and not passed on). Sizes in tidal's
#          syntax, whole MiB; with a hotplug region the kernel command line also gets
#          memhp_default_state=online_movable (ci/lib/tidal-cmdline.sh, which reads the options
#          the wrappers share).
#   --api-socket PATH
#       Cloud Hypervisor's REST API on this Unix socket (the API Tidal's is compatible with):
#       `vm.resize` with a larger `desired_ram` plugs the difference and answers at once, the
#       guest onlines it afterwards; `vmm.ping` says the version and the process id.
# Refused: anything else.
#
# The serial console is the guest's ttyS0 on stdin and stdout, as tidal's --serial stdio.
# Cloud Hypervisor reads console input only from a terminal, so it runs under `script`
# (util-linux) on a pseudo-terminal put in raw mode with echo off; its own stderr is kept apart
# from the console. The process this wrapper becomes is `script`, not Cloud Hypervisor: ask
# `vmm.ping` for its pid. Killing `script` hangs up the terminal, which ends Cloud Hypervisor.
set -euo pipefail

wrapper=ch-as-tidal
# shellcheck source=ci/lib/tidal-cmdline.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/tidal-cmdline.sh"

ch='' api=''
wrapper_option() {
    case "$1" in
        --cloud-hypervisor) ch=$2 ;;
        --api-socket) api=$2 ;;
        *) return 1 ;;
    esac
}
read_tidal_args "$@"
[ -n "$ch" ] || die "--cloud-hypervisor PATH is required"
[ -f "$ch" ] && [ -x "$ch" ] || die "the Cloud Hypervisor binary '$ch' is not an executable file"
command -v script >/dev/null || die "needs script (util-linux) for the console's terminal"

memory="size=${size_mib}M"
if [ "$hotplug_mib" -gt 0 ]; then
    memory+=",hotplug_method=acpi,hotplug_size=${hotplug_mib}M"
fi
args=(--kernel "$kernel" --cmdline "$cmdline" --cpus "boot=$cpus" --memory "$memory"
    --serial tty --console off)
[ -n "$initramfs" ] && args+=(--initramfs "$initramfs")
[ -n "$api" ] && args+=(--api-socket "path=$api")

# script runs its command with $SHELL -c; printf %q quotes for bash. Descriptor 3 carries
# this wrapper's stderr past the terminal.
exec 3>&2
printf -v command '%q ' "$ch" "${args[@]}"
SHELL=/bin/bash exec script --quiet --flush --return --echo never \
    --command "stty raw -echo && exec $command 2>&3 3>&-" /dev/null
