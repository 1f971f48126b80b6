//! `tidal-bench`: Tidal and QEMU side by side on the same guest: boot time, hot-add and
//! hot-remove latency, and what the host gets back. Run it with `ci/bench.sh`, which runs it in
//! the test host where /dev/kvm is not hardware-backed. The measuring is in
//! `tidal_tests::bench`; this prints the table of medians and writes every run as JSON and the
//! latencies as an SVG plot.

use std::path::PathBuf;
use std::process::exit;

use tidal_tests::bench::{self, Options};

const USAGE: &str = "usage: tidal-bench [--runs N] [--quick] [--json PATH] [--plot PATH]";

struct Args {
    options: Options,
    json: PathBuf,
    plot: PathBuf,
}

fn parse_args() -> Args {
    let (mut runs, mut quick) = (5, false);
    let mut json = PathBuf::from("target/bench/bench.json");
    let mut plot = PathBuf::from("target/bench/latency.svg");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |what: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs {what}")))
        };
        match arg.as_str() {
            "--runs" => {
                runs = value("a number")
                    .parse()
                    .ok()
                    .filter(|&n: &usize| n > 0)
                    .unwrap_or_else(|| usage("--runs needs a positive number"));
            }
            "--quick" => quick = true,
            "--json" => json = value("a path").into(),
            "--plot" => plot = value("a path").into(),
            "-h" | "--help" => {
                println!("{USAGE}");
                exit(0)
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    Args {
        options: if quick {
            Options::quick()
        } else {
            Options::full(runs)
        },
        json,
        plot,
    }
}

fn usage(problem: &str) -> ! {
    eprintln!("tidal-bench: {problem}\n{USAGE}");
    exit(2)
}

fn main() {
    let args = parse_args();
    let report = bench::run(&args.options).unwrap_or_else(|e| {
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
