#!/bin/sh
# /init of the test host (busybox sh; packed by resources/build-guest.sh, booted by
# ci/testhost.sh under QEMU TCG). See /work/shared/TESTHOST.md, "Variant A".
#
# It loads the virtio/9p and KVM modules (the Debian kernel has them as modules), mounts the
# machine's own root filesystem read-only from the 9p export `hostroot` at /host, gives it fresh
# /proc, /sys, /dev and a tmpfs /tmp, mounts the writable scratch export `scratch` at the same
# path as outside, and runs "$scratch/run.sh" in `chroot /host`. The exit status goes to
# "$scratch/exit-status" and, as a marker line, to the console; then the VM powers off.
#
# Kernel command line parameters read here: tidal_scratch=PATH (required), tidal_debug=1.

PATH=/bin
export PATH

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

scratch=
workdir=
debug=
module_args=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        tidal_scratch=*) scratch="${arg#tidal_scratch=}" ;;
        tidal_workdir=*) workdir="${arg#tidal_workdir=}" ;;
        tidal_debug=1) debug=1 ;;
        # MODULE.PARAM=VALUE, for insmod below (as modprobe would pass it; insmod does not
        # read the command line).
        *.*=*) module_args="$module_args $arg" ;;
    esac
done

fail() {
    echo "TIDAL-TESTHOST-ERROR: $*"
    [ -n "$debug" ] && dmesg | tail -n 30
    poweroff -f
    sleep 5
}

# The PARAM=VALUE words of module $1 in module_args.
module_params() {
    for arg in $module_args; do
        case "$arg" in
            "$1".*=*) echo "${arg#"$1".}" ;;
        esac
    done
}

# Load modules in dependency order; a module missing from the initramfs is built in.
while read -r mod; do
    [ -z "$mod" ] && continue
    if [ -f "/modules/$mod.ko" ]; then
        # shellcheck disable=SC2046 # one word per parameter
        insmod "/modules/$mod.ko" $(module_params "$mod") || fail "insmod $mod failed"
    fi
done </modules/order

[ -c /dev/kvm ] || fail "/dev/kvm did not appear after loading the KVM modules"

# Loopback up: containerd's CRI plugin serves its streaming endpoint on 127.0.0.1.
ip link set lo up || fail "cannot bring the loopback interface up"
[ -n "$scratch" ] || fail "no tidal_scratch= on the kernel command line"

mkdir -p /host
# cache=loose on the read-only exports: their files stay in this kernel's page cache, so a
# binary's code comes through 9p once per test host boot instead of a page at a time at every
# new process's first use of it (a fresh VMM's first API calls lost up to 200 ms to that). The
# host does not change these files while the test host runs: builds come first.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host \
    || fail "mounting the 9p export hostroot failed"
mount -t proc proc /host/proc || fail "mount /host/proc"
mount -t sysfs sysfs /host/sys || fail "mount /host/sys"
mount -t devtmpfs devtmpfs /host/dev || fail "mount /host/dev"
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
mount -t tmpfs -o mode=1777 tmpfs /host/tmp || fail "mount /host/tmp"
mount -t tmpfs -o mode=755 tmpfs /host/run 2>/dev/null
# A checkout under the host's /tmp, hidden by the tmpfs above, comes in as its own export.
if [ -n "$workdir" ]; then
    mkdir -p "/host$workdir"
    mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose workdir "/host$workdir" \
        || fail "mounting the 9p export workdir at $workdir failed"
fi
# The scratch directory may itself live under /tmp: create its mount point inside the tmpfs.
mkdir -p "/host$scratch"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 scratch "/host$scratch" \
    || fail "mounting the 9p export scratch at $scratch failed"

# Only the most urgent kernel messages on the console: it carries the command's output.
echo 1 >/proc/sys/kernel/printk
dmesg >"/host$scratch/testhost-boot.log" 2>/dev/null
# The kernel's messages from here on stream into the scratch directory as they come (records
# "priority,sequence,microseconds,flags;text"), so that the caller can show them even when the
# test host hangs; the marker record tells them apart from the boot's.
echo "tidal-testhost: the command starts" >/dev/kmsg
cat /dev/kmsg >"/host$scratch/testhost-kernel.log" 2>/dev/null &
# The kernel's symbols, to name where a hung test host's vCPUs are (see ci/testhost.sh).
cat /proc/kallsyms >"/host$scratch/kallsyms" 2>/dev/null &
# A heartbeat for the caller's watchdog: its age tells a slow command from a hung test host.
while :; do : >"/host$scratch/heartbeat"; sleep 10; done &
# Raw output: no \n -> \r\n translation, so the command's bytes arrive unchanged.
stty -onlcr 2>/dev/null </dev/console

# On a line of its own: the console may hold an unfinished line of the boot firmware.
echo
echo "TIDAL-TESTHOST-START"
chroot /host /bin/sh "$scratch/run.sh" </dev/null
rc=$?
echo "$rc" >"/host$scratch/exit-status"
sync
echo "TIDAL-TESTHOST-EXIT $rc"
poweroff -f
sleep 5
