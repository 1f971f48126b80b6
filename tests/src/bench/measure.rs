//! One run against one booted VMM, the same steps for each: boot figures; for each DIMM size
//! of the plan, a DIMM hot-added and removed empty, then two, the older kept empty and the
//! newer filled with the guest's data, a shrink by one of them and the filled one's removal,
//! watching the VMM's RSS; then the other DIMM sizes hot-added. A VMM that cannot remove
//! memory (Cloud Hypervisor) only hot-adds each size.
//!
//! "Online" and "MemTotal dropped" are judged the same way for every VMM: after the request,
//! a shell loop in the guest waits until `/proc/meminfo` shows it, and the time is taken when
//! that loop returns. Where the VMM's call already waited for the guest (Tidal), the loop
//! returns at its first check.

use std::fmt;
use std::ops::Range;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::figures::{Contents, Figure, Figures, Plan, RssPoint, Until};
use super::host::{self, Rss};
use super::vmm::{Vmm, VmmError, REMOVE_TIMEOUT};
use crate::{pattern_fill_command, RunningGuest, GROW_TMPFS};

/// How long the guest may take to write a fill of `bytes` (or remove it): under emulation a
/// first touch of hot-added memory runs at a few MB/s. No longer, so that a guest that hung
/// halfway is reported (and a quick run retried) well within ci/test.sh's time for a test.
fn fill_timeout(bytes: u64) -> Duration {
    Duration::from_secs(60 + 2 * (bytes >> 20))
}

/// The steps of a run, for the evidence of a failed one and for choosing where a run's guest
/// is made to crash ([`super::Crash`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Waiting for the guest's first userspace line.
    Boot,
    /// Asking the VMM its version, reading its RSS after boot.
    BootFigures,
    /// Hot-adding a DIMM of this many bytes until the guest's MemTotal shows it.
    HotAdd(u64),
    /// The guest writing half a DIMM of this size into its tmpfs.
    Fill(u64),
    /// Hot-removing a DIMM of this size until the guest's MemTotal has dropped.
    HotRemove { size: u64, contents: Contents },
    /// Shrinking by one of two DIMMs of this size, an empty and a filled one.
    Shrink(u64),
    /// Powering the guest off after a run.
    PowerOff,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Step::Boot => f.write_str("boot"),
            Step::BootFigures => f.write_str("version and RSS after boot"),
            Step::HotAdd(size) => write!(f, "hot-add {} MiB", size >> 20),
            Step::Fill(size) => write!(f, "fill the {} MiB DIMM", size >> 20),
            Step::HotRemove { size, contents } => write!(
                f,
                "hot-remove {} MiB {}",
                size >> 20,
                match contents {
                    Contents::Empty => "empty",
                    Contents::Filled => "filled",
                }
            ),
            Step::Shrink(size) => write!(f, "shrink by {} MiB", size >> 20),
            Step::PowerOff => f.write_str("power-off"),
        }
    }
}

/// The guest command that panics its kernel at once (SysRq `c`).
const CRASH_COMMAND: &str = "echo c > /proc/sysrq-trigger";

/// Where a run is: its step, since when, and the VMM's DIMMs as last seen. Kept by the caller,
/// so that it survives a harness panic in the middle of a step.
pub(super) struct Progress {
    pub step: Step,
    pub step_started: Instant,
    pub memory: Option<Value>,
    /// The step at whose start the guest is made to crash.
    crash_at: Option<Step>,
}

impl Progress {
    pub fn new(crash_at: Option<Step>) -> Self {
        Progress {
            step: Step::Boot,
            step_started: Instant::now(),
            memory: None,
            crash_at,
        }
    }

    /// Enters `step`: notes it, asks the VMM for its DIMMs (outside every timed span), and
    /// crashes the guest if this is the step chosen for it (once).
    pub fn enter(&mut self, vm: &mut dyn Vmm, step: Step) {
        self.step = step;
        self.step_started = Instant::now();
        if let Some(memory) = vm.memory_state() {
            self.memory = Some(memory);
        }
        if self.crash_at == Some(step) {
            self.crash_at = None;
            eprintln!("tidal-bench: crashing the guest on purpose at step \"{step}\"");
            vm.guest().send_line(CRASH_COMMAND);
        }
    }
}

