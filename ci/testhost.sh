#!/usr/bin/env bash
# Runs one command inside the *test host*: a QEMU TCG virtual machine whose Debian kernel loads
# kvm_amd (nested SVM under `-cpu max`) and so offers a real, hardware-style /dev/kvm, on machines
# whose own /dev/kvm is the far too slow KVM-PVM (see /work/shared/TESTHOST.md, variant A).
#
# Usage: ci/testhost.sh [--memory SIZE] [--cpus N] [--timeout SECONDS] [--boot-timeout SECONDS]
#                       [--append KERNEL_ARGS] [--verbose] [--keep] -- COMMAND [ARGS...]
#
# Inside, COMMAND runs in `chroot /host`, where /host is this machine's root filesystem shared
# read-only over 9p, with fresh /proc, /sys, /dev (with /dev/kvm), a tmpfs /tmp, and the same
# working directory as here. Its output (stdout and stderr) streams to this script's stdout and
# this script exits with COMMAND's exit status. Passed into the command's environment: PATH,
# HOME, USER, LANG, TERM, CI, RUST_LOG, RUST_BACKTRACE, CARGO_*/RUSTUP_HOME, every TIDAL_*
# variable, and TIDAL_IN_TESTHOST=1. The command reads no standard input, and it cannot write to
# the shared root (use /tmp, or the scratch directory named by $TIDAL_TESTHOST_SCRATCH).
#
# Failures of the test host itself (it does not boot, never reaches the command, or the timeout
# passes) end with a clear message, the last console lines, and exit status 125.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

memory=8G # enough for a 5 GiB nested guest; untouched guest memory costs the host nothing
cpus=2
timeout=3600
boot_timeout=180
verbose=
keep=
append=

usage() {
    sed -n '6,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}
die() {
    echo "testhost: error: $*" >&2
    exit 125
}

while [ $# -gt 0 ]; do
    case "$1" in
        --memory) memory=${2:?--memory needs a size}; shift 2 ;;
        --cpus) cpus=${2:?--cpus needs a number}; shift 2 ;;
        --timeout) timeout=${2:?--timeout needs seconds}; shift 2 ;;
        --boot-timeout) boot_timeout=${2:?--boot-timeout needs seconds}; shift 2 ;;
        --append) append="$append ${2:?--append needs kernel arguments}"; shift 2 ;;
        --verbose) verbose=1; shift ;;
        --keep) keep=1; shift ;;
        --) shift; break ;;
        -h | --help) usage ;;
        *) echo "testhost: unknown option '$1'" >&2; usage ;;
    esac
done
[ $# -gt 0 ] || usage
[[ "$timeout" =~ ^[0-9]+$ ]] || die "--timeout must be a whole number of seconds"
[[ "$boot_timeout" =~ ^[0-9]+$ ]] || die "--boot-timeout must be a whole number of seconds"

# --- what the test host needs on this machine ---------------------------------------------------
if ! command -v qemu-system-x86_64 >/dev/null; then
    echo "testhost: installing qemu-system-x86" >&2
    [ "$(id -u)" -eq 0 ] || die "qemu-system-x86_64 is missing; install the Debian package qemu-system-x86"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 >&2; then
        apt-get update -qq >&2 || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 >&2 ||
            die "apt-get install qemu-system-x86 failed"
    fi
fi

"$repo/resources/build-guest.sh" --quiet || die "resources/build-guest.sh failed"
cache=${TIDAL_CACHE:-$HOME/.cache/tidal}
KERNEL='' TESTHOST_INITRAMFS=''
# shellcheck source=/dev/null
. "$cache/guest.env"
if [ ! -f "$KERNEL" ] || [ ! -f "$TESTHOST_INITRAMFS" ]; then
    die "build-guest.sh produced no kernel or test host initramfs"
fi

# --- the scratch directory: shared read-write, mounted at the same path inside ------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/tidal-testhost.XXXXXX")
scratch="$work/scratch"
mkdir "$scratch"
# The path travels on the kernel command line and in QEMU's comma-separated options.
case "$scratch" in
    *[[:space:],]*) rm -rf "$work"; die "the scratch path '$scratch' must not contain spaces or commas (set TMPDIR)" ;;
