//! The host memory pool's daemon (`tidal-pool`, the `pool` crate) on its own, through its REST
//! API: what it promises never exceeds its budget, the loser of a race for the last bytes
//! hears what is free, a VM's process that ends gives back what it held, and the ledger
//! outlives the daemon. No guest: the VMs here are processes of the test's (`sleep`) that
//! register as a Tidal would; the pool knows a VM only by its pid and its word.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use tidal_api::pool::{PoolChange, PoolEvent};
use tidal_tests::pool::PoolDaemon;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A process standing for a VM; it ends when dropped.
struct VmProcess(Child);

impl VmProcess {
    fn start() -> Self {
        Self(
            Command::new("sleep")
                .arg("600")
                .spawn()
                .expect("sleep runs"),
        )
    }

    fn id(&self) -> u32 {
        self.0.id()
    }

    fn end(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        self.end();
    }
}

/// Registers VM `name`, process `pid`, with `boot` bytes of boot RAM: the status and body.
fn register(pool: &PoolDaemon, name: &str, pid: u32, boot: u64) -> (u16, String) {
    let registration = serde_json::json!({
        "name": name, "socket": format!("/run/{name}.sock"), "pid": pid,
        "min": boot, "max": 4 * GIB, "priority": 0, "boot": boot, "plugged": 0,
    });
    pool.call("POST", "/pool/vms", Some(registration))
}

#[test]
fn a_race_for_the_last_gib_has_one_winner_and_an_ended_vm_gives_back_what_it_held() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let pool = Arc::new(PoolDaemon::start(dir.path(), "3G"));
    let mut a = VmProcess::start();
    let mut b = VmProcess::start();
    assert_eq!(register(&pool, "a", a.id(), GIB).0, 204);
    assert_eq!(register(&pool, "b", b.id(), GIB).0, 204);
    // A third VM whose boot RAM does not fit in what is left is not registered.
    let mut c = VmProcess::start();
    let (status, body) = register(&pool, "c", c.id(), 2 * GIB);
    assert_eq!(status, 507, "{body}");
    assert!(
        body.contains("has 1024 MiB free of its budget of 3072 MiB"),
        "{body}"
    );
    c.end();

    // Both ask for the last GiB at once: one gets it, the other hears that nothing is free.
    let start = Arc::new(Barrier::new(2));
    let racers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let (pool, start) = (pool.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                let path = format!("/pool/vms/{name}/reserve");
                pool.call("PUT", &path, Some(serde_json::json!({ "size": GIB })))
            })
        })
        .collect();
    let mut answers: Vec<(u16, String)> = racers
        .into_iter()
        .map(|r| r.join().expect("a racer"))
        .collect();
    answers.sort();
    assert_eq!(answers[0].0, 204, "{answers:?}");
    assert_eq!(answers[1].0, 507, "{answers:?}");
    assert!(
        answers[1]
            .1
            .contains("has 0 MiB free of its budget of 3072 MiB")
            && answers[1].1.contains("asks for 1024 MiB"),
        "{answers:?}"
    );
    let shown = pool.show();
    assert_eq!((shown.held, shown.free), (3 * GIB, 0));

    // The winner's hot-add lands; then its process ends, and the pool gets all of it back.
    let winner = shown
        .vms
        .iter()
        .find(|vm| vm.reserved == GIB)
        .map(|vm| vm.name.clone())
        .expect("the winner has the GiB reserved");
    let (status, body) = pool.call(
        "PUT",
        &format!("/pool/vms/{winner}/commit"),
        Some(serde_json::json!({ "size": GIB })),
    );
    assert_eq!(status, 204, "{body}");
    if winner == "a" {
        a.end()
    } else {
        b.end()
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.show().free != 2 * GIB {
        assert!(
            Instant::now() < deadline,
            "an ended VM's memory never came back: {:?}",
            pool.show()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = pool.call(
        "PUT",
        &format!("/pool/vms/{winner}/reserve"),
        Some(serde_json::json!({ "size": GIB })),
    );
    assert_eq!(status, 404, "{body}");
}

#[test]
fn the_ledger_outlives_the_daemon() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut vm = VmProcess::start();
    let pool = PoolDaemon::start(dir.path(), "4G");
    assert_eq!(register(&pool, "a", vm.id(), GIB).0, 204);
    let (status, body) = pool.call(
        "PUT",
        "/pool/vms/a/reserve",
        Some(serde_json::json!({ "size": 2 * GIB })),
    );
    assert_eq!(status, 204, "{body}");
    let before = pool.show();
    pool.stop();

    // Restarted, it holds what it had promised, and a budget below that is refused.
    let pool = PoolDaemon::start(dir.path(), "4G");
    assert_eq!(pool.show(), before);
    pool.stop();
    let refused = PoolDaemon::refused(dir.path(), "2G");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("a budget of 2048 MiB is below the 3072 MiB the VMs hold"),
        "{stderr}"
    );
    vm.end();
}

