//! The benchmark behind `tidal-bench` (and `ci/bench.sh`): Tidal and QEMU, and Cloud Hypervisor
//! when given its binary, boot the same guest alternately, and each run measures boot time,
//! hot-add and hot-remove latency, and the VMM's memory on the host. A library, so the test
//! suite can run the quick mode (`tests/tests/bench.rs`) and the benchmark cannot rot.
//!
//! - [`cli`]: `tidal-bench`'s command line;
//! - [`figures`]: what is measured, named once, and the [`Plan`] of guest and DIMM sizes;
//! - `measure`: one run against one booted VMM, written once for both, in named [`Step`]s;
//! - [`evidence`]: what a failed run leaves behind, in the JSON file and in files of its own;
//! - [`vmm`]: the [`Vmm`] trait, with Tidal (REST API) and QEMU (QMP) behind it;
//! - [`qmp`]: a small blocking QMP client;
//! - `ch`: Cloud Hypervisor behind the same trait (its REST API, which only adds memory);
//! - [`host`]: the VMM process's resident memory, and where the benchmark runs;
//! - [`pool`]: the host memory pool's part (Tidal alone): moves between three VMs, timed and
//!   drawn from the pool's events;
//! - [`stats`]: medians and ranges;
//! - [`report`]: every run, the table, the JSON file and the plot.
//!
//! Like the rest of the harness, a guest that does not boot or a guest command that times out
//! panics with the console; a run catches that, and it and every other failure of a run become
//! a [`BenchError::Run`] with the run's [`Evidence`].

mod ch;
pub mod cli;
pub mod evidence;
pub mod figures;
pub mod host;
mod measure;
pub mod pool;
pub mod qmp;
pub mod report;
pub mod stats;
pub mod vmm;

use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

pub use evidence::{Evidence, VmmExit};
pub use figures::{Figure, Plan};
pub use measure::Step;
pub use pool::PoolPlan;
pub use report::Report;
pub use vmm::VmmKind;

use crate::panic_message;
use figures::Figures;
use measure::Progress;
use report::{Retried, Run};
use vmm::{Vmm, VmmError};

/// The program QEMU is run as (by `ci/qemu-as-tidal.sh`).
const QEMU_PROGRAM: &str = "qemu-system-x86_64";
/// Console lines and VMM stderr lines quoted in errors.
const TAIL_LINES: usize = 30;
/// How long a failed run waits for the VMM to exit: one whose guest died is about to.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// A run whose guest is made to crash on purpose (its kernel panics through SysRq `c`) when
/// the run of `vmm` enters `step` (the first time): shows that a failed run leaves its
/// evidence (tests/tests/bench.rs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crash {
    pub vmm: VmmKind,
    pub step: Step,
}

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
    /// The same for a run of a reference VMM (QEMU, Cloud Hypervisor).
    pub reference_retries: usize,
    /// A `cloud-hypervisor` binary: Cloud Hypervisor then runs in every round too, after QEMU.
    pub ch: Option<PathBuf>,
    /// Where each failed run's evidence goes, a directory per run and attempt
    /// ([`Evidence::write`]); nowhere but the report when `None`.
    pub evidence_dir: Option<PathBuf>,
    /// A guest made to crash on purpose; `None` in every real benchmark.
    pub crash: Option<Crash>,
    /// The host memory pool's part, after the rounds; `None` skips it.
    pub pool: Option<PoolPlan>,
}

impl Options {
    /// The benchmark proper: `runs` recorded runs of each VMM after a warm-up run of each.
    pub fn full(runs: usize) -> Self {
        Options {
            runs,
            warm_up: true,
            plan: Plan::full(),
            tidal_retries: 1,
            reference_retries: 1,
            ch: None,
            evidence_dir: None,
            crash: None,
            pool: Some(PoolPlan::full()),
        }
    }

    /// One run of each, no warm-up, small DIMMs: shows that every figure can be measured. A
    /// failed run of Tidal is not retried: the test suite's harness decides whether it was the
    /// nested emulation's (ci/test.sh). One of a reference VMM is: its failures are never
    /// Tidal's, and under the nested emulation its guests hang and reset like Tidal's.
    pub fn quick() -> Self {
        Options {
            runs: 1,
            warm_up: false,
            plan: Plan::quick(),
            tidal_retries: 0,
            reference_retries: 1,
            ch: None,
            evidence_dir: None,
            crash: None,
            pool: Some(PoolPlan::quick()),
        }
    }