esac
qemu_pid=
watchers=()
cleanup() {
    local pid
    for pid in "${watchers[@]}" $qemu_pid; do
        kill "$pid" 2>/dev/null || true
    done
    if [ -n "$keep" ]; then
        echo "testhost: kept $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Single-quotes a word for /bin/sh.
shquote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

{
    echo '#!/bin/sh'
    echo '# Written by ci/testhost.sh: runs inside the test host, in chroot /host.'
    for name in $(compgen -e); do
        case "$name" in
            PATH | HOME | USER | LOGNAME | LANG | LC_ALL | TERM | CI | RUST_LOG | RUST_BACKTRACE | \
                RUST_LIB_BACKTRACE | RUST_MIN_STACK | RUSTUP_HOME | RUSTUP_TOOLCHAIN | CARGO_* | TIDAL_*)
                echo "export $name=$(shquote "${!name}")"
                ;;
        esac
    done
    echo 'export TIDAL_IN_TESTHOST=1'
    echo "export TIDAL_TESTHOST_SCRATCH=$(shquote "$scratch")"
    echo "cd $(shquote "$PWD") || { echo 'testhost: cannot enter the working directory inside the test host' >&2; exit 125; }"
    printf 'exec'
    for arg in "$@"; do
        printf ' %s' "$(shquote "$arg")"
    done
    echo
} >"$scratch/run.sh"

