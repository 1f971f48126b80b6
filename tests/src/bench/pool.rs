//! The host memory pool's part of the benchmark (Tidal alone: no other VMM has a pool): three
//! Tidal VMs in a `tidal-pool` whose budget they spend, 1 GiB moved back and forth between two
//! of them, then the VM of highest priority growing past the free budget at the expense of the
//! others. It times each move and the priority grow, and keeps the pool's `/pool/events`, from
//! which it draws each VM's share of the budget over time (docs/pool.md shows that figure).

use std::path::Path;
use std::thread;
use std::time::Instant;

use plotters::prelude::*;
use serde::Serialize;
use tidal_api::pool::{DesiredRam, MoveRequest, PoolChange, PoolEvent};
use tidal_api::size::format_size;

use super::stats::Summary;
use crate::elastic::{ElasticVm, GIB, MIB};
use crate::pool::{pooled_vm, PoolDaemon};

/// Each VM's boot RAM; the budget is the three of them and [`PoolPlan::moved`] more.
const BOOT: u64 = 512 * MIB;
/// The VMs, their priorities, and each one's colour in the plot.
const VMS: [(&str, i32, RGBColor); 3] = [
    ("a", 0, RGBColor(31, 119, 180)),
    ("b", 0, RGBColor(255, 127, 14)),
    ("c", 1, RGBColor(44, 160, 44)),
];

/// What the pool's part runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolPlan {
    /// Timed moves, alternately from a to b and back.
    pub moves: usize,
    /// The size of each move, and what a grows by first to spend the budget.
    pub moved: u64,
    /// What c (the highest priority) then grows by, taken from a or b.
    pub grow: u64,
}

impl PoolPlan {
    pub fn full() -> Self {
        Self {
            moves: 5,
            moved: GIB,
            grow: 512 * MIB,
        }
    }

    pub fn quick() -> Self {
        Self {
            moves: 1,
            ..Self::full()
        }
    }
}

/// What the pool's part measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolRun {
    pub plan: PoolPlan,
    /// Each move: the request until its answer, when the donor's DIMMs are gone from the host
    /// and the receiver's guest has taken the memory (its resize is waited); milliseconds.
    pub move_ms: Vec<f64>,
    /// c's grow: the request until its answer, the donors shrunk and c grown; milliseconds.
    pub grow_ms: f64,
    /// Who gave c's grow, by name.
    pub grow_from: Vec<String>,
    /// Every event the pool told, in order.
    pub events: Vec<PoolEvent>,
}

/// Runs the pool's part in a fresh pool whose files go in `dir`. Like the rest of the harness
/// it panics when a step fails (a guest that does not boot, a move the pool refuses, a guest
/// whose `MemTotal` does not show the move); the caller catches that.
pub fn run(plan: &PoolPlan, dir: &Path) -> PoolRun {
    let pool = PoolDaemon::start(dir, &format!("{}M", (3 * BOOT + plan.moved) >> 20));
    let events = follow(&pool);
    let mut vms: Vec<ElasticVm> = VMS
        .iter()
        .map(|&(name, priority, _)| pooled_vm(&pool.socket(), name, priority))
        .collect();
    vms[0].resize(BOOT + plan.moved);
    let mut move_ms = Vec::new();
    for index in 0..plan.moves {
        let (from, to) = if index % 2 == 0 { (0, 1) } else { (1, 0) };
        let before = vms[to].memtotal_kib();
        let request = MoveRequest {
            from: VMS[from].0.to_owned(),
            to: VMS[to].0.to_owned(),
            size: plan.moved,
            timeout_secs: Some(600),
        };
        let start = Instant::now();
        pool.move_memory(&request)
            .unwrap_or_else(|e| panic!("move {} failed: {e}\n{}", index + 1, pool.log()));
        move_ms.push(start.elapsed().as_secs_f64() * 1e3);
        let grown = vms[to].memtotal_kib() - before;
        assert_eq!(
            grown,
            plan.moved / 1024,
            "the receiver's MemTotal after move {}",
            index + 1
        );
    }
    let start = Instant::now();
    let resized = pool
        .set_ram(
            VMS[2].0,
            &DesiredRam {
                desired_ram: BOOT + plan.grow,
                timeout_secs: Some(600),
            },
        )
        .unwrap_or_else(|e| panic!("c's grow failed: {e}\n{}", pool.log()));
    let grow_ms = start.elapsed().as_secs_f64() * 1e3;
    let grow_from = resized.taken.into_iter().map(|taken| taken.from).collect();
    for vm in &mut vms {
        assert_eq!(vm.guest.poweroff().code(), Some(0), "a VM's poweroff");
    }
    pool.stop();
    let events = events
        .join()
        .expect("the events reader")
        .unwrap_or_else(|e| panic!("the pool's events stream failed: {e}"));
    PoolRun {
        plan: plan.clone(),
        move_ms,
        grow_ms,
        grow_from,
        events,
    }
}

/// Reads the pool's events on a thread until the stream ends (the pool stops).
fn follow(pool: &PoolDaemon) -> thread::JoinHandle<Result<Vec<PoolEvent>, String>> {
    let stream = pool
        .client()
        .events()
        .unwrap_or_else(|e| panic!("cannot follow the pool's events: {e}"));
    thread::spawn(move || {
        stream
            .map(|event| event.map_err(|e| e.to_string()))
            .collect()
    })
}