/// Measures every figure of `plan` on the booted `vm`.
pub(super) fn run(
    vm: &mut dyn Vmm,
    plan: &Plan,
    progress: &mut Progress,
) -> Result<Figures, VmmError> {
    let mut figures = Figures::new();
    let boot = vm
        .guest()
        .boot_time()
        .expect("Guest::boot records the boot time");
    figures.insert(Figure::Boot, ms(boot));
    figures.insert(Figure::VmmOverhead, rss(vm)?.own_mib);
    if !vm.kind().removes_memory() {
        for &size in plan.removed.iter().chain(&plan.added_only) {
            progress.enter(vm, Step::HotAdd(size));
            add(vm, size, &mut figures)?;
        }
        return Ok(figures);
    }
    for &size in &plan.removed {
        // The guest RAM mapped before any DIMM of this round: a DIMM's own mapping is what
        // is new beside it (QEMU may map a DIMM where a removed one was, before the removed
        // one's mapping is gone).
        let baseline = rss(vm)?;
        // Empty: removed right after it came online.
        progress.enter(vm, Step::HotAdd(size));
        let id = add(vm, size, &mut figures)?;
        progress.enter(
            vm,
            Step::HotRemove {
                size,
                contents: Contents::Empty,
            },
        );
        record_removal(vm, &id, size, Contents::Empty, &mut figures)?;
        record_filled_removal(vm, size, &baseline, &mut figures, progress)?;
    }
    for &size in &plan.added_only {
        progress.enter(vm, Step::HotAdd(size));
        add(vm, size, &mut figures)?;
    }
    Ok(figures)
}

/// Adds two DIMMs of `size` bytes and lets the guest write half of one into its tmpfs while
/// the other, older one is offline (so the data lands in the newer DIMM and has to move out
/// before it can go). Then shrinks by one DIMM ([`Vmm::shrink_by`]: the older, empty one is the
/// cheapest) and removes the filled one, recording both removals, the VMM's RSS around them,
/// and how much of what was resident in the filled DIMM the host got back. The DIMMs' memory is
/// the guest RAM mapped since `baseline`.
fn record_filled_removal(
    vm: &mut dyn Vmm,
    size: u64,
    baseline: &Rss,
    figures: &mut Figures,
    progress: &mut Progress,
) -> Result<(), VmmError> {
    progress.enter(vm, Step::HotAdd(size));
    let before = rss(vm)?;
    // These adds were timed already, empty; their figures are not recorded twice.
    run_ok(
        vm.guest(),
        &format!("{MEMORY_BLOCKS} >/tmp/blocks.before"),
        BRIEF,
    )?;
    let idle = add(vm, size, &mut Figures::new())?;
    run_ok(vm.guest(), OFFLINE_NEW_BLOCKS, BRIEF)?;
    let id = add(vm, size, &mut Figures::new())?;
    progress.enter(vm, Step::Fill(size));
    let fill = Plan::fill(size);
    run_ok(
        vm.guest(),
        &format!(
            "{GROW_TMPFS} && {}",
            pattern_fill_command("/tmp/fill", fill)
        ),
        fill_timeout(fill),
    )?;
    run_ok(vm.guest(), ONLINE_IDLE_BLOCKS, BRIEF)?;
    progress.enter(vm, Step::Shrink(size));
    let (took, removed) = vm.shrink_by(size, &idle)?;
    if removed != idle {
        return Err(VmmError::Shrink(format!(
            "the shrink removed {removed}, the filled DIMM, not {idle}, the empty one"
        )));
    }
    figures.insert(Figure::ShrinkCheapest(size), ms(took));
    let filled = rss(vm)?;
    let dimm = filled.guest_ram_added_since(baseline);
    let dimm_resident = resident_kib(vm, &dimm)?;
    if dimm_resident == 0 {
        return Err(VmmError::DimmNotFound);
    }
    progress.enter(
        vm,
        Step::HotRemove {
            size,
            contents: Contents::Filled,
        },
    );
    record_removal(vm, &id, size, Contents::Filled, figures)?;
    let after = rss(vm)?;
    let returned = dimm_resident.saturating_sub(resident_kib(vm, &dimm)?);
    run_ok(vm.guest(), "rm -f /tmp/fill", fill_timeout(fill))?;
    let point = |point| Figure::Rss { size, point };
    figures.extend([
        (point(RssPoint::BeforeAdd), before.total_mib()),
        (point(RssPoint::AfterFill), filled.total_mib()),
        (point(RssPoint::AfterRemove), after.total_mib()),
        (point(RssPoint::DimmResident), dimm_resident as f64 / 1024.0),
        (
            point(RssPoint::DimmReturned),
            returned as f64 / dimm_resident as f64 * 100.0,
        ),
    ]);
    Ok(())
}

