//! The benchmark behind `tidal-bench` (and `ci/bench.sh`): Tidal and QEMU boot the same guest
//! alternately, and each run measures boot time, hot-add and hot-remove latency, and the VMM's
//! memory on the host. A library, so the test suite can run the quick mode
//! (`tests/tests/bench.rs`) and the benchmark cannot rot.
//!
//! - [`figures`]: what is measured, named once, and the [`Plan`] of guest and DIMM sizes;
//! - `measure`: one run against one booted VMM, written once for both;
//! - [`vmm`]: the [`Vmm`] trait, with Tidal (REST API) and QEMU (QMP) behind it;
//! - [`qmp`]: a small blocking QMP client;
//! - [`host`]: the VMM process's resident memory, and where the benchmark runs;
//! - [`stats`]: medians and ranges;
//! - [`report`]: every run, the table, the JSON file and the plot.
//!
//! Like the rest of the harness, a guest that does not boot or a guest command that times out
//! panics with the console; everything else that fails is a [`BenchError`].

pub mod figures;
pub mod host;
mod measure;
pub mod qmp;
pub mod report;
pub mod stats;
pub mod vmm;

use std::any::Any;
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};

use thiserror::Error;

pub use figures::{Figure, Plan};
pub use report::Report;
pub use vmm::VmmKind;

use figures::Figures;
use report::{Retried, Run};
use vmm::{Vmm, VmmError};

/// The program QEMU is run as (by `ci/qemu-as-tidal.sh`).
const QEMU_PROGRAM: &str = "qemu-system-x86_64";
/// Console lines and VMM stderr lines quoted in errors.
const TAIL_LINES: usize = 30;

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Recorded runs of each VMM.
    pub runs: usize,
    /// Whether each VMM first runs once unrecorded (page cache, the host's first KVM use).
    pub warm_up: bool,
    pub plan: Plan,
    /// Fresh boots a run of Tidal that failed gets before the benchmark stops: the emulated
    /// test host hangs now and then, and an hour of runs should not be lost to one hang.
    pub tidal_retries: usize,
    /// The same for a run of QEMU.
    pub qemu_retries: usize,
}

impl Options {
    /// The benchmark proper: `runs` recorded runs of each VMM after a warm-up run of each.
    pub fn full(runs: usize) -> Self {
        Options {
            runs,
            warm_up: true,
            plan: Plan::full(),
            tidal_retries: 1,
            qemu_retries: 1,
        }
    }

    /// One run of each, no warm-up, small DIMMs: shows that every figure can be measured. A
    /// failed run of Tidal is not retried: the test suite's harness decides whether it was the
    /// nested emulation's (ci/test.sh). One of QEMU, the reference, is: its failures are never
    /// Tidal's, and under the nested emulation its guests hang and reset like Tidal's.
    pub fn quick() -> Self {
        Options {
            runs: 1,
            warm_up: false,
            plan: Plan::quick(),
            tidal_retries: 0,
            qemu_retries: 1,
        }
    }

    /// How many fresh boots a failed run of `vmm` gets.
    fn retries(&self, vmm: VmmKind) -> usize {
        match vmm {
            VmmKind::Tidal => self.tidal_retries,
            VmmKind::Qemu => self.qemu_retries,
        }
    }
}

/// Why the benchmark stopped.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error(
        "{QEMU_PROGRAM} is not on PATH: the benchmark compares Tidal with QEMU and needs it \
         (install the Debian package qemu-system-x86; ci/bench.sh and ci/test.sh do)"
    )]
    QemuMissing,
    #[error(
        "{vmm}, {stage}: {source}\n---- last {TAIL_LINES} guest console lines ----\n{console}\n\
         ---- {vmm} stderr, last {TAIL_LINES} lines ----\n{stderr}\n---- end ----"
    )]
    Run {
        vmm: VmmKind,
        stage: String,
        source: Box<VmmError>,
        console: String,
        stderr: String,
    },
    /// The harness panicked (it does when the guest does not boot or a guest command times
    /// out, after printing the console).
    #[error("the run stopped: {0}")]
    Panic(String),
}

/// Runs the benchmark: the warm-ups if asked for, then `runs` rounds of Tidal then QEMU, each
/// run a fresh boot. Progress goes to stderr.
pub fn run(options: &Options) -> Result<Report, BenchError> {
    if !host::on_path(QEMU_PROGRAM) {
        return Err(BenchError::QemuMissing);
    }
    let mut report = Report {
        environment: host::Environment::detect(),
        plan: options.plan.clone(),
        runs_each: options.runs,
        warm_up: options.warm_up,
        versions: BTreeMap::new(),
        runs: Vec::new(),
        retried: Vec::new(),
    };
    if options.warm_up {
        for vmm in VmmKind::ALL {
            run_with_retries(vmm, options, "warm-up (not recorded)", &mut report.retried)?;
        }
    }
    for index in 1..=options.runs {
        for vmm in VmmKind::ALL {
            let stage = format!("run {index} of {}", options.runs);
            let (version, figures) = run_with_retries(vmm, options, &stage, &mut report.retried)?;
            report.versions.insert(vmm, version);
            report.runs.push(Run {
                vmm,
                index,
                figures,
            });
        }
    }
    Ok(report)
}

/// [`run_once`], again on a fresh boot after a failure (an error, or a harness panic such as a
/// guest that did not boot) up to [`Options::retries`] times; each failure is noted in
/// `retried`, and the last one is returned.
fn run_with_retries(
    vmm: VmmKind,
    options: &Options,
    stage: &str,
    retried: &mut Vec<Retried>,
) -> Result<(String, Figures), BenchError> {
    let mut attempt = 0;
    loop {
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| run_once(vmm, &options.plan, stage)))
            .unwrap_or_else(|payload| Err(BenchError::Panic(panic_message(payload.as_ref()))));
        match outcome {
            Err(error) if attempt < options.retries(vmm) => {
                attempt += 1;
                eprintln!("tidal-bench: {vmm}, {stage} failed, booting again: {error}");
                retried.push(Retried {
                    vmm,
                    stage: stage.to_owned(),
                    reason: first_line(&error.to_string()).to_owned(),
                });
            }
            outcome => return outcome,
        }
    }
}

/// What a panic said, when it said it with a string (as `panic!` and `expect` do).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// Boots `vmm`, measures one run and powers the guest off; returns the VMM's version and the
/// figures. A run that fails has the VMM say whether the guest died of a triple fault (the
/// VM is still there to ask, so a harness panic is caught here, not only by the caller).
fn run_once(vmm: VmmKind, plan: &Plan, stage: &str) -> Result<(String, Figures), BenchError> {
    eprintln!("tidal-bench: {vmm}, {stage}");
    let mut vm = vmm.boot(plan);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| version_and_figures(vm.as_mut(), plan)));
    if !matches!(outcome, Ok(Ok(_))) {
        vm.report_triple_fault();
    }
    match outcome {
        Ok(Ok(measured)) => {
            vm.guest().poweroff();
            Ok(measured)
        }
        Err(payload) => Err(BenchError::Panic(panic_message(payload.as_ref()))),
        Ok(Err(source)) => {
            let guest = vm.guest();
            Err(BenchError::Run {
                vmm,
                stage: stage.to_owned(),
                source: Box::new(source),
                console: guest.console_tail(TAIL_LINES),
                stderr: crate::tail_lines(&guest.stderr(), TAIL_LINES),
            })
        }
    }
}

fn version_and_figures(vm: &mut dyn Vmm, plan: &Plan) -> Result<(String, Figures), VmmError> {
    let version = vm.version()?;
    Ok((version, measure::run(vm, plan)?))
}