impl PoolRun {
    /// What is missing from the run: a move or an event it should have.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.move_ms.len() != self.plan.moves {
            problems.push(format!(
                "the pool: {} of {} moves timed",
                self.move_ms.len(),
                self.plan.moves
            ));
        }
        let moved = self
            .events
            .iter()
            .filter(|e| e.what == PoolChange::Moved)
            .count();
        // The moves and c's grow, which takes from one or two VMs.
        if moved < self.plan.moves + 1 {
            problems.push(format!(
                "the pool's events show {moved} moves, not {} or more",
                self.plan.moves + 1
            ));
        }
        if self.grow_from.is_empty() {
            problems.push("c's grow took from nobody".to_owned());
        }
        problems
    }

    /// The Markdown rows of the pool's figures, medians and ranges in milliseconds.
    pub fn table(&self) -> String {
        let moves = Summary::of(&self.move_ms).map_or_else(
            || "-".to_owned(),
            |s| format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max),
        );
        format!(
            "| pool (Tidal only), ms | median (range) |\n|---|---:|\n\
             | move {} between two guests: request → the receiver's guest has it ({} run{}) | {moves} |\n\
             | grow by {} past the free budget, taken from {} (1 run) | {:.0} |\n",
            format_size(self.plan.moved),
            self.move_ms.len(),
            if self.move_ms.len() == 1 { "" } else { "s" },
            format_size(self.plan.grow),
            self.grow_from.join(" and "),
            self.grow_ms,
        )
    }

    /// Draws each VM's share of the budget (what the pool says it holds after each event)
    /// over the run as an SVG at `path`.
    pub fn draw_plot(&self, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
        let first = self.events.first().ok_or("the pool told no events")?.at_ms;
        let seconds = |at_ms: u64| at_ms.saturating_sub(first) as f64 / 1e3;
        let end = self
            .events
            .last()
            .map_or(0.0, |e| seconds(e.at_ms))
            .max(1.0);
        let top = self.events.iter().map(|e| e.held).max().unwrap_or(0) as f64 / MIB as f64;
        let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Each VM's share of the pool's budget, from /pool/events",
                ("sans-serif", 20),
            )
            .margin(20)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..end, 0.0..top * 1.1)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("MiB held")
            .label_style(("sans-serif", 14))
            .draw()?;
        for &(name, priority, color) in &VMS {
            let mut points: Vec<(f64, f64)> = Vec::new();
            for event in self.events.iter().filter(|e| e.vm == name) {
                let at = seconds(event.at_ms);
                if let Some(&(_, held)) = points.last() {
                    points.push((at, held));
                }
                points.push((at, event.held as f64 / MIB as f64));
            }
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(format!("{name} (priority {priority})"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
        root.present()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, at_ms: u64, vm: &str, what: PoolChange, size: u64, held: u64) -> PoolEvent {
        PoolEvent {
            seq,
            at_ms,
            vm: vm.to_owned(),
            what,
            size,
            to: None,
            message: None,
            held,
            free: 0,
        }
    }

    /// A quick run as the pool might tell it: a grows, a GiB goes from a to b, c takes half a
    /// GiB from b.
    fn run() -> PoolRun {
        let t = 1_700_000_000_000;
        PoolRun {
            plan: PoolPlan::quick(),
            move_ms: vec![4200.0],
            grow_ms: 3100.0,
            grow_from: vec!["b".to_owned()],
            events: vec![
                event(1, t, "a", PoolChange::Registered, BOOT, BOOT),
                event(2, t + 10, "b", PoolChange::Registered, BOOT, BOOT),
                event(3, t + 20, "c", PoolChange::Registered, BOOT, BOOT),
                event(4, t + 500, "a", PoolChange::Committed, GIB, BOOT + GIB),
                event(5, t + 3000, "a", PoolChange::Moved, GIB, BOOT),
                event(6, t + 4000, "b", PoolChange::Committed, GIB, BOOT + GIB),
                event(7, t + 6000, "b", PoolChange::Moved, GIB / 2, BOOT + GIB / 2),
                event(
                    8,
                    t + 7000,
                    "c",
                    PoolChange::Committed,
                    GIB / 2,
                    BOOT + GIB / 2,
                ),
            ],
        }
    }

    #[test]
    fn a_complete_run_has_its_rows_and_no_problems() {
        let run = run();
        assert_eq!(run.problems(), Vec::<String>::new());
        let table = run.table();
        assert!(
            table.contains("| move 1 GiB between two guests: request → the receiver's guest has it (1 run) | 4200 (4200–4200) |"),
            "{table}"
        );
        assert!(
            table.contains("| grow by 512 MiB past the free budget, taken from b (1 run) | 3100 |"),
            "{table}"
        );
    }

    #[test]
    fn a_run_short_of_moves_says_so() {
        let mut run = run();
        run.move_ms.clear();
        run.events.retain(|e| e.what != PoolChange::Moved);
        run.grow_from.clear();
        assert_eq!(run.problems().len(), 3, "{:?}", run.problems());
    }

    #[test]
    fn plots_each_vms_share_as_svg() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("pool.svg");
        run().draw_plot(&path).expect("the plot is drawn");
        let svg = crate::bench::report::tests::svg_with(
            &path,
            &[
                "a (priority 0)",
                "b (priority 0)",
                "c (priority 1)",
                "MiB held",
            ],
        );
        // Each VM's line and its legend's mark, in its colour.
        for (name, _, RGBColor(r, g, b)) in VMS {
            let stroke = format!("stroke=\"#{r:02X}{g:02X}{b:02X}\"");
            assert_eq!(svg.matches(&stroke).count(), 2, "{name}: {stroke}");
        }
    }
}