    /// How many fresh boots a failed run of `vmm` gets.
    fn retries(&self, vmm: VmmKind) -> usize {
        match vmm {
            VmmKind::Tidal => self.tidal_retries,
            VmmKind::Qemu | VmmKind::CloudHypervisor => self.reference_retries,
        }
    }

    /// The VMMs of each round, in the order they run: Tidal, QEMU, and Cloud Hypervisor when
    /// [`Options::ch`] names its binary.
    pub fn vmms(&self) -> Vec<VmmKind> {
        VmmKind::ALL
            .into_iter()
            .filter(|&vmm| vmm != VmmKind::CloudHypervisor || self.ch.is_some())
            .collect()
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
    #[error("the Cloud Hypervisor binary {} (--ch) {problem}", path.display())]
    ChMissing { path: PathBuf, problem: String },
    /// A run failed; what it left behind.
    #[error(
        "{}, {}, failed {}\n---- last {TAIL_LINES} guest console lines ----\n{}\n\
         ---- {} stderr, last {TAIL_LINES} lines ----\n{}\n---- end ----",
        .0.vmm, .0.stage, .0.summary(), last(&.0.console_tail), .0.vmm, last(&.0.stderr_tail)
    )]
    Run(Box<Evidence>),
    /// The harness panicked before the VMM ran (it could not be started).
    #[error("the run stopped: {0}")]
    Panic(String),
    /// The VMM could not be started.
    #[error("{vmm} could not be started: {source}")]
    Spawn {
        vmm: VmmKind,
        #[source]
        source: VmmError,
    },
}

/// Why `path` cannot be run as Cloud Hypervisor, if it cannot: checked before any run, so a
/// wrong `--ch` costs no boot.
fn ch_problem(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Err(e) => Some(format!("cannot be used: {e}")),
        Ok(meta) if !meta.is_file() => Some("is not a file".to_owned()),
        Ok(meta) if meta.permissions().mode() & 0o111 == 0 => Some("is not executable".to_owned()),
        Ok(_) => None,
    }
}

