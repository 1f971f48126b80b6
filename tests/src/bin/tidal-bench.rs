//! `tidal-bench`: Tidal and QEMU (and Cloud Hypervisor, with `--ch PATH`) side by side on the
//! same guest: boot time, hot-add and hot-remove latency, and what the host gets back. Run it
//! with `ci/bench.sh`, which runs it in the test host where /dev/kvm is not hardware-backed.
//! The measuring and the command line are in `tidal_tests::bench`; this prints the table of
//! medians and writes every run as JSON, the latencies as an SVG plot and the pool's part as
//! another.

use std::process::exit;

use clap::Parser;
use tidal_tests::bench::{self, cli::Args};

fn main() {
    let args = Args::parse();
    let report = bench::run(&args.options()).unwrap_or_else(|e| {
        eprintln!("tidal-bench: {e}");
        exit(1)
    });
    println!("\n{}", report.table());
    let mut failed = false;
    for written in [
        report.write_json(&args.json),
        report.write_plot(&args.plot),
        report.write_pool_plot(&args.pool_plot),
    ] {
        if let Err(e) = written {
            eprintln!("tidal-bench: {e}");
            failed = true;
        }
    }
    eprintln!(
        "tidal-bench: every run in {}, the plots in {} and {}",
        args.json.display(),
        args.plot.display(),
        args.pool_plot.display()
    );
    for problem in report.problems() {
        eprintln!("tidal-bench: incomplete: {problem}");
        failed = true;
    }
    if failed {
        exit(1)
    }
}
