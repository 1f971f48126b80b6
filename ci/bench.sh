#!/usr/bin/env bash
# The benchmark: `ci/bench.sh [--runs N] [--quick] [--removed SIZES] [--added-only SIZES] [--ch PATH] [--no-pool] [--json PATH] [--plot PATH] [--pool-plot PATH]`. Builds Tidal,
# tidal-bench (tests/src/bench/) and the guest, installs QEMU and protoc if they are missing, then runs
# tidal-bench, which boots the same guest under Tidal and under QEMU alternately (through
# ci/qemu-as-tidal.sh) and prints a table of medians, Tidal beside QEMU. With --ch PATH (a
# cloud-hypervisor binary of the user's: Debian does not package it, and nothing is downloaded)
# Cloud Hypervisor runs in every round too (through ci/ch-as-tidal.sh) and gets its column and
# Tidal/CH ratios; it only adds memory, so its removal rows say "not supported". It writes every run as
# JSON (default target/bench/bench.json) and the hot-plug latencies as an SVG plot (default
# target/bench/latency.svg); each failed run's evidence goes to failed/<vmm>-run<N>-<attempt>/
# beside the JSON file (docs/benchmarks.md). Then, unless --no-pool, three Tidal VMs in a
# tidal-pool move memory between them: the table gets the move's time, and each VM's share of
# the budget over time is drawn from the pool's events (default target/bench/pool.svg).
#
# On hardware KVM it runs directly. Where /dev/kvm is KVM-PVM it runs inside the QEMU TCG test
# host (ci/testhost.sh), both VMMs in the same test host boot, so their figures are emulated
# alike: compare them with each other, not with hardware. TIDAL_BENCH_TIMEOUT (seconds, default
# 14400) bounds that test host run.
set -euo pipefail
start_dir=$PWD
cd "$(dirname "${BASH_SOURCE[0]}")/.."

json=target/bench/bench.json
plot=target/bench/latency.svg
pool_plot=target/bench/pool.svg
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --json) json=${2:?--json needs a path}; shift 2 ;;
        --plot) plot=${2:?--plot needs a path}; shift 2 ;;
        --pool-plot) pool_plot=${2:?--pool-plot needs a path}; shift 2 ;;
        --ch)
            ch=${2:?--ch needs the path of a cloud-hypervisor binary}
            [[ "$ch" == /* ]] || ch=$start_dir/$ch
            if ! [ -f "$ch" ] || ! [ -x "$ch" ]; then
                echo "bench: --ch $2: no executable cloud-hypervisor binary there" >&2
                exit 2
            fi
            args+=(--ch "$ch")
            shift 2
            ;;
        *) args+=("$1"); shift ;;
    esac
done

# protobuf-compiler: protoc, which tidal-tests' CRI client (the k8s-cri crate) is built with.
# shellcheck source=ci/lib/apt.sh
. ci/lib/apt.sh
apt_install qemu-system-x86 protobuf-compiler
resources/build-guest.sh >/dev/null
cargo build --release --quiet -p tidal-vmm -p tidal-pool -p tidal-tests --bin tidal --bin tidal-pool \
    --bin tidal-bench
export TIDAL_BIN=$PWD/target/release/tidal
bench=target/release/tidal-bench
mkdir -p "$(dirname "$json")" "$(dirname "$plot")" "$(dirname "$pool_plot")"
rm -rf "$(dirname "$json")/failed" # only this benchmark's failed runs
echo "bench: this machine: $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) CPUs, Linux $(uname -r)" >&2

case "$(ci/kvm-kind.sh)" in
    hardware)
        echo "bench: hardware KVM on $(uname -n)" >&2
        exec "$bench" --json "$json" --plot "$plot" --pool-plot "$pool_plot" "${args[@]}"
        ;;
    pvm)
        echo "bench: /dev/kvm is KVM-PVM: running inside the QEMU test host (emulated figures)" >&2
        # The test host sees this machine's root read-only, but its /tmp is its own.
        if [[ "${ch:-}" == /tmp/* ]]; then
            echo "bench: --ch $ch: the test host cannot see /tmp; put the binary elsewhere" >&2
            exit 2
        fi
        # The test host sees this machine's files read-only; only its scratch directory is
        # written through. TMPDIR puts that directory where this script finds it, --keep leaves
        # it for the results to be copied out.
        out=$(mktemp -d "${TMPDIR:-/tmp}/tidal-bench.XXXXXX")
        rc=0
        # shellcheck disable=SC2016 # $TIDAL_TESTHOST_SCRATCH is expanded inside the test host
        TMPDIR=$out ci/testhost.sh --keep --timeout "${TIDAL_BENCH_TIMEOUT:-14400}" -- \
            sh -c 'exec "$0" --json "$TIDAL_TESTHOST_SCRATCH/bench.json" \
                --plot "$TIDAL_TESTHOST_SCRATCH/latency.svg" \
                --pool-plot "$TIDAL_TESTHOST_SCRATCH/pool.svg" "$@"' "$bench" "${args[@]}" || rc=$?
        for file in "$out"/tidal-testhost.*/scratch/bench.json; do
            [ -f "$file" ] || continue
            cp "$file" "$json"
            cp "${file%/*}/latency.svg" "$plot" 2>/dev/null || echo "bench: no plot was made" >&2
            if [ -f "${file%/*}/pool.svg" ]; then
                cp "${file%/*}/pool.svg" "$pool_plot"
                echo "bench: the pool's plot in $pool_plot" >&2
            fi
            echo "bench: every run in $json, the plot in $plot" >&2
        done
        # Each failed run's evidence (tidal-bench writes it beside the JSON file, as it
        # happens), also when the benchmark itself did not finish.
        for dir in "$out"/tidal-testhost.*/scratch/failed; do
            [ -d "$dir" ] || continue
            mkdir -p "$(dirname "$json")/failed"
            cp -r "$dir"/. "$(dirname "$json")/failed/"
            echo "bench: the evidence of the failed runs in $(dirname "$json")/failed/: $(ls "$dir" | tr '\n' ' ')" >&2
        done
        if [ "$rc" -eq 0 ]; then
            rm -rf "$out"
        else
            echo "bench: failed (exit status $rc); the test host's files are in $out" >&2
        fi
        exit "$rc"
        ;;
    *) echo "bench: no /dev/kvm" >&2; exit 1 ;;
esac
