#!/usr/bin/env bash
# The newcomer's first command: builds Tidal, fetches Debian's kernel and a busybox guest, boots
# it with 1 GiB of RAM and an 8 GiB hotplug region, grows it to 2 GiB through the REST API
# (tidalctl), shows what the guest sees before and after, and powers it off.
#
# Where /dev/kvm is not hardware-backed (KVM-PVM, see docs/testing.md) the VM runs inside the
# QEMU test host (ci/testhost.sh); on hardware KVM it runs directly.
#
# Usage: ./demo.sh [--memory SIZE] [--grow-to SIZE] [--cpus N]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
memory=1G
grow_to=2G
cpus=2
while [ $# -gt 0 ]; do
    case "$1" in
        --memory) memory=${2:?}; shift 2 ;;
        --grow-to) grow_to=${2:?}; shift 2 ;;
        --cpus) cpus=${2:?}; shift 2 ;;
        *) echo "usage: $0 [--memory SIZE] [--grow-to SIZE] [--cpus N]" >&2; exit 2 ;;
    esac
done

if [ -z "${TIDAL_IN_TESTHOST:-}" ]; then
    "$repo/resources/build-guest.sh" >/dev/null
    (cd "$repo" && cargo build --release --quiet -p tidal-vmm -p tidal-api)
    kind=$("$repo/ci/kvm-kind.sh")
    case "$kind" in
        hardware) ;;
        pvm)
            echo "demo: /dev/kvm here is KVM-PVM (too slow for Linux): running inside the QEMU test host" >&2
            exec "$repo/ci/testhost.sh" -- "$repo/demo.sh" --memory "$memory" --grow-to "$grow_to" --cpus "$cpus"
            ;;
        *) echo "demo: no /dev/kvm on this machine" >&2; exit 1 ;;
    esac
fi

# shellcheck disable=SC1091
. "${TIDAL_CACHE:-$HOME/.cache/tidal}/guest.env"
bin="$repo/target/release"
work=$(mktemp -d)
trap 'exec 3>&- 2>/dev/null; kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
mkfifo "$work/console-in"
socket="$work/tidal.sock"

"$bin/tidal" --kernel "$VMLINUX" --initramfs "$INITRAMFS" --cpus "$cpus" \
    --memory "size=$memory,hotplug_size=8G" --api-socket "$socket" \
    --cmdline "console=ttyS0 quiet" --log-level info \
    <"$work/console-in" >"$work/console.log" 2>"$work/tidal.log" &
pid=$!
exec 3>"$work/console-in"

for _ in $(seq 1200); do
    grep -q TIDAL-GUEST-READY "$work/console.log" && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/console.log" "$work/tidal.log"; exit 1; }
    sleep 0.1
done
echo "== guest is up: $cpus vCPUs, $memory of RAM"
echo "echo $RANDOM >/dev/null" >&3
show_memory() {
    local marker="DEMO-$RANDOM"
    echo "echo $marker-start; grep MemTotal /proc/meminfo; echo \"memory blocks online: \$(grep -l 1 /sys/devices/system/memory/memory*/online | wc -l)\"; echo $marker" >&3
    # The guest's tty ends lines with \r\n.
    for _ in $(seq 600); do tr -d '\r' <"$work/console.log" | grep -q "^$marker\$" && break; sleep 0.1; done
    tr -d '\r' <"$work/console.log" | sed -n "/^$marker-start/,/^$marker\$/p" | sed '1d;$d' |
        sed 's/^/   guest: /'
}
show_memory
echo "== tidalctl resize --memory $grow_to"
time "$bin/tidalctl" --api-socket "$socket" resize --memory "$grow_to"
"$bin/tidalctl" --api-socket "$socket" memory
show_memory
echo "== powering off"
echo "poweroff -f" >&3
wait "$pid" && echo "tidal exited with status 0"
