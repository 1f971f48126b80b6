#!/usr/bin/env bash
# THE test command of Tidal: `./ci/test.sh` (and `.ci/run` calls it). On a fresh Debian 12
# machine with a Rust toolchain it installs what else it needs, then runs, in order:
#   set-up      apt packages (qemu-system-x86, acpica-tools) and the guest images
#               (resources/build-guest.sh)
#   fmt         cargo fmt --all -- --check
#   clippy      cargo clippy --workspace --all-targets -- -D warnings
#   build       cargo build --release --workspace
#   unit        cargo test --workspace --exclude tidal-tests
#   host        integration tests that need no guest: bad command lines, --dump-acpi + iasl
#   guest       integration tests that boot Linux guests: directly on hardware KVM, else each
#               executable's tests in one boot of the test host (ci/testhost.sh), with the
#               release build of tidal
# and prints a summary; the exit status is non-zero if any step failed.
#
# Environment: TIDAL_CACHE (guest images, default ~/.cache/tidal), TIDAL_TESTHOST_TIMEOUT
# (seconds for one boot of the test host, default 3600), TIDAL_MAX_RETRIES (retries under
# emulation a run may need before it fails, default 6), and anything ci/testhost.sh
# passes on (RUST_LOG, RUST_BACKTRACE, TIDAL_*).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

# Integration test targets (tests/tests/*.rs) that run on the host: command-line errors, the
# ACPI tables, and signals sent to a tidal whose guest is still booting (any /dev/kvm will do,
# KVM-PVM too). Every other target boots guests.
host_tests=(cli acpi_tables pool)

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