/// `GET /metrics`, read by a Prometheus text parser, shows what `GET /pool` shows.
#[test]
fn the_metrics_show_what_the_pool_shows() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (a, b) = (VmProcess::start(), VmProcess::start());
    let pool = PoolDaemon::start(dir.path(), "4G");
    assert_eq!(register(&pool, "a", a.id(), GIB).0, 204);
    assert_eq!(register(&pool, "b", b.id(), 512 << 20).0, 204);
    let (status, body) = pool.call(
        "PUT",
        "/pool/vms/a/reserve",
        Some(serde_json::json!({ "size": GIB })),
    );
    assert_eq!(status, 204, "{body}");
    let (status, text) = pool.call("GET", "/metrics", None);
    assert_eq!(status, 200, "{text}");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("a Prometheus text");
    let value = |name: &str, vm: Option<&str>| -> u64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("vm") == vm)
            .unwrap_or_else(|| panic!("no {name} for {vm:?} in\n{text}"));
        match sample.value {
            // Byte counts below 2^53 are exact in the parser's f64, and print as whole numbers.
            prometheus_parse::Value::Gauge(v) => v.to_string().parse().expect("a whole number"),
            ref other => panic!("{name} is not a gauge: {other:?}"),
        }
    };
    let shown = pool.show();
    assert_eq!(value("tidal_pool_budget_bytes", None), shown.budget);
    assert_eq!(value("tidal_pool_held_bytes", None), shown.held);
    assert_eq!(value("tidal_pool_free_bytes", None), shown.free);
    for vm in &shown.vms {
        let name = Some(vm.name.as_str());
        assert_eq!(value("tidal_pool_vm_boot_bytes", name), vm.boot);
        assert_eq!(value("tidal_pool_vm_reserved_bytes", name), vm.reserved);
        assert_eq!(value("tidal_pool_vm_plugged_bytes", name), vm.plugged);
        assert_eq!(value("tidal_pool_vm_max_bytes", name), vm.max);
    }
    assert_eq!(shown.held, 5 * GIB / 2);
    pool.stop();
}

/// `GET /pool/events` streams each change with the VM's share and the free budget after it, a
/// refusal with its message, and an ended VM's release by the sweep.
#[test]
fn the_events_stream_tells_each_change_with_the_figures_after_it() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut a = VmProcess::start();
    let pool = PoolDaemon::start(dir.path(), "3G");
    let mut events = pool
        .client()
        .events()
        .expect("subscribe to the pool's events");
    assert_eq!(register(&pool, "a", a.id(), GIB).0, 204);
    for (claim, size) in [("reserve", GIB), ("commit", GIB), ("reserve", 2 * GIB)] {
        let body = serde_json::json!({ "size": size });
        pool.call("PUT", &format!("/pool/vms/a/{claim}"), Some(body));
    }
    a.end();
    let seen: Vec<PoolEvent> = events
        .by_ref()
        .take(5)
        .map(|e| e.expect("an event"))
        .collect();
    let figures: Vec<(u64, PoolChange, u64, u64, u64)> = seen
        .iter()
        .map(|e| (e.seq, e.what, e.size / MIB, e.held / MIB, e.free / MIB))
        .collect();
    assert_eq!(
        figures,
        [
            (1, PoolChange::Registered, 1024, 1024, 2048),
            (2, PoolChange::Reserved, 1024, 2048, 1024),
            (3, PoolChange::Committed, 1024, 2048, 1024),
            (4, PoolChange::Refused, 2048, 2048, 1024),
            (5, PoolChange::Ended, 2048, 0, 3072),
        ]
    );
    assert_eq!(
        seen[3].message.as_deref(),
        Some("the pool has 1024 MiB free of its budget of 3072 MiB; a asks for 2048 MiB")
    );
    assert!(seen.iter().all(|e| e.vm == "a" && e.at_ms > 0));
    pool.stop();
    assert!(
        events.next().is_none(),
        "the stream ends when the pool stops"
    );
}

