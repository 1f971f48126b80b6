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

use std::collections::BTreeMap;

use thiserror::Error;

pub use figures::{Figure, Plan};
pub use report::Report;
pub use vmm::VmmKind;

use figures::Figures;
use report::Run;
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
}

impl Options {
    /// The benchmark proper: `runs` recorded runs of each VMM after a warm-up run of each.
    pub fn full(runs: usize) -> Self {
        Options {
            runs,
            warm_up: true,
            plan: Plan::full(),
        }
    }

    /// One run of each, no warm-up, small DIMMs: shows that every figure can be measured.
    pub fn quick() -> Self {
        Options {
            runs: 1,
            warm_up: false,
            plan: Plan::quick(),
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
    };
    if options.warm_up {
        for vmm in VmmKind::ALL {
            run_once(vmm, &options.plan, "warm-up (not recorded)")?;
        }
    }
    for index in 1..=options.runs {
        for vmm in VmmKind::ALL {
            let stage = format!("run {index} of {}", options.runs);
            let (version, figures) = run_once(vmm, &options.plan, &stage)?;
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

/// Boots `vmm`, measures one run and powers the guest off; returns the VMM's version and the
/// figures.
fn run_once(vmm: VmmKind, plan: &Plan, stage: &str) -> Result<(String, Figures), BenchError> {
    eprintln!("tidal-bench: {vmm}, {stage}");
    let mut vm = vmm.boot(plan);
    match version_and_figures(vm.as_mut(), plan) {
        Ok(measured) => {
            vm.guest().poweroff();
            Ok(measured)
        }
        Err(source) => {
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