/// How long a guest command that only flips a few sysfs files may take.
const BRIEF: Duration = Duration::from_secs(120);
/// The guest's memory blocks, one name a line.
const MEMORY_BLOCKS: &str = "ls /sys/devices/system/memory | grep '^memory'";
/// Offlines the blocks that appeared since /tmp/blocks.before (the idle DIMM's), so that
/// nothing lands in them; notes them in /tmp/blocks.idle.
const OFFLINE_NEW_BLOCKS: &str = "ls /sys/devices/system/memory | grep '^memory' \
    | grep -vxFf /tmp/blocks.before >/tmp/blocks.idle && [ -s /tmp/blocks.idle ] \
    && for b in $(cat /tmp/blocks.idle); do echo 0 >/sys/devices/system/memory/$b/online; done";
/// Onlines the idle DIMM's blocks again, movable as every hot-added block.
const ONLINE_IDLE_BLOCKS: &str = "for b in $(cat /tmp/blocks.idle); do \
    echo online_movable >/sys/devices/system/memory/$b/state; done";

/// Hot-adds `size` bytes, waits until the guest's MemTotal shows them, records the time from
/// the request and the VMM's share of it in `figures`, and returns the DIMM's id.
fn add(vm: &mut dyn Vmm, size: u64, figures: &mut Figures) -> Result<String, VmmError> {
    let total = memtotal_kib(vm.guest());
    let start = Instant::now();
    let added = vm.add_dimm(size)?;
    wait_for_memtotal(vm.guest(), "-ge", total + memtotal_change_kib(size))?;
    figures.insert(Figure::HotAdd(size), ms(start.elapsed()));
    figures.insert(Figure::HotAddVmmShare(size), ms(added.vmm_share));
    Ok(added.id)
}

/// Hot-removes DIMM `id` of `size` bytes and records the time from the request until it was
/// gone and until the guest's MemTotal dropped.
fn record_removal(
    vm: &mut dyn Vmm,
    id: &str,
    size: u64,
    contents: Contents,
    figures: &mut Figures,
) -> Result<(), VmmError> {
    let total = memtotal_kib(vm.guest());
    let start = Instant::now();
    let gone = vm.remove_dimm(id)?;
    wait_for_memtotal(
        vm.guest(),
        "-le",
        total.saturating_sub(memtotal_change_kib(size)),
    )?;
    let dropped = start.elapsed();
    let removal = |until| Figure::HotRemove {
        size,
        contents,
        until,
    };
    figures.insert(removal(Until::Gone), ms(gone.duration_since(start)));
    figures.insert(removal(Until::MemTotal), ms(dropped));
    Ok(())
}

/// How much MemTotal moves (KiB, at least) when a DIMM of `size` bytes comes or goes: all of
/// it, unless the kernel keeps the DIMM's page structures on the DIMM itself
/// (`memory_hotplug.memmap_on_memory`: 64 bytes per 4 KiB page).
fn memtotal_change_kib(size: u64) -> u64 {
    let kib = size / 1024;
    kib - kib / 64
}

fn memtotal_kib(guest: &mut RunningGuest) -> u64 {
    guest.meminfo_kib("MemTotal")
}

/// Runs a loop in the guest until MemTotal (the first line of `/proc/meminfo`) compares to
/// `kib` as `test`'s `op` says. Cheap on purpose: shell builtins and a 10 ms sleep, so the
/// guest's own onlining or offlining keeps the vCPUs.
fn wait_for_memtotal(guest: &mut RunningGuest, op: &str, kib: u64) -> Result<(), VmmError> {
    run_ok(
        guest,
        &format!(
            "until read -r _ total _ </proc/meminfo; [ \"$total\" {op} {kib} ]; do sleep 0.01; \
             done"
        ),
        REMOVE_TIMEOUT,
    )
    .map(drop)
}

/// Runs `command` in the guest; a non-zero exit status is an error.
fn run_ok(guest: &mut RunningGuest, command: &str, timeout: Duration) -> Result<String, VmmError> {
    let output = guest.run_with_timeout(command, timeout);
    if output.success() {
        Ok(output.output)
    } else {
        Err(VmmError::Guest {
            command: command.to_owned(),
            status: output.status,
            output: output.output,
        })
    }
}

/// The VMM process's resident memory now.
fn rss(vm: &mut dyn Vmm) -> Result<Rss, VmmError> {
    Rss::of(vm.pid()?).map_err(VmmError::Smaps)
}

/// How many KiB of the VMM's `ranges` are resident now.
fn resident_kib(vm: &mut dyn Vmm, ranges: &[Range<u64>]) -> Result<u64, VmmError> {
    host::resident_kib(vm.pid()?, ranges).map_err(VmmError::Pagemap)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expects_the_whole_dimm_less_its_page_structures_at_most() {
        assert_eq!(memtotal_change_kib(1 << 30), 1_048_576 - 16_384);
        assert_eq!(memtotal_change_kib(128 << 20), 131_072 - 2048);
    }
}
