//! The benchmark's results and what is made of them: a Markdown table of medians with their
//! ranges and the Tidal/QEMU ratio (printed, and pasted into docs/benchmarks.md), a JSON file
//! with every run, and an SVG plot of the hot-plug latencies of both VMMs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde_json::{json, Value};
use thiserror::Error;

use super::evidence::Evidence;
use super::figures::{Figure, Figures, Plan};
use super::host::Environment;
use super::stats::{ratio, Summary};
use super::vmm::VmmKind;

/// Colours of the plot's series: Tidal blue, QEMU red.
const TIDAL_COLOR: RGBColor = RGBColor(31, 119, 180);
const QEMU_COLOR: RGBColor = RGBColor(214, 39, 40);

/// One recorded run of one VMM.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub vmm: VmmKind,
    /// 1 for the first recorded run (warm-ups are not recorded).
    pub index: usize,
    pub figures: Figures,
}

/// A run that failed and was run again on a fresh boot.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Retried {
    pub vmm: VmmKind,
    /// Which run: "run 2 of 5", or the warm-up.
    pub stage: String,
    /// The first line of why it failed.
    pub reason: String,
    /// What it left behind; `None` when the VMM could not even be started.
    pub evidence: Option<Evidence>,
}

impl Retried {
    /// The table's line for it: what the evidence shows, and where its files are.
    pub fn header_line(&self) -> String {
        let what = self.evidence.as_ref().map_or_else(
            || self.reason.clone(),
            |evidence| {
                format!(
                    "{} (evidence: failed/{}/ beside the JSON file)",
                    evidence.summary(),
                    evidence.name()
                )
            },
        );
        format!(
            "{}, {}, failed and ran again on a fresh boot: {what}",
            self.vmm, self.stage
        )
    }
}

/// Everything a benchmark measured, and where.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub environment: Environment,
    pub plan: Plan,
    /// Recorded runs of each VMM.
    pub runs_each: usize,
    /// Whether each VMM had an unrecorded warm-up run first.
    pub warm_up: bool,
    /// Each VMM's name and version, as it reported them.
    pub versions: BTreeMap<VmmKind, String>,
    /// In the order they ran: Tidal and QEMU alternately.
    pub runs: Vec<Run>,
    /// Failed runs that were run again, in order.
    pub retried: Vec<Retried>,
}

/// Why a result file could not be written.
#[derive(Debug, Error)]
pub enum ReportError {
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot draw the plot {}: {message}", path.display())]
    Plot { path: PathBuf, message: String },
}

impl Report {
    /// Every run's value of `figure` for `vmm`.
    pub fn values(&self, vmm: VmmKind, figure: Figure) -> Vec<f64> {
        self.runs
            .iter()
            .filter(|run| run.vmm == vmm)
            .filter_map(|run| run.figures.get(&figure).copied())
            .collect()
    }

    pub fn summary(&self, vmm: VmmKind, figure: Figure) -> Option<Summary> {
        Summary::of(&self.values(vmm, figure))
    }

    /// The VMM's name and version as it reported them, else its name.
    fn version(&self, vmm: VmmKind) -> String {
        self.versions
            .get(&vmm)
            .cloned()
            .unwrap_or_else(|| vmm.to_string())
    }

    /// What keeps this report from being complete: a VMM without runs, a figure of the plan
    /// missing from a run or not a finite number, a figure measured but not in the plan (so
    /// never reported). Empty when all is well.
    pub fn problems(&self) -> Vec<String> {
        let planned = self.plan.figures();
        let mut problems: Vec<String> = VmmKind::ALL
            .iter()
            .filter(|&&vmm| !self.runs.iter().any(|run| run.vmm == vmm))
            .map(|vmm| format!("no run of {vmm}"))
            .collect();
        for run in &self.runs {
            let which = format!("{} run {}", run.vmm, run.index);
            for figure in &planned {
                match run.figures.get(figure) {
                    None => problems.push(format!("{which}: no {}", figure.label())),
                    Some(value) if !value.is_finite() => {
                        problems.push(format!("{which}: {} is {value}", figure.label()));
                    }
                    Some(_) => {}
                }
            }
            for figure in run.figures.keys().filter(|f| !planned.contains(f)) {
                problems.push(format!("{which}: {} is not in the plan", figure.label()));
            }
        }
        problems
    }

