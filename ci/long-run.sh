#!/usr/bin/env bash
# The long run, not part of ci/test.sh: `ci/long-run.sh [CYCLES]` boots one guest and runs CYCLES
# (default 200) hot-add/hot-remove cycles of a 128 MiB DIMM while the guest copies and checks
# data in a loop (tests/tests/hotplug.rs, `long_run_of_add_remove_cycles_under_memory_stress`).
# It passes only if every byte of data survived and tidal's RSS, file descriptors and guest RAM
# mappings are back where they started. On hardware KVM it runs directly; where /dev/kvm is
# KVM-PVM, in the QEMU test host (ci/testhost.sh), bounded by TIDAL_LONG_RUN_TIMEOUT seconds
# (default 21600).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export TIDAL_LONG_RUN_CYCLES=${1:-200}
test=long_run_of_add_remove_cycles_under_memory_stress
resources/build-guest.sh >/dev/null
cargo build --release --quiet -p tidal-vmm -p tidal-api --bins
exe=$(cargo test --release -p tidal-tests --test hotplug --no-run \
    --message-format=json-render-diagnostics |
    grep '"reason":"compiler-artifact"' | grep '"target":{"kind":\["test"\]' |
    grep -o '"executable":"[^"]*"' |
    sed 's/^"executable":"//; s/"$//')
export TIDAL_BIN=$PWD/target/release/tidal
echo "long run: $TIDAL_LONG_RUN_CYCLES cycles" >&2
args=(-- --ignored --exact "$test" --nocapture)
case "$(ci/kvm-kind.sh)" in
    hardware) exec ci/run-test-binaries.sh "$exe" "${args[@]}" ;;
    pvm) exec ci/testhost.sh --timeout "${TIDAL_LONG_RUN_TIMEOUT:-21600}" -- \
        env TIDAL_IN_TESTHOST=1 ci/run-test-binaries.sh "$exe" "${args[@]}" ;;
    *) echo "long run: no /dev/kvm" >&2; exit 1 ;;
esac
