//! The benchmark's results and what is made of them: a Markdown table of medians with their
//! ranges and Tidal's ratio to each other VMM (printed, and pasted into docs/benchmarks.md), a
//! JSON file with every run, and an SVG plot of the hot-plug latencies of every VMM.

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
use super::pool::PoolRun;
use super::stats::{ratio, Summary};
use super::vmm::VmmKind;

/// The table's cell for a figure a VMM cannot measure (Cloud Hypervisor's removals).
const NOT_SUPPORTED: &str = "not supported";

/// The colour of a VMM's series in the plot: Tidal blue, QEMU red, Cloud Hypervisor green.
fn color(vmm: VmmKind) -> RGBColor {
    match vmm {
        VmmKind::Tidal => RGBColor(31, 119, 180),
        VmmKind::Qemu => RGBColor(214, 39, 40),
        VmmKind::CloudHypervisor => RGBColor(44, 160, 44),
    }
}

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
    /// The VMMs of each round, in their order: Tidal first, then the ones it is compared with.
    pub vmms: Vec<VmmKind>,
    pub plan: Plan,
    /// Recorded runs of each VMM.
    pub runs_each: usize,
    /// Whether each VMM had an unrecorded warm-up run first.
    pub warm_up: bool,
    /// Each VMM's name and version, as it reported them.
    pub versions: BTreeMap<VmmKind, String>,
    /// In the order they ran: the VMMs of [`Report::vmms`] in turn.
    pub runs: Vec<Run>,
    /// Failed runs that were run again, in order.
    pub retried: Vec<Retried>,
    /// The host memory pool's part, when it ran.
    pub pool: Option<PoolRun>,
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

    /// The VMMs Tidal is compared with: every other one of [`Report::vmms`].
    fn references(&self) -> impl Iterator<Item = VmmKind> + '_ {
        self.vmms
            .iter()
            .copied()
            .filter(|&vmm| vmm != VmmKind::Tidal)
    }

    /// What keeps this report from being complete: a VMM without runs, a figure of the plan
    /// that its VMM measures missing from a run or not a finite number, a figure measured but
    /// not in the plan (so never reported). Empty when all is well.
    pub fn problems(&self) -> Vec<String> {
        let planned = self.plan.figures();
        let mut problems: Vec<String> = self
            .vmms
            .iter()
            .filter(|&&vmm| !self.runs.iter().any(|run| run.vmm == vmm))
            .map(|vmm| format!("no run of {vmm}"))
            .collect();
        for run in &self.runs {
            let which = format!("{} run {}", run.vmm, run.index);
            for figure in planned.iter().filter(|&&f| run.vmm.measures(f)) {
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
        problems.extend(self.pool.iter().flat_map(PoolRun::problems));
        problems
    }

    /// The summary as Markdown: a line saying what ran where, then one row a figure with each
    /// VMM's median (min–max), or "not supported", and Tidal's median over each other VMM's.
    pub fn table(&self) -> String {
        let env = &self.environment;
        let versions: Vec<String> = self.vmms.iter().map(|&vmm| self.version(vmm)).collect();
        let mut text = format!(
            "{}, alternately, {} run{} each{}, {}.\n\
             Guest: {} vCPUs, {} MiB boot RAM, {} MiB hotplug region; host: {}, {} CPUs, \
             Linux {}.\n\n",
            and_list(&versions),
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
        let mut header = vec!["figure".to_owned()];
        header.extend(
            self.vmms
                .iter()
                .map(|vmm| format!("{}: median (min–max)", vmm.short_name())),
        );
        header.extend(
            self.references()
                .map(|vmm| format!("Tidal/{}", vmm.short_name())),
        );
        table_row(&mut text, &header);
        let mut rule = vec!["---".to_owned()];
        rule.resize(header.len(), "---:".to_owned());
        table_row(&mut text, &rule);
        for figure in self.plan.figures() {
            let mut row = vec![figure.label()];
            row.extend(self.vmms.iter().map(|&vmm| self.cell(vmm, figure)));
            row.extend(self.references().map(|reference| {
                self.median_ratio(figure, reference)
                    .map_or_else(|| "–".to_owned(), |r| format!("{r:.2}"))
            }));
            table_row(&mut text, &row);
        }
        if let Some(pool) = &self.pool {
            text.push('\n');
            text.push_str(&pool.table());
        }
        text
    }

    /// `vmm`'s median (min–max) of `figure`, "–" when it has none, or [`NOT_SUPPORTED`].
    fn cell(&self, vmm: VmmKind, figure: Figure) -> String {
        if !vmm.measures(figure) {
            return NOT_SUPPORTED.to_owned();
        }
        self.summary(vmm, figure).map_or_else(
            || "–".to_owned(),
            |s| format!("{} ({}–{})", number(s.median), number(s.min), number(s.max)),
        )
    }

    /// Tidal's median over `reference`'s.
    fn median_ratio(&self, figure: Figure, reference: VmmKind) -> Option<f64> {
        let median = |vmm| self.summary(vmm, figure).map(|s| s.median);
        ratio(median(VmmKind::Tidal)?, median(reference)?)
    }

    /// Everything, for the JSON file: where and what ran, each figure's key, label and unit, the
    /// summaries (each VMM's, `null` where it has none, the VMMs that cannot measure it, and
    /// Tidal's ratio to each other VMM as `tidal_over_<vmm>`), and every run's values by key.
    pub fn json(&self) -> Value {
        let figures = self.plan.figures();
        let summaries: serde_json::Map<String, Value> = figures
            .iter()
            .map(|&figure| {
                let by_vmm: BTreeMap<VmmKind, Option<Summary>> = self
                    .vmms
                    .iter()
                    .map(|&vmm| (vmm, self.summary(vmm, figure)))
                    .collect();
                let mut summary = json!(by_vmm);
                for reference in self.references() {
                    summary[format!("tidal_over_{}", reference.key())] =
                        json!(self.median_ratio(figure, reference));
                }
                summary["not_supported_by"] = json!(self
                    .vmms
                    .iter()
                    .filter(|vmm| !vmm.measures(figure))
                    .collect::<Vec<_>>());
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
            "vmms": self.vmms,
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
            "pool": self.pool,
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
    /// the others', on a log scale (removals of filled DIMMs take a hundred times longer than
    /// additions).
    pub fn write_plot(&self, path: &Path) -> Result<(), ReportError> {
        write_svg(path, |path| self.draw_plot(path))
    }

    /// Draws the pool's part ([`PoolRun::draw_plot`]) as an SVG at `path`; nothing when it
    /// did not run.
    pub fn write_pool_plot(&self, path: &Path) -> Result<(), ReportError> {
        match &self.pool {
            Some(pool) => write_svg(path, |path| pool.draw_plot(path)),
            None => Ok(()),
        }
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
        // Two units apart, centred on the column: -1, 1 for two VMMs; -2, 0, 2 for three.
        let count = i32::try_from(self.vmms.len())?;
        let series: Vec<(VmmKind, RGBColor, i32)> = (0..)
            .zip(&self.vmms)
            .map(|(i, &vmm)| (vmm, color(vmm), 2 * i - (count - 1)))
            .collect();
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

/// Draws a plot at `path` with `draw`, creating its directory.
fn write_svg(
    path: &Path,
    draw: impl FnOnce(&Path) -> Result<(), Box<dyn std::error::Error>>,
) -> Result<(), ReportError> {
    create_parent(path).map_err(|source| ReportError::Write {
        path: path.to_owned(),
        source,
    })?;
    draw(path).map_err(|e| ReportError::Plot {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Appends one Markdown table row of `cells`.
fn table_row(text: &mut String, cells: &[String]) {
    let _ = writeln!(text, "| {} |", cells.join(" | "));
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
pub(super) mod tests {
    use super::*;
    use crate::bench::evidence::VmmExit;

    /// A report of the quick plan with made-up values for Tidal and QEMU: Tidal twice as fast.
    fn report() -> Report {
        report_of(&[VmmKind::Tidal, VmmKind::Qemu])
    }

    /// The same for `vmms`, with Cloud Hypervisor four times as slow as Tidal in the figures
    /// it measures.
    fn report_of(vmms: &[VmmKind]) -> Report {
        let plan = Plan::quick();
        let runs = vmms
            .iter()
            .flat_map(|&vmm| (1..=3).map(move |index| (vmm, index)))
            .map(|(vmm, index)| Run {
                vmm,
                index,
                figures: plan
                    .figures()
                    .into_iter()
                    .enumerate()
                    .filter(|&(_, figure)| vmm.measures(figure))
                    .map(|(i, figure)| {
                        let base = (i + index) as f64 * 10.0;
                        let factor = match vmm {
                            VmmKind::Tidal => 1.0,
                            VmmKind::Qemu => 2.0,
                            VmmKind::CloudHypervisor => 4.0,
                        };
                        (figure, factor * base)
                    })
                    .collect(),
            })
            .collect();
        Report {
            vmms: vmms.to_vec(),
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
                (
                    VmmKind::CloudHypervisor,
                    "Cloud Hypervisor v53.0".to_owned(),
                ),
            ])
            .into_iter()
            .filter(|(vmm, _)| vmms.contains(vmm))
            .collect(),
            runs,
            retried: Vec::new(),
            pool: None,
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
    fn tables_cloud_hypervisor_beside_qemu_with_both_ratios() {
        let report = report_of(&[VmmKind::Tidal, VmmKind::Qemu, VmmKind::CloudHypervisor]);
        assert_eq!(report.problems(), Vec::<String>::new());
        let table = report.table();
        assert!(
            table.starts_with(
                "Tidal 0.1.0, QEMU 7.2.0 (Debian) and Cloud Hypervisor v53.0, alternately, 3 runs"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "| figure | Tidal: median (min–max) | QEMU: median (min–max) | CH: median \
                 (min–max) | Tidal/QEMU | Tidal/CH |\n| --- | ---: | ---: | ---: | ---: | ---: |\n"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "| boot: VMM start → first userspace line (ms) | 20.0 (10.0–30.0) | \
                 40.0 (20.0–60.0) | 80.0 (40.0–120) | 0.50 | 0.25 |"
            ),
            "{table}"
        );
        // Cloud Hypervisor hot-adds, and cannot remove: no ratio where it measured nothing.
        assert!(
            table.contains("| hot-add 128 MiB: request → MemTotal (ms) | "),
            "{table}"
        );
        let removal = table
            .lines()
            .find(|l| l.starts_with("| hot-remove 128 MiB filled: request → DIMM gone"))
            .unwrap_or_else(|| panic!("no filled removal row: {table}"));
        assert!(
            removal.ends_with(" | not supported | 0.50 | – |"),
            "{removal}"
        );
        let rows = table.lines().filter(|l| l.starts_with("| ")).count();
        assert_eq!(rows, 2 + Plan::quick().figures().len());
        let json = report.json();
        assert_eq!(json["vmms"], json!(["tidal", "qemu", "ch"]));
        assert_eq!(json["summary"]["boot_ms"]["tidal_over_ch"], 0.25);
        assert_eq!(json["summary"]["boot_ms"]["not_supported_by"], json!([]));
        let removal = &json["summary"]["hot_remove_128m_filled_gone_ms"];
        assert_eq!(removal["ch"], Value::Null);
        assert_eq!(removal["tidal_over_ch"], Value::Null);
        assert_eq!(removal["not_supported_by"], json!(["ch"]));
    }

    #[test]
    fn a_run_of_cloud_hypervisor_needs_only_what_it_can_measure() {
        let mut report = report_of(&[VmmKind::Tidal, VmmKind::Qemu, VmmKind::CloudHypervisor]);
        let ch_run = report
            .runs
            .iter_mut()
            .find(|run| run.vmm == VmmKind::CloudHypervisor)
            .expect("a run of CH");
        ch_run.figures.remove(&Figure::Boot);
        report.runs.retain(|run| run.vmm != VmmKind::Qemu);
        assert_eq!(
            report.problems(),
            [
                "no run of QEMU",
                "Cloud Hypervisor run 1: no boot: VMM start → first userspace line (ms)"
            ]
        );
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
        assert_eq!(json["summary"]["boot_ms"].get("tidal_over_ch"), None);
        assert_eq!(json["versions"]["qemu"], "QEMU 7.2.0 (Debian)");
    }

    /// The SVG at `path`, after checking that it is one and holds each of `texts`.
    pub(in crate::bench) fn svg_with(path: &Path, texts: &[&str]) -> String {
        let svg = std::fs::read_to_string(path).expect("read the plot");
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        for text in texts {
            assert!(svg.contains(text), "no {text:?} in the plot");
        }
        svg
    }

    #[test]
    fn plots_both_vmms_as_svg() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/latency.svg");
        report().write_plot(&path).expect("plot");
        let svg = svg_with(
            &path,
            &[
                "add 128M",
                "remove 128M filled",
                "Tidal 0.1.0",
                "QEMU 7.2.0",
            ],
        );
        assert!(!svg.contains("Cloud Hypervisor"));
        let path = dir.path().join("three.svg");
        report_of(&[VmmKind::Tidal, VmmKind::Qemu, VmmKind::CloudHypervisor])
            .write_plot(&path)
            .expect("plot of three VMMs");
        let svg = std::fs::read_to_string(&path).expect("read the plot");
        for text in ["Tidal 0.1.0", "QEMU 7.2.0", "Cloud Hypervisor v53.0"] {
            assert!(svg.contains(text), "no {text:?} in the plot of three");
        }
        report()
            .write_json(&dir.path().join("sub/bench.json"))
            .expect("json");
    }
}
