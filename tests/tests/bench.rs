//! The benchmark cannot rot: its quick mode (one run of Tidal and one of QEMU, 128 MiB DIMMs)
//! must measure every figure for both VMMs. Only that: no timing is checked. Boots guests, so
//! it runs like the other guest tests (in the test host where /dev/kvm is not hardware-backed),
//! and it fails, never passes quietly, where QEMU is not installed. A second test crashes a
//! guest on purpose and checks what the failed run leaves behind.

use tidal_tests::bench::{self, BenchError, Crash, Options, Step, VmmExit, VmmKind};

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

/// A failed run keeps its evidence: Tidal's guest is made to panic (SysRq `c`) as the run
/// starts filling its DIMM, once; the run fails at the next guest command, and what it leaves
/// behind must say why: Tidal's exit status 3, its panic line, the guest's `Kernel panic`, the
/// step, and the DIMMs as Tidal last described them. One boot: Tidal alone, not retried.
#[test]
fn a_failed_run_keeps_its_evidence() {
    let dir = tempfile::tempdir().expect("a directory for the evidence");
    let step = Step::Fill(128 << 20);
    let options = Options {
        evidence_dir: Some(dir.path().to_owned()),
        crash: Some(Crash {
            vmm: VmmKind::Tidal,
            step,
        }),
        tidal_retries: 0,
        ..Options::quick()
    };
    let mut retried = Vec::new();
    let error = bench::run_with_retries(VmmKind::Tidal, &options, "run 1 of 1", &mut retried)
        .expect_err("a run whose guest panicked cannot succeed");
    let BenchError::Run(evidence) = error else {
        panic!("the run failed without evidence: {error}");
    };
    assert!(retried.is_empty(), "a run with no retries was retried");
    assert_eq!(evidence.exit, VmmExit::Exited { code: 3 }, "{evidence:#?}");
    assert_eq!(evidence.step, step.to_string());
    assert!(
        evidence
            .last_error_line
            .as_deref()
            .is_some_and(|line| line.contains("the guest kernel panicked")),
        "{evidence:#?}"
    );
    assert!(
        evidence
            .console_tail
            .iter()
            .any(|l| l.contains("Kernel panic")),
        "{evidence:#?}"
    );
    assert!(evidence.elapsed_s > 0.0);
    let files = dir.path().join(evidence.name());
    let read = |file: &str| {
        std::fs::read_to_string(files.join(file))
            .unwrap_or_else(|e| panic!("{}: {e}", files.join(file).display()))
    };
    let summary = read("summary.txt");
    assert!(summary.contains("VMM: exited with status 3"), "{summary}");
    assert!(summary.contains(&format!("step: {step}\n")), "{summary}");
    assert!(read("console.log").contains("Kernel panic"));
    assert!(read("stderr.log").contains("the guest kernel panicked"));
    let memory: serde_json::Value =
        serde_json::from_str(&read("memory.json")).expect("memory.json is JSON");
    // At the fill: the DIMM kept empty and the one being filled.
    assert_eq!(
        memory.as_array().map(Vec::len),
        Some(2),
        "the DIMMs, as Tidal last described them: {memory}"
    );
}
