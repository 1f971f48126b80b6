//! `tidal-bench`: how fast Tidal boots Linux, how fast memory arrives and leaves, and whether
//! the host gets it back. Run it with `ci/bench.sh` (which uses the test host where /dev/kvm is
//! not hardware-backed); it prints a table of medians and writes every run as JSON.
//!
//! Figures, per run (one guest boot each):
//! - boot: tidal started → the guest's first userspace line;
//! - VMM RSS: tidal's resident memory outside guest RAM, right after boot;
//! - hot-add of 128 MiB, 1 GiB, 4 GiB: API call → 204 (the guest has onlined it and answered
//!   `_OST`), and the VMM's share: API call → the "inserting" event (memory mapped, slot added,
//!   guest interrupted);
//! - hot-remove of 1 GiB and 4 GiB, empty and half full: API call → DIMM gone, with the RSS
//!   that came back to the host.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tidal_api::{AddMemoryRequest, ApiClient, DimmState, HotplugEvent, RemoveMemoryRequest};
use tidal_tests::{Guest, RunningGuest};

const MIB: u64 = 1 << 20;

struct Options {
    runs: usize,
    quick: bool,
    json: Option<String>,
}

fn parse_args() -> Options {
    let mut options = Options {
        runs: 3,
        quick: false,
        json: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => {
                options.runs = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .unwrap_or_else(|| usage("--runs needs a positive number"))
            }
            "--quick" => options.quick = true,
            "--json" => {
                options.json = Some(args.next().unwrap_or_else(|| usage("--json needs a path")))
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if options.quick {
        options.runs = 1;
    }
    options
}

fn usage(problem: &str) -> ! {
    eprintln!("tidal-bench: {problem}\nusage: tidal-bench [--runs N] [--quick] [--json PATH]");
    std::process::exit(2)
}

/// One run's figures: name → value (milliseconds or MiB).
type Figures = BTreeMap<String, f64>;

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// tidal's resident memory in MiB: (inside guest RAM, outside it). Guest RAM is the big
/// anonymous mappings (boot RAM and DIMMs, at least 64 MiB each); the rest is the VMM's own.
fn rss_split(pid: u32) -> (f64, f64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut guest, mut own) = (0u64, 0u64);
    let mut mapping_size = 0u64;
    for line in smaps.lines() {
        if let Some(size) = line.strip_prefix("Size:") {
            mapping_size = kib(size);
        } else if let Some(rss) = line.strip_prefix("Rss:") {
            if mapping_size >= 64 * 1024 {
                guest += kib(rss);
            } else {
                own += kib(rss);
            }
        }
    }
    (guest as f64 / 1024.0, own as f64 / 1024.0)
}

fn kib(field: &str) -> u64 {
    field
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn total_rss_mib(pid: u32) -> f64 {
    let (guest, own) = rss_split(pid);
    guest + own
}

/// A booted guest with its API, and every hotplug event with the moment it arrived.
struct Bench {
    guest: RunningGuest,
    api: ApiClient,
    events: Arc<Mutex<Vec<(Instant, HotplugEvent)>>>,
    /// Holds the API socket; removed with the guest.
    _dir: tempfile::TempDir,
}

impl Bench {
    fn boot(hotplug: &str) -> Self {
        let dir = tempfile::tempdir().expect("create the socket directory");
        let socket = dir.path().join("api.sock");
        let guest = Guest::new()
            .cpus(2)
            .memory(format!("size=1G,hotplug_size={hotplug}"))
            .arg("--api-socket")
            .arg(&socket)
            .boot();
        let api = ApiClient::new(&socket);
        let events = Arc::new(Mutex::new(Vec::new()));
        let stream = api.events().expect("subscribe to events");
        let sink = events.clone();
        std::thread::spawn(move || {
            for event in stream.filter_map(Result::ok) {
                if let Ok(mut seen) = sink.lock() {
                    seen.push((Instant::now(), event));
                }
            }
        });
        Self {
            api,
            guest,
            events,
            _dir: dir,
        }
    }

    /// When the event for `id` entering `state` arrived, if it did after `since`.
    fn event_time(&self, id: &str, state: DimmState, since: Instant) -> Option<Instant> {
        self.events.lock().ok()?.iter().find_map(|(at, event)| {
            (*at >= since && event.id == id && event.new_state == state).then_some(*at)
        })
    }

    /// Plugs `size` bytes; returns (API call → 204, API call → "inserting" event) and the id.
    fn add(&mut self, size: u64) -> (Duration, Duration, String) {
        let start = Instant::now();
        let dimm = self
            .api
            .add_memory(&AddMemoryRequest { size, node: 0 })
            .unwrap_or_else(|e| {
                self.guest
                    .fail(&format!("hot-add of {size} bytes failed: {e}"))
            });
        let total = start.elapsed();
        let vmm = self
            .event_time(&dimm.id, DimmState::Inserting, start)
            .map_or(total, |at| at - start);
        (total, vmm, dimm.id)
    }

    fn remove(&mut self, id: &str) -> Duration {
        let start = Instant::now();
        if let Err(e) = self.api.remove_memory(&RemoveMemoryRequest {
            id: id.to_owned(),
            timeout_secs: Some(600),
        }) {
            self.guest.fail(&format!("hot-remove of {id} failed: {e}"));
        }
        start.elapsed()
    }

    /// Writes `mib` MiB of non-zero data into the guest's tmpfs.
    fn fill(&mut self, mib: u64) {
        self.guest.run_ok(&format!(
            "rm -f /tmp/fill; mount -o remount,size=95% /tmp; \
             yes 0123456789abcdef | head -c {} > /tmp/fill",
            mib * MIB
        ));
    }

    fn rss(&self) -> f64 {
        total_rss_mib(self.guest.pid())
    }
}

/// One run: boot, add and remove DIMMs of each size, empty and half full.
fn run_once(quick: bool) -> Figures {
    let mut figures = Figures::new();
    let mut bench = Bench::boot(if quick { "2G" } else { "12G" });
    let boot = bench.guest.boot_time().unwrap_or_default();
    figures.insert("boot_ms".into(), ms(boot));
    let (_, own) = rss_split(bench.guest.pid());
    figures.insert("vmm_rss_mib".into(), own);

    let add_sizes: &[u64] = if quick {
        &[128 * MIB]
    } else {
        &[128 * MIB, 1024 * MIB, 4096 * MIB]
    };
    let remove_sizes: &[u64] = if quick {
        &[128 * MIB]
    } else {
        &[1024 * MIB, 4096 * MIB]
    };
    for &size in add_sizes {
        let (total, vmm, id) = bench.add(size);
        let name = size_name(size);
        figures.insert(format!("add_{name}_ms"), ms(total));
        figures.insert(format!("add_{name}_vmm_ms"), ms(vmm));
        let removed = bench.remove(&id);
        if remove_sizes.contains(&size) {
            figures.insert(format!("remove_{name}_empty_ms"), ms(removed));
        }
    }
    for &size in remove_sizes {
        let name = size_name(size);
        let (_, _, id) = bench.add(size);
        // Half of the DIMM's worth of data: the guest spreads it over all its memory, and the
        // removal migrates whatever landed in the DIMM.
        bench.fill(size / MIB / 2);
        let before = bench.rss();
        let removed = bench.remove(&id);
        let after = bench.rss();
        figures.insert(format!("remove_{name}_half_ms"), ms(removed));
        figures.insert(
            format!("remove_{name}_half_rss_returned_mib"),
            before - after,
        );
        bench.guest.run_ok("rm -f /tmp/fill");
    }
    bench.guest.poweroff();
    figures
}

fn size_name(size: u64) -> String {
    if size >= 1024 * MIB {
        format!("{}g", size / (1024 * MIB))
    } else {
        format!("{}m", size / MIB)
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

fn main() {
    let options = parse_args();
    let mut runs = Vec::new();
    for run in 0..options.runs {
        eprintln!("tidal-bench: run {} of {}", run + 1, options.runs);
        runs.push(run_once(options.quick));
    }
    println!(
        "{:<36} {:>12} {:>12} {:>12}",
        "figure", "median", "min", "max"
    );
    for name in runs[0].keys() {
        let mut values: Vec<f64> = runs.iter().filter_map(|r| r.get(name).copied()).collect();
        let (min, max) = values
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        println!(
            "{name:<36} {:>12.1} {min:>12.1} {max:>12.1}",
            median(&mut values)
        );
    }
    if let Some(path) = options.json {
        let json = serde_json::to_string_pretty(&runs).expect("figures serialize");
        if let Err(e) = std::fs::write(&path, json) {
            eprintln!("tidal-bench: cannot write {path}: {e}");
            std::process::exit(1);
        }
    }
}
