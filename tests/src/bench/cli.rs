//! `tidal-bench`'s command line, here rather than in the binary so that its parsing into
//! [`Options`] is tested with the library.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use clap::Parser;
use tidal_api::size::parse_size;

use super::Options;

/// Tidal and QEMU (and Cloud Hypervisor, with --ch) side by side on the same guest,
/// alternately; prints a table of medians.
#[derive(Debug, Parser)]
#[command(name = "tidal-bench", version)]
pub struct Args {
    /// Recorded runs of each VMM (after one unrecorded warm-up run of each).
    #[arg(long, default_value = "5")]
    pub runs: NonZeroUsize,
    /// One run of each, no warm-up, a 128 MiB DIMM: checks that every figure is measured.
    #[arg(long)]
    pub quick: bool,
    /// DIMM sizes to add and remove, empty and half full, instead of the plan's (1G);
    /// comma-separated, e.g. `--removed 1G,4G`.
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub removed: Vec<u64>,
    /// DIMM sizes only added, at the end of a run, instead of the plan's (4G,128M).
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub added_only: Vec<u64>,
    /// A cloud-hypervisor binary: Cloud Hypervisor runs in every round too, after QEMU, and
    /// the table gets its column (it only adds memory: its removal rows say "not supported").
    #[arg(long, value_name = "PATH")]
    pub ch: Option<PathBuf>,
    /// Where every run goes, as JSON.
    #[arg(long, default_value = "target/bench/bench.json")]
    pub json: PathBuf,
    /// Where the latency plot goes (SVG).
    #[arg(long, default_value = "target/bench/latency.svg")]
    pub plot: PathBuf,
    /// Where the plot of the pool's part goes (SVG): each VM's share of the budget over time.
    #[arg(long, default_value = "target/bench/pool.svg")]
    pub pool_plot: PathBuf,
    /// Leave out the host memory pool's part (three Tidal VMs and moves between them).
    #[arg(long)]
    pub no_pool: bool,
}

impl Args {
    /// What to run: the full or the quick plan, with the sizes and VMMs asked for; each failed
    /// run's evidence goes beside the JSON file, so that ci/bench.sh brings both out of the
    /// test host.
    pub fn options(&self) -> Options {
        let mut options = if self.quick {
            Options::quick()
        } else {
            Options::full(self.runs.get())
        };
        if !self.removed.is_empty() {
            options.plan.removed.clone_from(&self.removed);
        }
        if !self.added_only.is_empty() {
            options.plan.added_only.clone_from(&self.added_only);
        }
        options.ch.clone_from(&self.ch);
        if self.no_pool {
            options.pool = None;
        }
        options.evidence_dir = Some(
            self.json
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join("failed"),
        );
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::VmmKind;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("tidal-bench").chain(args.iter().copied()))
    }

    #[test]
    fn ch_adds_cloud_hypervisor_to_every_round() {
        let args = parse(&["--quick", "--ch", "/opt/ch/cloud-hypervisor"]).expect("parses");
        let options = args.options();
        assert_eq!(
            options.ch.as_deref(),
            Some(Path::new("/opt/ch/cloud-hypervisor"))
        );
        assert_eq!(
            options.vmms(),
            [VmmKind::Tidal, VmmKind::Qemu, VmmKind::CloudHypervisor]
        );
        assert_eq!(options.runs, 1);
        assert!(parse(&["--ch"]).is_err(), "--ch needs a path");
    }

    #[test]
    fn without_ch_tidal_and_qemu_run() {
        let options = parse(&["--runs", "3", "--removed", "1G,4G", "--json", "out/b.json"])
            .expect("parses")
            .options();
        assert_eq!(options.ch, None);
        assert_eq!(options.vmms(), [VmmKind::Tidal, VmmKind::Qemu]);
        assert_eq!(options.runs, 3);
        assert!(options.warm_up);
        assert_eq!(options.plan.removed, [1 << 30, 4 << 30]);
        assert_eq!(
            options.evidence_dir.as_deref(),
            Some(Path::new("out/failed"))
        );
        assert!(parse(&["--runs", "0"]).is_err());
        assert_eq!(options.pool, Some(crate::bench::PoolPlan::full()));
        assert_eq!(parse(&["--no-pool"]).expect("parses").options().pool, None);
    }
}