/// Runs `tidalctl pool --socket SOCKET ARGS...`: its exit status, stdout and stderr.
fn tidalctl_pool(pool: &PoolDaemon, args: &[&str]) -> (i32, String, String) {
    let output = tidalctl()
        .arg("pool")
        .arg("--socket")
        .arg(pool.socket())
        .args(args)
        .output()
        .expect("tidalctl runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn tidalctl() -> Command {
    Command::new(tidal_tests::tidal_binary().with_file_name("tidalctl"))
}

#[test]
fn tidalctl_pool_shows_the_ledger_follows_its_events_and_says_a_refusal_in_one_line() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let a = VmProcess::start();
    let pool = PoolDaemon::start(dir.path(), "3G");
    let mut follower = tidalctl()
        .arg("pool")
        .arg("--socket")
        .arg(pool.socket())
        .arg("events")
        .stdout(Stdio::piped())
        .spawn()
        .expect("tidalctl pool events runs");
    let (lines, received) = mpsc::channel();
    let stdout = follower.stdout.take().expect("its stdout");
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // Registering again replaces the VM: register until the follower has subscribed and
    // shows a registration.
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        assert_eq!(register(&pool, "a", a.id(), GIB).0, 204);
        match received.recv_timeout(Duration::from_millis(300)) {
            Ok(line) => break line,
            Err(_) if Instant::now() < deadline => {}
            Err(e) => panic!("tidalctl pool events showed nothing within 10 s: {e}"),
        }
    };
    assert!(
        first.contains(" a registered with 1 GiB (holds 1 GiB, free 2 GiB)"),
        "{first}"
    );

    let reserve = serde_json::json!({ "size": GIB / 2 });
    assert_eq!(
        pool.call("PUT", "/pool/vms/a/reserve", Some(reserve)).0,
        204
    );
    let reserved = loop {
        let line = received
            .recv_timeout(Duration::from_secs(10))
            .expect("the reservation's line");
        if !line.contains(" registered ") {
            break line;
        }
    };
    assert!(
        reserved.contains(" a reserved 512 MiB (holds 1536 MiB, free 1536 MiB)"),
        "{reserved}"
    );

    let (status, shown, _) = tidalctl_pool(&pool, &["show"]);
    assert_eq!(status, 0);
    let shown: Vec<&str> = shown.lines().collect();
    assert_eq!(shown[0], "budget 3 GiB, held 1536 MiB, free 1536 MiB");
    let row: Vec<&str> = shown[2].split_whitespace().collect();
    assert_eq!(
        row[..8],
        ["a", "0", "1", "GiB", "0", "B", "512", "MiB"],
        "{shown:?}"
    );
    let (status, json, _) = tidalctl_pool(&pool, &["--json", "show"]);
    assert_eq!(status, 0);
    let view: tidal_api::pool::PoolView = serde_json::from_str(&json).expect("JSON of a PoolView");
    assert_eq!(view, pool.client().show().expect("GET /pool"));

    let (status, out, err) = tidalctl_pool(
        &pool,
        &["move", "--from", "a", "--to", "nobody", "--size", "1G"],
    );
    assert_eq!((status, out.as_str()), (1, ""), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("tidalctl: ") && err.contains("nobody"),
        "{err}"
    );

    pool.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    while follower.try_wait().expect("wait for tidalctl").is_none() {
        assert!(
            Instant::now() < deadline,
            "tidalctl pool events still runs 10 s after the pool stopped"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(follower.wait().expect("its status").success());
}