/// Runs the benchmark: the warm-ups if asked for, then `runs` rounds of Tidal, QEMU and (if
/// given) Cloud Hypervisor, each run a fresh boot. Progress goes to stderr.
pub fn run(options: &Options) -> Result<Report, BenchError> {
    if !host::on_path(QEMU_PROGRAM) {
        return Err(BenchError::QemuMissing);
    }
    if let Some(path) = &options.ch {
        if let Some(problem) = ch_problem(path) {
            return Err(BenchError::ChMissing {
                path: path.clone(),
                problem,
            });
        }
    }
    let vmms = options.vmms();
    let mut report = Report {
        environment: host::Environment::detect(),
        vmms: vmms.clone(),
        plan: options.plan.clone(),
        runs_each: options.runs,
        warm_up: options.warm_up,
        versions: BTreeMap::new(),
        runs: Vec::new(),
        retried: Vec::new(),
        pool: None,
    };
    if options.warm_up {
        for &vmm in &vmms {
            run_with_retries(vmm, options, "warm-up (not recorded)", &mut report.retried)?;
        }
    }
    for index in 1..=options.runs {
        for &vmm in &vmms {
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
    if let Some(plan) = &options.pool {
        report.pool = Some(run_pool(plan, options.tidal_retries, &mut report.retried)?);
    }
    Ok(report)
}

/// The pool's part ([`pool::run`]), on fresh boots again after a failure up to `retries`
/// times, each retried one noted in `retried`.
fn run_pool(
    plan: &PoolPlan,
    retries: usize,
    retried: &mut Vec<Retried>,
) -> Result<pool::PoolRun, BenchError> {
    let stage = "the pool's part";
    let mut attempt = 0;
    loop {
        eprintln!("tidal-bench: Tidal, {stage}");
        let outcome = tempfile::tempdir()
            .map_err(|e| e.to_string())
            .and_then(|dir| {
                panic::catch_unwind(AssertUnwindSafe(|| pool::run(plan, dir.path())))
                    .map_err(|payload| panic_message(payload.as_ref()))
            });
        match outcome {
            Ok(run) => return Ok(run),
            Err(reason) if attempt < retries => {
                attempt += 1;
                eprintln!("tidal-bench: {stage} failed, booting again: {reason}");
                retried.push(Retried {
                    vmm: VmmKind::Tidal,
                    stage: stage.to_owned(),
                    reason: first_line(&reason).to_owned(),
                    evidence: None,
                });
            }
            Err(reason) => return Err(BenchError::Panic(format!("{stage}: {reason}"))),
        }
    }
}

/// The last [`TAIL_LINES`] of `lines`, for an error message.
fn last(lines: &[String]) -> String {
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// [`run_once`], again on a fresh boot after a failure up to [`Options::retries`] times; each
/// failure's evidence is written to [`Options::evidence_dir`], each retried one is noted in
/// `retried`, and the last one is returned. Public for the test that crashes a guest on
/// purpose.
pub fn run_with_retries(
    vmm: VmmKind,
    options: &Options,
    stage: &str,
    retried: &mut Vec<Retried>,
) -> Result<(String, Figures), BenchError> {
    let mut attempt = 1;
    loop {
        let outcome =
            panic::catch_unwind(AssertUnwindSafe(|| run_once(vmm, options, stage, attempt)))
                .unwrap_or_else(|payload| Err(BenchError::Panic(panic_message(payload.as_ref()))));
        let Err(error) = outcome else {
            return outcome;
        };
        let evidence = match &error {
            BenchError::Run(evidence) => Some(evidence.as_ref().clone()),
            _ => None,
        };
        if let (Some(evidence), Some(dir)) = (&evidence, &options.evidence_dir) {
            match evidence.write(dir) {
                Ok(path) => eprintln!("tidal-bench: the evidence is in {}", path.display()),
                Err(e) => eprintln!("tidal-bench: {e}"),
            }
        }
        if attempt > options.retries(vmm) {
            return Err(error);
        }
        attempt += 1;
        eprintln!("tidal-bench: {vmm}, {stage} failed, booting again: {error}");
        retried.push(Retried {
            vmm,
            stage: stage.to_owned(),
            reason: first_line(&error.to_string()).to_owned(),
            evidence,
        });
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// Boots `vmm`, measures one run and powers the guest off; returns the VMM's version and the
/// figures. A run that fails (an error, or a harness panic such as a guest that did not boot)
/// has the VMM say whether the guest died of a triple fault, and returns its evidence: the VM
/// is still there to ask, so a harness panic is caught here, not only by the caller.
fn run_once(
    vmm: VmmKind,
    options: &Options,
    stage: &str,
    attempt: usize,
) -> Result<(String, Figures), BenchError> {
    eprintln!("tidal-bench: {vmm}, {stage}");
    let mut vm = vmm
        .spawn(&options.plan, options.ch.as_deref())
        .map_err(|source| BenchError::Spawn { vmm, source })?;
    let crash_at = options.crash.filter(|c| c.vmm == vmm).map(|c| c.step);
    let mut progress = Progress::new(crash_at);
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        measured_run(vm.as_mut(), &options.plan, &mut progress)
    }));
    let error = match outcome {
        Ok(Ok(measured)) => return Ok(measured),
        Ok(Err(error)) => error.to_string(),
        Err(payload) => panic_message(payload.as_ref()),
    };
    vm.report_triple_fault();
    let memory = vm.memory_state().or(progress.memory);
    let guest = vm.guest();
    let exit = VmmExit::of(guest.wait_exit(EXIT_WAIT));
    Err(BenchError::Run(Box::new(Evidence::new(
        vmm,
        stage,
        attempt,
        progress.step.to_string(),
        (
            guest.uptime().as_secs_f64(),
            progress.step_started.elapsed().as_secs_f64(),
        ),
        &error,
        exit,
        memory,
        &guest.stderr(),
        &guest.console(),
    ))))
}

/// The steps of a run after the VMM started: boot, version, the measurements, power-off.
fn measured_run(
    vm: &mut dyn Vmm,
    plan: &Plan,
    progress: &mut Progress,
) -> Result<(String, Figures), VmmError> {
    vm.guest().wait_until_booted();
    progress.enter(vm, Step::BootFigures);
    let version = vm.version()?;
    let figures = measure::run(vm, plan, progress)?;
    progress.enter(vm, Step::PowerOff);
    vm.guest().poweroff();
    Ok((version, figures))
}
