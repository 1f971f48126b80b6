#!/bin/sh
# /init of Tidal's test guest (busybox sh; packed by resources/build-guest.sh).
#
# Protocol with the test harness (tests/src/lib.rs):
# - exactly one line `TIDAL-GUEST-READY` once userspace is up (benchmarks time it);
# - then an interactive shell on the serial console, its input echo switched off, reading one
#   command line at a time from the VMM's stdin and writing results to the VMM's stdout.
# Kept quiet on purpose: every console byte is a VM exit.

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts 2>/dev/null

export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TERM=vt100

# The modules build-guest.sh packed (pvpanic-mmio and its core: a panic is then reported to
# Tidal), in dependency order. Quiet unless one fails (a kernel other than the packed modules'
# refuses them; the guest works on without).
if [ -f /modules/order ]; then
    while read -r mod; do
        [ -f "/modules/$mod.ko" ] && { insmod "/modules/$mod.ko" || echo "guest-init: insmod $mod failed"; }
    done </modules/order
fi
# No prompt: a command's output then holds only what the command printed.
export PS1='' PS2=''

# The test harness sends commands; echoing them back is noise (and would slow the console).
stty -echo 2>/dev/null </dev/console

echo TIDAL-GUEST-READY

# PID 1 must never exit (the kernel would panic), so the shell runs as a child, in its own
# session with the console as its controlling tty (job control, Ctrl-C); a shell that exits
# is simply started again.
while true; do
    setsid cttyhack sh -i
done