results=()
failures=0
step_start=0
banner() { printf '\n==== %s ====\n' "$*"; }
# Runs one step: NAME COMMAND...; records its result and time, and carries on either way.
step() {
    local name=$1
    shift
    banner "$name: $*"
    step_start=$SECONDS
    if "$@"; then
        results+=("PASS  $name ($((SECONDS - step_start)) s)")
        return 0
    else
        results+=("FAIL  $name ($((SECONDS - step_start)) s)")
        failures=$((failures + 1))
        return 1
    fi
}
summary() {
    banner "summary"
    printf '%s\n' "${results[@]}"
    local passed=$((${#results[@]} - failures))
    echo "ci/test.sh: $passed steps passed, $failures failed"
}
finish() {
    summary
    if [ "$failures" -eq 0 ]; then exit 0; else exit 1; fi
}

# --- set-up -----------------------------------------------------------------------------------
# shellcheck source=ci/lib/apt.sh
. ci/lib/apt.sh

setup() {
    command -v cargo >/dev/null || { echo "cargo is missing: install a Rust toolchain" >&2; return 1; }
    cargo fmt --version >/dev/null 2>&1 || { echo "rustfmt is missing (rustup component add rustfmt)" >&2; return 1; }
    cargo clippy --version >/dev/null 2>&1 || { echo "clippy is missing (rustup component add clippy)" >&2; return 1; }
    # containerd: Debian's, for the containerd runtime's tests (tests/tests/containerd.rs);
    # protobuf-compiler: protoc, which the CRI client's crate (k8s-cri) builds its types with.
    apt_install qemu-system-x86 acpica-tools gcc libc6-dev containerd protobuf-compiler || return 1
    resources/build-guest.sh
}

step "set-up" setup || finish
step "fmt" cargo fmt --all -- --check || true
step "clippy" cargo clippy --workspace --all-targets -- -D warnings || true
step "build" cargo build --release --workspace || finish
step "unit" cargo test --workspace --exclude tidal-tests || true
# Every fuzz target briefly, so none can rot (docs/reliability.md); without AddressSanitizer,
# which halves the build and finds little in code without unsafe blocks. Longer hunts:
# ci/fuzz.sh --time SECONDS.
step "fuzz" env FUZZ_SANITIZER=none ci/fuzz.sh --time 5 || true

host_test_args=()
for t in "${host_tests[@]}"; do host_test_args+=(--test "$t"); done
step "host" cargo test --release -p tidal-tests --lib "${host_test_args[@]}" || true

# --- guest-booting tests ------------------------------------------------------------------------
# Builds the guest test executables (release) and prints their paths, one a line.
guest_test_executables() {
    local targets=() file name skip h
    for file in tests/tests/*.rs; do
        name=$(basename "$file" .rs)
        skip=
        for h in "${host_tests[@]}"; do [ "$name" = "$h" ] && skip=1; done
        [ -n "$skip" ] || targets+=(--test "$name")
    done
    [ ${#targets[@]} -gt 0 ] || return 0
    # The JSON messages on stdout name each test executable; diagnostics still go to stderr.
    cargo test --release -p tidal-tests "${targets[@]}" --no-run \
        --message-format=json-render-diagnostics |
        grep '"reason":"compiler-artifact"' |
        grep '"target":{"kind":\["test"\]' |
        grep -o '"executable":"[^"]*"' |
        sed 's/^"executable":"//; s/"$//'
}

# The tests in a test executable that are not #[ignore]d (ci/long-run.sh runs those), one name
# a line.
list_tests() {
    comm -23 <("$1" --list --format terse | sed -n 's/: test$//p' | sort) \
        <("$1" --list --format terse --ignored | sed -n 's/: test$//p' | sort)
}

# Runs tests of a guest test executable in the test host (ci/testhost.sh), as many in one boot
# as get through: a boot costs ~12 s. Tests that passed are done; a test that failed for a
# reason that says nothing about Tidal gets up to two more tries, with a loud warning in the
# log; the tests that had not run yet when a test host died run in the next boot. The reasons
# that earn a retry:
# - the test host hangs or dies (exit status 125: its heartbeat stopped, or it never reached the
#   command) while the test runs, or after a test failed without a word of why (the harness
#   says a panic at once, tests/src/lib.rs `tell`; a boot's end before that leaves nothing to
#   judge the failure by);
# - the nested guest triple-faults (the harness prints "the guest triple-faulted", from tidal's
#   log, or for the benchmark's QEMU from its SHUTDOWN event): under QEMU TCG's emulated SVM
#   guests die this way at random, even idle ones with one vCPU and no hotplug yet
#   (docs/testing.md, "Known problems", "Guests dying of a triple fault");
# - the nested guest falls silent halfway through a command's output or a line, or never
#   begins the next command (or never acts on `poweroff -f`/`reboot -f`), answers no input, and no vCPU thread of tidal waits on a lock (the harness probes it and prints "the
#   guest stopped answering inside KVM_RUN", see diagnose_silence in tests/src/lib.rs): seen in
#   CI, a 1-vCPU guest idle but for its shell, a guest frozen mid-banner, its vCPU spinning,
#   a 1-vCPU guest that stopped booting in the middle of a kernel line, and a 4-vCPU guest
#   that never reached its ready line (any boot still unfinished at the boot timeout counts),
#   a 1-vCPU guest that never began a command after a hot-add.
#   A console that resumes after the probe's newline (a lost serial interrupt: Tidal's bug) and
#   a command that is merely slow are not retried.
# - the test host's kernel reports a soft lockup on a thread named vcpuN (one of Tidal's vCPU
#   threads; QEMU's, in the benchmark, are "CPU N/KVM"): a test host CPU stayed inside KVM_RUN,
#   running the nested guest, for 20 s and more without scheduling. Nothing a VMM does from
#   userspace can cause that; seen in CI, a 1-vCPU guest that never printed its first line and
#   a vCPU thread that SIGKILL could not end.
# On hardware KVM nothing is retried. Any other failure is never retried.
# Every attempt that fails keeps the whole log of its boot in
# $failed_logs/<test>-attempt<N>.log, on this machine (the test host's files go with it), and
# the WARNING or FAILED line names that file. Adds a line to the file $counts for each test,
# "passed NAME" or "failed NAME", and "retried NAME" for each retry; the exit status is non-zero
# if a test failed.
failed_logs=$repo/target/ci/failed
max_retries=${TIDAL_MAX_RETRIES:-6}
run_in_testhost() {
    local exe=$1 pending=("${@:2}") next test results result fault kept log output stamped rc
    local failed=0
    local -A attempts=()
    log=$(mktemp)
    output=$(mktemp)
    stamped=$(mktemp)
    while [ ${#pending[@]} -gt 0 ]; do
        rc=0
        ci/testhost.sh --timeout "${TIDAL_TESTHOST_TIMEOUT:-3600}" -- \
            env TIDAL_IN_TESTHOST=1 ci/run-test-binaries.sh "$exe" -- --exact "${pending[@]}" \
            2>&1 | stamp_lines "$stamped" | tee "$log" || rc=${PIPESTATUS[0]}
        next=()
        results=$(test_results "$stamped")
        [ -z "$results" ] || echo "$results" >>"$timings"
        for test in "${pending[@]}"; do
            result=$(awk -v t="$test" '$1 == t { r = $2 } END { print r }' <<<"$results")
            # A boot in which no test began (the test host never got there) counts against the
            # first: so every boot brings some test closer to its end.
            [ -n "$results" ] || [ "$test" != "${pending[0]}" ] || result=unfinished
            case "$result" in
                ok) echo "passed $test" >>"$counts"; continue ;;
                '') next+=("$test"); continue ;;
            esac
            attempts[$test]=$((${attempts[$test]:-0} + 1))
            mkdir -p "$failed_logs"
            kept="$failed_logs/$test-attempt${attempts[$test]}.log"
            cp "$log" "$kept"
            test_output "$log" "$test" >"$output"
            # Only a test that never finished, or whose failure the test host's end left
            # without a word of why, can blame the test host's exit status.
            if [ "$rc" -ne 0 ] && { [ "$result" = unfinished ] ||
                ! grep -q "panicked at " "$output"; }; then
                fault=$(emulation_fault "$rc" "$output")
            else
                fault=$(emulation_fault 1 "$output")
            fi
            if [ -n "$fault" ] && [ "${attempts[$test]}" -lt 3 ]; then
                echo "ci/test.sh: WARNING: $fault running $test (attempt ${attempts[$test]} of 3); its log: $kept" >&2
                echo "retried $test" >>"$counts"
                next+=("$test")
            else
                echo "ci/test.sh: FAILED: $test (attempt ${attempts[$test]}${fault:+, $fault}, exit status $rc); its log: $kept" >&2
                echo "failed $test: $(failure_reason "$output")" >>"$counts"
                failed=$((failed + 1))
            fi
        done
        pending=("${next[@]}")
    done
    rm -f "$log" "$output" "$stamped"
    [ "$failed" -eq 0 ]
}

# Copies its input to its output and, to file $1, each line after the Unix time (seconds) it
# came at: what test_results reads.
stamp_lines() {
    local line
    while IFS= read -r line || [ -n "$line" ]; do
        printf '%s\n' "$line"
        printf '%(%s)T %s\n' -1 "$line" >&3
    done 3>"$1"
}

# The tests a stamped output (file $1, from stamp_lines) shows beginning, one a line with how
# each ended and its seconds: "NAME ok SECONDS", "NAME FAILED SECONDS", or "NAME unfinished
# SECONDS" (the output ends, or another test begins, before its result). Lines the harness wrote
# past libtest's capture ("tidal-tests| ", a panic or a diagnosis, printed when it happens) hold
# no results, whatever they end with. The console passes on whole lines only, so libtest's
# "test NAME ... " arrives with its result: a test's time runs from the line before it that
# ended a test or began the executable's run ("running N tests").
test_results() {
    awk '
        { stamp = $1; line = substr($0, length($1) + 2); sub(/\r$/, "", line) }
        mark == "" { mark = stamp }
        line ~ /^tidal-tests\| / { next }
        line ~ /^running [0-9]+ tests?$/ { mark = stamp; next }
        match(line, /test [A-Za-z0-9_:]+ \.\.\. /) {
            if (current != "") { print current, "unfinished", stamp - began; mark = stamp }
            current = substr(line, RSTART + 5, RLENGTH - 10)
            began = mark
            line = substr(line, RSTART + RLENGTH)
        }
        current != "" && match(line, /(^| )(ok|FAILED)$/) {
            result = line; sub(/.* /, "", result)
            print current, result, stamp - began
            current = ""
            mark = stamp
        }
        END { if (current != "") print current, "unfinished", stamp - began }
    ' "$1"
}

# What the output (file $1) shows of test $2: the console while it ran (the test host kernel's
# messages with it; to the end, if it never finished) and its captured output.
test_output() {
    awk -v t="$2" '
        { line = $0; sub(/\r$/, "", line) }
        on && line !~ /^tidal-tests\| / &&
            (line ~ /test [A-Za-z0-9_:]+ \.\.\. / || line == "failures:" ||
               line ~ /^test result: / || line ~ /^---- .* stdout ----$/) { on = 0 }
        index(line, "test " t " ... ") || line == "---- " t " stdout ----" { on = 1 }
        on { print }
    ' "$1"
}

# The first line of what the failed test's output (file $1) says it panicked with, or how the
# test host ended when it never got that far: the summary's one line about the failure.
failure_reason() {
    awk '
        { line = $0; sub(/\r$/, "", line); sub(/^tidal-tests\| /, "", line) }
        grab { print substr(line, 1, 300); found = 1; exit }
        /panicked at / { grab = 1 }
        END { if (!found) print "no panic message (see the log)" }
    ' "$1"
}

# Which of the failures above a failed test run (exit status $1, output in file $2) was, in
# words; nothing when it was none of them.
emulation_fault() {
    if [ "$1" -eq 125 ]; then
        echo "the test host failed (not the test)"
    elif grep -q "tidal-tests: the guest triple-faulted:" "$2"; then
        echo "the nested guest triple-faulted under emulation"
    elif grep -q "tidal-tests: the guest stopped answering inside KVM_RUN:" "$2"; then
        echo "the nested guest hung under emulation"
    elif grep -Eq "watchdog: BUG: soft lockup - CPU#[0-9]+ stuck for [0-9]+s! \[(vcpu[0-9]+|CPU [0-9]+/KVM):" "$2"; then
        echo "the test host's KVM locked up in a vCPU thread"
    fi
}

run_guest_tests() {
    local exes kind exe test tests failed=() passed=0 retries=0 counts timings
    exes=$(guest_test_executables) || { echo "building the guest tests failed" >&2; return 1; }
    [ -n "$exes" ] || { echo "no guest test executables found" >&2; return 1; }
    mapfile -t exes <<<"$exes"
    kind=$(ci/kvm-kind.sh)
    echo "KVM here: $kind; guest tests: ${exes[*]##*/}"
    export TIDAL_BIN="$repo/target/release/tidal"
    rm -rf "$failed_logs" # only this run's failures
    if [ "$kind" = hardware ]; then
        ci/run-test-binaries.sh "${exes[@]}"
        return
    fi
    counts=$(mktemp)
    timings=$(mktemp)
    for exe in "${exes[@]}"; do
        tests=$(list_tests "$exe") || { echo "cannot list the tests of $exe" >&2; return 1; }
        mapfile -t tests <<<"$tests"
        [ -n "${tests[0]}" ] || continue
        : >"$counts"
        run_in_testhost "$exe" "${tests[@]}" || true
        passed=$((passed + $(grep -c '^passed ' "$counts" || true)))
        retries=$((retries + $(grep -c '^retried ' "$counts" || true)))
        while read -r test; do
            failed+=("${exe##*/}: $test")
        done < <(sed -n 's/^failed //p' "$counts")
    done
    rm -f "$counts"
    # Where the step's time went, for keeping CI within its budget: each attempt on its own.
    echo "guest test attempts, the 12 longest (test, result, seconds):"
    sort -k3,3 -rn "$timings" | head -n 12 | sed 's/^/    /'
    echo "all guest test attempts: $(awk '{ s += $3 } END { print s + 0 }' "$timings") s"
    rm -f "$timings"
    echo "guest tests: $passed passed, ${#failed[@]} failed, $retries retried under emulation"
    if [ "$retries" -gt "$max_retries" ]; then
        # Each retry alone is the emulation's doing; this many at once is worth a look.
        failed+=("$retries retries, more than the $max_retries a run may need (TIDAL_MAX_RETRIES)")
    fi
    [ ${#failed[@]} -eq 0 ] && return 0
    printf 'FAILED  %s\n' "${failed[@]}"
    return 1
}

step "guest" run_guest_tests || true

finish
