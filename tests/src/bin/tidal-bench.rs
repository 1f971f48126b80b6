//! `tidal-bench`: Tidal and QEMU side by side on the same guest: boot time, hot-add and
//! hot-remove latency, and what the host gets back. Run it with `ci/bench.sh`, which runs it in
//! the test host where /dev/kvm is not hardware-backed. The measuring is in
//! `tidal_tests::bench`; this prints the table of medians and writes every run as JSON and the
//! latencies as an SVG plot.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::exit;

use clap::Parser;
use tidal_api::size::parse_size;
use tidal_tests::bench::{self, Options};

/// Tidal and QEMU side by side on the same guest, alternately; prints a table of medians.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Recorded runs of each VMM (after one unrecorded warm-up run of each).
    #[arg(long, default_value = "5")]
    runs: NonZeroUsize,
    /// One run of each, no warm-up, a 128 MiB DIMM: checks that every figure is measured.
    #[arg(long)]
    quick: bool,
    /// DIMM sizes to add and remove, empty and half full, instead of the plan's (1G);
    /// comma-separated, e.g. `--removed 1G,4G`.
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    removed: Vec<u64>,
    /// DIMM sizes only added, at the end of a run, instead of the plan's (4G,128M).
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    added_only: Vec<u64>,
    /// Where every run goes, as JSON.
    #[arg(long, default_value = "target/bench/bench.json")]
    json: PathBuf,
    /// Where the latency plot goes (SVG).
    #[arg(long, default_value = "target/bench/latency.svg")]
    plot: PathBuf,
}

impl Args {
    fn options(&self) -> Options {
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
        // Beside the JSON file, so that ci/bench.sh brings both out of the test host.
        options.evidence_dir = Some(
            self.json
                .parent()
                .unwrap_or_else(|| std::path::Path::new("."))
                .join("failed"),
        );
        options
    }
}

fn main() {
    let args = Args::parse();
    let report = bench::run(&args.options()).unwrap_or_else(|e| {
        eprintln!("tidal-bench: {e}");
        exit(1)
    });
    println!("\n{}", report.table());
    let mut failed = false;
    for written in [report.write_json(&args.json), report.write_plot(&args.plot)] {
        if let Err(e) = written {
            eprintln!("tidal-bench: {e}");
            failed = true;
        }
    }
    eprintln!(
        "tidal-bench: every run in {}, the plot in {}",
        args.json.display(),
        args.plot.display()
    );
    for problem in report.problems() {
        eprintln!("tidal-bench: incomplete: {problem}");
        failed = true;
    }
    if failed {
        exit(1)
    }
}
