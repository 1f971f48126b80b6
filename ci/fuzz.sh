#!/usr/bin/env bash
# Runs Tidal's fuzz targets (fuzz/, cargo-fuzz and libFuzzer) for a fixed time each:
#
#   ci/fuzz.sh [--time SECONDS] [TARGET...]
#
# TARGET defaults to every target in fuzz/ (`cargo fuzz list`), SECONDS to 60 (libFuzzer's
# -max_total_time, after the build and the corpus's first pass). Needs a nightly toolchain;
# installs cargo-fuzz (`cargo install cargo-fuzz --locked`, into ~/.cargo/bin) when it is
# missing. All targets are built first, once, with the same flags `cargo fuzz run` is given
# (else it would build again).
#
# Each target's corpus grows in fuzz/corpus/TARGET (not committed), also reading the committed
# seeds in fuzz/seeds/TARGET and the dictionary fuzz/dicts/TARGET.dict where they exist. A
# crash, a panic, a failed check or an input that takes over FUZZ_INPUT_TIMEOUT seconds
# (default 10) ends that target: the script prints the input's path under fuzz/artifacts/TARGET
# and the command that replays it, goes on with the other targets, and exits non-zero. libFuzzer's
# own output goes to fuzz/artifacts/TARGET.log; its last lines are printed on a failure.
#
# Environment: FUZZ_SANITIZER (cargo fuzz's --sanitizer: address by default, `none` builds and
# runs faster), FUZZ_INPUT_TIMEOUT (seconds).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

usage() {
    echo "usage: ci/fuzz.sh [--time SECONDS] [TARGET...]" >&2
    exit 2
}

seconds=60
targets=()
while [ $# -gt 0 ]; do
    case $1 in
        --time)
            [ $# -ge 2 ] || usage
            seconds=$2
            shift 2
            ;;
        --time=*)
            seconds=${1#--time=}
            shift
            ;;
        -h | --help) usage ;;
        -*) usage ;;
        *)
            targets+=("$1")
            shift
            ;;
    esac
done
[[ $seconds =~ ^[1-9][0-9]*$ ]] || { echo "ci/fuzz.sh: --time takes a whole number of seconds" >&2; exit 2; }

export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "ci/fuzz.sh: a nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "ci/fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd "$repo/fuzz"
flags=(--sanitizer "${FUZZ_SANITIZER:-address}")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
[ ${#targets[@]} -gt 0 ] || { echo "ci/fuzz.sh: no fuzz targets" >&2; exit 1; }

start=$SECONDS
echo "ci/fuzz.sh: building ${targets[*]}"
for target in "${targets[@]}"; do
    cargo +nightly fuzz build "${flags[@]}" "$target"
done
echo "ci/fuzz.sh: built in $((SECONDS - start)) s; fuzzing each target for $seconds s"

failed=()
for target in "${targets[@]}"; do
    corpus=corpus/$target
    artifacts=artifacts/$target
    log=artifacts/$target.log
    mkdir -p "$corpus" "$artifacts"
    inputs=("$corpus")
    [ -d "seeds/$target" ] && inputs+=("seeds/$target")
    options=(-max_total_time="$seconds" -timeout="${FUZZ_INPUT_TIMEOUT:-10}" -print_final_stats=1)
    [ -f "dicts/$target.dict" ] && options+=(-dict="dicts/$target.dict")
    before=$(find "$artifacts" -type f | sort)
    target_start=$SECONDS
    if cargo +nightly fuzz run "${flags[@]}" "$target" "${inputs[@]}" -- "${options[@]}" >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
        echo "PASS  $target: ${runs:-?} inputs in $((SECONDS - target_start)) s, corpus $(find "$corpus" -type f | wc -l) files"
        continue
    fi
    failed+=("$target")
    echo "FAIL  $target after $((SECONDS - target_start)) s; libFuzzer's last lines (all in fuzz/$log):"
    grep -v '^#[0-9]' "$log" | tail -n 40 | sed 's/^/    /'
    found=$(comm -13 <(echo "$before") <(find "$artifacts" -type f | sort))
    if [ -n "$found" ]; then
        while read -r input; do
            echo "  input: fuzz/$input"
            echo "  replay: (cd fuzz && cargo +nightly fuzz run ${flags[*]} $target $input)"
        done <<<"$found"
    else
        echo "  no input was saved: the target failed to build or start"
    fi
done

echo "ci/fuzz.sh: $((SECONDS - start)) s in all"
echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
[ ${#failed[@]} -eq 0 ]
