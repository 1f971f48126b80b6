#!/usr/bin/env bash
# Runs prebuilt Rust test executables one after another, each with --test-threads=1 (guests boot
# one at a time: memory and the 2 cores go to one VM), prints a line per executable and exits
# non-zero if any failed. ci/test.sh runs it inside the test host, or directly on hardware KVM.
#
# Usage: ci/run-test-binaries.sh EXECUTABLE... [-- TEST-ARGS...]
set -euo pipefail

exes=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    exes+=("$(realpath "$1")") # absolute: the loop below runs elsewhere
    shift
done
[ $# -gt 0 ] && shift # the "--"
[ ${#exes[@]} -gt 0 ] || { echo "usage: $0 EXECUTABLE... [-- TEST-ARGS...]" >&2; exit 2; }

# Cargo runs integration tests from the package directory; do the same.
cd "$(dirname "${BASH_SOURCE[0]}")/../tests"

# Inside the test host stdout is the serial console, a tty: libtest would colour its output
# even when the far end is a log file.
color=auto
if [ -n "${CI:-}" ] || [ -n "${TIDAL_IN_TESTHOST:-}" ]; then
    color=never
fi

summary=()
failed=0
for exe in "${exes[@]}"; do
    name=$(basename "$exe")
    echo "---- running ${name%-*} ($exe) ----"
    start=$SECONDS
    if "$exe" --test-threads=1 --color "$color" "$@"; then
        summary+=("ok      ${name%-*} ($((SECONDS - start)) s)")
    else
        summary+=("FAILED  ${name%-*} ($((SECONDS - start)) s)")
        failed=1
    fi
done
echo "---- test executables ----"
printf '%s\n' "${summary[@]}"
exit "$failed"
