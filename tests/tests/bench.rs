//! The benchmark cannot rot: its quick mode (one run of Tidal and one of QEMU, 128 MiB DIMMs)
//! must measure every figure for both VMMs. Only that: no timing is checked. Boots guests, so
//! it runs like the other guest tests (in the test host where /dev/kvm is not hardware-backed),
//! and it fails, never passes quietly, where QEMU is not installed.

use tidal_tests::bench::{self, Options};

#[test]
fn quick_bench_measures_every_figure_of_both_vmms() {
    let report =
        bench::run(&Options::quick()).unwrap_or_else(|e| panic!("the quick benchmark failed: {e}"));
    println!("{}", report.table());
    let problems = report.problems();
    assert!(
        problems.is_empty(),
        "the quick benchmark left figures unmeasured:\n{}",
        problems.join("\n")
    );
}