    /// The summary as Markdown: a line saying what ran where, then one row a figure with each
    /// VMM's median (min–max) and the ratio of the medians.
    pub fn table(&self) -> String {
        let env = &self.environment;
        let mut text = format!(
            "{} and {}, alternately, {} run{} each{}, {}.\n\
             Guest: {} vCPUs, {} MiB boot RAM, {} MiB hotplug region; host: {}, {} CPUs, \
             Linux {}.\n\n",
            self.version(VmmKind::Tidal),
            self.version(VmmKind::Qemu),
            self.runs_each,
            if self.runs_each == 1 { "" } else { "s" },
            if self.warm_up {
                " after a warm-up run of each"
            } else {
                ""
            },
            env.place(),
            self.plan.cpus,
            self.plan.boot_memory >> 20,
            self.plan.hotplug_region >> 20,
            env.cpu,
            env.cpus,
            env.kernel,
        );
        for retried in &self.retried {
            let _ = writeln!(text, "{}", retried.header_line());
        }
        if !self.retried.is_empty() {
            text.push('\n');
        }
        text.push_str(
            "| figure | Tidal: median (min–max) | QEMU: median (min–max) | Tidal/QEMU |\n\
             | --- | ---: | ---: | ---: |\n",
        );
        for figure in self.plan.figures() {
            let cell = |vmm| {
                self.summary(vmm, figure).map_or_else(
                    || "–".to_owned(),
                    |s| format!("{} ({}–{})", number(s.median), number(s.min), number(s.max)),
                )
            };
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} |",
                figure.label(),
                cell(VmmKind::Tidal),
                cell(VmmKind::Qemu),
                self.median_ratio(figure)
                    .map_or_else(|| "–".to_owned(), |r| format!("{r:.2}"))
            );
        }
        text
    }

    /// Tidal's median over QEMU's.
    fn median_ratio(&self, figure: Figure) -> Option<f64> {
        let median = |vmm| self.summary(vmm, figure).map(|s| s.median);
        ratio(median(VmmKind::Tidal)?, median(VmmKind::Qemu)?)
    }

    /// Everything, for the JSON file: where and what ran, each figure's key, label and unit, the
    /// summaries, and every run's values by key.
    pub fn json(&self) -> Value {
        let figures = self.plan.figures();
        let summaries: serde_json::Map<String, Value> = figures
            .iter()
            .map(|&figure| {
                let by_vmm: BTreeMap<VmmKind, Option<Summary>> = VmmKind::ALL
                    .iter()
                    .map(|&vmm| (vmm, self.summary(vmm, figure)))
                    .collect();
                let mut summary = json!(by_vmm);
                summary["tidal_over_qemu"] = json!(self.median_ratio(figure));
                (figure.key(), summary)
            })
            .collect();
        let runs: Vec<Value> = self
            .runs
            .iter()
            .map(|run| {
                let values: serde_json::Map<String, Value> = run
                    .figures
                    .iter()
                    .map(|(figure, &value)| (figure.key(), json!(value)))
                    .collect();
                json!({ "vmm": run.vmm, "run": run.index, "figures": values })
            })
            .collect();
        json!({
            "where": self.environment.place(),
            "environment": self.environment,
            "versions": self.versions,
            "runs_each": self.runs_each,
            "warm_up": self.warm_up,
            "plan": self.plan,
            "figures": figures
                .iter()
                .map(|f| json!({ "key": f.key(), "label": f.label(), "unit": f.unit().symbol() }))
                .collect::<Vec<_>>(),
            "summary": summaries,
            "runs": runs,
            "retried": self.retried,
        })
    }

    /// Writes [`Report::json`] to `path`, creating its directory.
    pub fn write_json(&self, path: &Path) -> Result<(), ReportError> {
        let text = serde_json::to_string_pretty(&self.json())
            .expect("a JSON value has string keys only, so it always serializes");
        create_parent(path)
            .and_then(|()| std::fs::write(path, text + "\n"))
            .map_err(|source| ReportError::Write {
                path: path.to_owned(),
                source,
            })
    }

    /// Draws the hot-plug latencies (the figures with a [`Figure::plot_label`]) as an SVG at
    /// `path`: one column a figure, each VMM's median as a dot and its range as a bar beside
    /// the other's, on a log scale (removals of filled DIMMs take a hundred times longer than
    /// additions).
    pub fn write_plot(&self, path: &Path) -> Result<(), ReportError> {
        create_parent(path).map_err(|source| ReportError::Write {
            path: path.to_owned(),
            source,
        })?;
        self.draw_plot(path).map_err(|e| ReportError::Plot {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    fn draw_plot(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        // One column a figure, COLUMN units wide, labelled at its centre; each VMM's values sit
        // a unit to its side.
        const COLUMN: i32 = 10;
        let plotted = self
            .plan
            .figures()
            .into_iter()
            .filter_map(|figure| Some((figure, figure.plot_label()?)));
        let columns: Vec<(i32, Figure, String)> = (0..)
            .zip(plotted)
            .map(|(i, (figure, label))| (i * COLUMN + COLUMN / 2, figure, label))
            .collect();
        let series = [
            (VmmKind::Tidal, TIDAL_COLOR, -1),
            (VmmKind::Qemu, QEMU_COLOR, 1),
        ];
        let (mut low, mut high) = (f64::INFINITY, 0.0f64);
        for &(_, figure, _) in &columns {
            for &(vmm, _, _) in &series {
                if let Some(s) = self.summary(vmm, figure) {
                    (low, high) = (low.min(s.min), high.max(s.max));
                }
            }
        }
        if !(low.is_finite() && low > 0.0 && high >= low) {
            return Err("no positive latencies to plot".into());
        }

        let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
        root.fill(&WHITE)?;
        let width = COLUMN * i32::try_from(columns.len())?;
        let x_axis = (0..width).with_key_points(columns.iter().map(|c| c.0).collect());
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "Memory hot-plug latency: median and range of {} run{} each ({})",
                    self.runs_each,
                    if self.runs_each == 1 { "" } else { "s" },
                    self.environment.short_place()
                ),
                ("sans-serif", 20),
            )
            .margin(20)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(x_axis, (low / 2.0..high * 2.0).log_scale())?;
        let label_at = |x: &i32| {
            columns
                .iter()
                .find(|c| c.0 == *x)
                .map(|c| c.2.clone())
                .unwrap_or_default()
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&label_at)
            .y_label_formatter(&|y| number(*y))
            .y_desc("milliseconds (log scale)")
            .label_style(("sans-serif", 14))
            .draw()?;
        for (vmm, color, offset) in series {
            let points: Vec<(i32, Summary)> = columns
                .iter()
                .filter_map(|&(x, figure, _)| Some((x + offset, self.summary(vmm, figure)?)))
                .collect();
            chart.draw_series(points.iter().map(|&(x, s)| {
                PathElement::new(vec![(x, s.min), (x, s.max)], color.stroke_width(2))
            }))?;
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|&(x, s)| Circle::new((x, s.median), 5, color.filled())),
                )?
                .label(self.version(vmm))
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
        root.present()?;
        Ok(())
    }
}