# The test host mounts its own tmpfs on /tmp, which would hide a checkout under the host's /tmp
# (a CI clone, say): share such a checkout in as well, read-only, at the same path.
workdir=
case "$repo" in
    /tmp/*) workdir=$repo ;;
esac

# --- boot -----------------------------------------------------------------------------------------
console_log="$work/console.log"
fifo="$work/console.fifo"
mkfifo "$fifo"
: >"$console_log"

# `nokaslr`: the same kernel addresses in every boot, for reading hang reports.
# `quiet` and printk level 1 inside: every console byte costs an emulated exit, and the console
# carries the command's output.
# No -no-reboot: a test host that resets itself (a triple fault of its own kernel, or panic=-1's
# reboot) has each vCPU's registers from right before the reset logged by `-d cpu_reset`, and
# the watchdog below ends QEMU a moment later, long before the test host could boot again.
# shellcheck disable=SC2054 # the commas belong to QEMU's option syntax
qemu_args=(
    -accel tcg,thread=multi -cpu max -smp "$cpus" -m "$memory"
    -nographic -nic none -d cpu_reset -D "$work/cpu-reset.log"
    -chardev "socket,id=monitor,path=$work/monitor.sock,server=on,wait=off" -mon chardev=monitor
    -kernel "$KERNEL" -initrd "$TESTHOST_INITRAMFS"
    -append "console=ttyS0 quiet panic=-1 nokaslr tidal_scratch=$scratch${workdir:+ tidal_workdir=$workdir}${verbose:+ tidal_debug=1}$append"
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap
    -virtfs "local,path=$scratch,mount_tag=scratch,security_model=none,multidevs=remap"
    ${workdir:+-virtfs "local,path=$workdir,mount_tag=workdir,security_model=none,readonly=on,multidevs=remap"}
)
start=$(date +%s.%N)
# timeout(1) ends QEMU when the whole run takes too long (exit status 124). --foreground keeps
# QEMU in our process group, so whatever stops this script (Ctrl-C, a CI job's end) stops it too.
timeout --foreground -k 10 "$timeout" qemu-system-x86_64 "${qemu_args[@]}" </dev/null >"$fifo" 2>&1 &
qemu_pid=$!

# Sends one command to QEMU's human monitor and prints its answer (a second of it).
monitor_command() {
    python3 - "$work/monitor.sock" "$1" <<'PYTHON'
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.settimeout(0.5)
s.sendall(sys.argv[2].encode() + b"\n")
out, end = b"", time.time() + 1.0
while time.time() < end:
    try:
        out += s.recv(65536)
    except socket.timeout:
        pass
sys.stdout.write(out.decode(errors="replace").replace("\r", ""))
PYTHON
}

# Watchdog: the test host must reach the command within boot_timeout, and then its heartbeat
# (a file its /init touches every 10 s) must never go stale for hang_timeout: a test host that
# stops running its own processes is hung, and waiting for the whole timeout would only waste
# the time. Nor may it reset: QEMU logs a CPU reset once the command has started only when the
# test host resets itself, and the registers it logged then go to $work/reset. It polls each
# second (so nothing of it outlives this script for long) and keeps its hands off our stdout.
hang_timeout=120
reset_log_lines() { wc -l <"$work/cpu-reset.log" 2>/dev/null || echo 0; }
(
    for _ in $(seq "$boot_timeout"); do
        sleep 1
        kill -0 "$qemu_pid" 2>/dev/null || exit 0
        grep -q 'TIDAL-TESTHOST-START' "$console_log" && break
    done
    if ! grep -q 'TIDAL-TESTHOST-START' "$console_log"; then
        : >"$work/boot-timed-out"
        kill "$qemu_pid"
        exit 0
    fi
    # The resets QEMU made while it started the machine.
    logged=$(reset_log_lines)
    while sleep 1; do
        kill -0 "$qemu_pid" 2>/dev/null || exit 0
        if [ "$(reset_log_lines)" -gt "$logged" ]; then
            sleep 1 # every vCPU's registers logged
            # The first reset's registers: the firmware of the next boot resets vCPUs too.
            tail -n +$((logged + 1)) "$work/cpu-reset.log" | awk -v cpus="$cpus" '
                /^(CPU Reset|Triple fault)/ && headers >= cpus { exit }
                /^CPU Reset/ { headers++ }
                { print }' >"$work/reset"
            kill "$qemu_pid"
            exit 0
        fi
        beat=$(stat -c %Y "$scratch/heartbeat" 2>/dev/null) || continue
        if [ $(($(date +%s) - beat)) -gt "$hang_timeout" ]; then
            # Three samples a second apart: a vCPU that stays put is stuck there.
            for _ in 1 2 3; do
                monitor_command "info registers -a"
                sleep 1
            done >"$work/hung" 2>&1
            kill "$qemu_pid"
            exit 0
        fi
    done
) </dev/null >/dev/null 2>&1 &
watchers+=($!)

# Every console line goes to the log; the command's lines (between the START and EXIT markers)
# also go to stdout, as they come. Before START only --verbose shows the boot.
# mawk (Debian's default awk) reads a pipe in large blocks unless told -W interactive.
awk_cmd=(awk)
if awk -W version 2>&1 | grep -qi mawk; then
    awk_cmd=(awk -W interactive)
fi
"${awk_cmd[@]}" -v logfile="$console_log" -v verbose="$verbose" -v start="$start" '
    { print > logfile; fflush(logfile) }
    state == 0 && /TIDAL-TESTHOST-START\r?$/ {
        state = 1
        "date +%s.%N" | getline now; close("date +%s.%N")
        printf "testhost: command started %.1f s after QEMU\n", now - start > "/dev/stderr"
        next
    }
    state == 1 && match($0, /TIDAL-TESTHOST-EXIT [0-9]+\r?$/) {
        if (RSTART > 1) { printf "%s\n", substr($0, 1, RSTART - 1) }
        state = 2; fflush(); next
    }
    state == 1 || verbose { print; fflush() }
' <"$fifo" &
watchers+=($!)
# In the background and waited for: bash runs the INT/TERM trap (and so stops QEMU) during a
# `wait`, but not until a foreground command has finished.
wait "${watchers[-1]}" || true

qemu_rc=0
wait "$qemu_pid" || qemu_rc=$?
qemu_pid=
end=$(date +%s.%N)
elapsed=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')

# Where each test host vCPU was in register dump $1 (`info registers -a` samples, or
# `-d cpu_reset`'s log): each RIP with its kernel symbol (from the /proc/kallsyms the test
# host's /init saved).
vcpu_places() {
    python3 - "$1" "$scratch/kallsyms" <<'PYTHON' >&2
import bisect, re, sys
dump = open(sys.argv[1]).read()
symbols = []
try:
    for line in open(sys.argv[2]):
        parts = line.split()
        if len(parts) >= 3 and int(parts[0], 16):
            symbols.append((int(parts[0], 16), parts[2]))
except OSError:
    pass
symbols.sort()
addresses = [a for a, _ in symbols]
for cpu, rip in re.findall(r"CPU(?:#| Reset \(CPU )(\d+).*?RIP=([0-9a-f]+)", dump, re.S):
    r, name = int(rip, 16), "?"
    i = bisect.bisect_right(addresses, r) - 1
    if i >= 0:
        name = f"{symbols[i][1]}+{r - symbols[i][0]:#x}"
    print(f"CPU {cpu}: RIP {rip} {name}")
PYTHON
}

hang_report() {
    echo "---- test host vCPUs when it hung, 3 samples (registers: $work/hung) ----" >&2
    vcpu_places "$work/hung"
}

# A reset is rare and its registers are the only trace it leaves: the general and control
# registers go to the log (the vector registers only to the kept file).
reset_report() {
    echo "---- test host vCPUs right before it reset ($work/reset) ----" >&2
    vcpu_places "$work/reset"
    grep -E '^(CPU Reset|Triple fault|R[0-9A-Z ]{2}=|CS |SS |GDT|IDT|CR0|EFER)' "$work/reset" >&2 || true
    echo "----" >&2
}

console_tail() {
    echo "---- last 40 lines of the test host console ($console_log) ----" >&2
    tail -n 40 "$console_log" | tr -d '\r' >&2
    echo "---- end of console ----" >&2
    kernel_warnings
}

# The test host kernel's warnings and errors since the command started (the last 30), from the
# records its /init streams out of /dev/kmsg ("priority,sequence,microseconds,flags;text").
kernel_warnings() {
    local log="$scratch/testhost-kernel.log" warnings
    [ -s "$log" ] || return 0
    warnings=$(awk -F';' '
        /;tidal-testhost: the command starts$/ { started = 1; next }
        started && split($1, f, ",") >= 3 && f[1] % 8 <= 4 {
            printf "[%10.3f] %s\n", f[3] / 1e6, substr($0, length($1) + 2)
        }' "$log" | tail -n 30)
    [ -n "$warnings" ] || return 0
    echo "---- test host kernel warnings and errors while the command ran (last 30) ----" >&2
    echo "$warnings" >&2
    echo "----" >&2
}

if [ -e "$work/boot-timed-out" ]; then
    console_tail
    keep=1
    die "the test host did not reach the command within ${boot_timeout} s (QEMU killed); --verbose shows its boot"
fi
if [ -e "$work/hung" ]; then
    console_tail
    hang_report
    keep=1
    die "the test host hung: no heartbeat for ${hang_timeout} s (QEMU killed after ${elapsed} s)"
fi
if [ -e "$work/reset" ]; then
    console_tail
    reset_report
    keep=1
    die "the test host reset itself after ${elapsed} s (a triple fault of its kernel, or a reboot; QEMU killed)"
fi
if [ "$qemu_rc" -eq 124 ]; then
    console_tail
    keep=1
    die "timed out after ${timeout} s: the command did not finish (QEMU killed)"
fi
if [ ! -s "$scratch/exit-status" ]; then
    console_tail
    keep=1
    if grep -q 'TIDAL-TESTHOST-START' "$console_log"; then
        die "the test host stopped before the command finished (QEMU exit status $qemu_rc)"
    fi
    die "the test host never reached the command (QEMU exit status $qemu_rc); --verbose shows its boot"
fi

rc=$(cat "$scratch/exit-status")
echo "testhost: command exited with status $rc; whole run ${elapsed} s" >&2
[ "$rc" = 0 ] || kernel_warnings
exit "$rc"