/// `1234`, `56.7`: whole numbers from 100 on, one decimal below.
fn number(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn create_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::evidence::VmmExit;

    /// A report of the quick plan with made-up values: Tidal twice as fast as QEMU.
    fn report() -> Report {
        let plan = Plan::quick();
        let runs = VmmKind::ALL
            .iter()
            .flat_map(|&vmm| (1..=3).map(move |index| (vmm, index)))
            .map(|(vmm, index)| Run {
                vmm,
                index,
                figures: plan
                    .figures()
                    .into_iter()
                    .enumerate()
                    .map(|(i, figure)| {
                        let base = (i + index) as f64 * 10.0;
                        (
                            figure,
                            if vmm == VmmKind::Tidal {
                                base
                            } else {
                                2.0 * base
                            },
                        )
                    })
                    .collect(),
            })
            .collect();
        Report {
            environment: Environment {
                in_testhost: true,
                cpu: "Test CPU".to_owned(),
                cpus: 2,
                kernel: "6.1.0".to_owned(),
            },
            plan,
            runs_each: 3,
            warm_up: false,
            versions: BTreeMap::from([
                (VmmKind::Tidal, "Tidal 0.1.0".to_owned()),
                (VmmKind::Qemu, "QEMU 7.2.0 (Debian)".to_owned()),
            ]),
            runs,
            retried: Vec::new(),
        }
    }

    #[test]
    fn complete_reports_have_no_problems() {
        assert_eq!(report().problems(), Vec::<String>::new());
    }

    #[test]
    fn finds_missing_and_broken_figures() {
        let mut report = report();
        report.runs[0].figures.remove(&Figure::Boot);
        report.runs[1].figures.insert(Figure::VmmOverhead, f64::NAN);
        report.runs.retain(|run| run.vmm == VmmKind::Tidal);
        let problems = report.problems();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].contains("no run of QEMU"));
        assert!(problems[1].contains("Tidal run 1: no boot"));
        assert!(problems[2].contains("is NaN"));
    }

    #[test]
    fn tables_medians_ranges_and_ratios() {
        let table = report().table();
        assert!(table.starts_with("Tidal 0.1.0 and QEMU 7.2.0 (Debian), alternately, 3 runs"));
        assert!(table.contains("inside the QEMU TCG test host"));
        // Boot is the first figure: values 10, 20, 30 for Tidal, twice that for QEMU.
        assert!(
            table.contains("| boot: VMM start → first userspace line (ms) | 20.0 (10.0–30.0) | 40.0 (20.0–60.0) | 0.50 |"),
            "{table}"
        );
        let rows = table.lines().filter(|l| l.starts_with("| ")).count();
        assert_eq!(rows, 2 + Plan::quick().figures().len()); // with the header and its rule
    }

    #[test]
    fn says_which_runs_ran_again_and_what_their_evidence_shows() {
        let mut report = report();
        let evidence = Evidence::new(
            VmmKind::Tidal,
            "run 2 of 3",
            1,
            "fill the 128 MiB DIMM".to_owned(),
            (30.0, 2.0),
            "tidal exited while running \"grep '^MemTotal:' /proc/meminfo\" in the guest",
            VmmExit::Exited { code: 3 },
            None,
            "[x ERROR tidal_vmm::vm] the guest kernel panicked; stopping the VM\n",
            "Kernel panic - not syncing: sysrq triggered crash\n",
        );
        report.retried.push(Retried {
            vmm: VmmKind::Tidal,
            stage: "run 2 of 3".to_owned(),
            reason: evidence.error.clone(),
            evidence: Some(evidence),
        });
        report.retried.push(Retried {
            vmm: VmmKind::Qemu,
            stage: "run 1 of 3".to_owned(),
            reason: "cannot start it".to_owned(),
            evidence: None,
        });
        let table = report.table();
        assert!(
            table.contains(
                "Tidal, run 2 of 3, failed and ran again on a fresh boot: in step \"fill the \
                 128 MiB DIMM\", 30.0 s after the VMM started: tidal exited while running \
                 \"grep '^MemTotal:' /proc/meminfo\" in the guest; Tidal exited with status 3, \
                 its last error line: [x ERROR tidal_vmm::vm] the guest kernel panicked; \
                 stopping the VM (evidence: failed/tidal-run2-1/ beside the JSON file)\n"
            ),
            "{table}"
        );
        assert!(table
            .contains("QEMU, run 1 of 3, failed and ran again on a fresh boot: cannot start it\n"));
        let json = report.json();
        assert_eq!(json["retried"][0]["stage"], "run 2 of 3");
        assert_eq!(json["retried"][0]["vmm"], "tidal");
        let evidence = &json["retried"][0]["evidence"];
        assert_eq!(evidence["exit"]["code"], 3);
        assert_eq!(evidence["step"], "fill the 128 MiB DIMM");
        assert_eq!(
            evidence["console_tail"][0],
            "Kernel panic - not syncing: sysrq triggered crash"
        );
        assert_eq!(json["retried"][1]["evidence"], Value::Null);
    }

    #[test]
    fn json_has_every_run_by_key() {
        let json = report().json();
        assert_eq!(json["runs"].as_array().map(Vec::len), Some(6));
        assert_eq!(json["runs"][0]["vmm"], "tidal");
        assert_eq!(json["runs"][3]["vmm"], "qemu");
        assert_eq!(json["runs"][0]["figures"]["boot_ms"], 10.0);
        assert_eq!(json["summary"]["boot_ms"]["qemu"]["median"], 40.0);
        assert_eq!(json["summary"]["boot_ms"]["tidal_over_qemu"], 0.5);
        assert_eq!(json["versions"]["qemu"], "QEMU 7.2.0 (Debian)");
    }

    #[test]
    fn plots_both_vmms_as_svg() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/latency.svg");
        report().write_plot(&path).expect("plot");
        let svg = std::fs::read_to_string(&path).expect("read the plot");
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        for text in [
            "add 128M",
            "remove 128M filled",
            "Tidal 0.1.0",
            "QEMU 7.2.0",
        ] {
            assert!(svg.contains(text), "no {text:?} in the plot");
        }
        report()
            .write_json(&dir.path().join("sub/bench.json"))
            .expect("json");
    }
}
