//! A `tidal-pool` of the test's own (the `pool` crate's daemon, built beside `tidal`), with its
//! socket and state in a directory of the test's, for the pool's tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tidal_api::pool::{DesiredRam, MoveReport, MoveRequest, PoolClient, PoolView, Resized};
use tidal_api::{ApiClient, ClientError};

use crate::elastic::ElasticVm;
use crate::{tidal_binary, Guest};

/// How long a call to the pool may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// A move waits for two guests, one of which may be migrating data under emulation.
const MOVE_TIMEOUT: Duration = Duration::from_secs(900);
/// How long tidal-pool may take to end after SIGTERM, open event streams and all.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PoolDaemon {
    dir: PathBuf,
    child: Child,
}

impl PoolDaemon {
    /// Starts the daemon with its socket (`pool.sock`), state (`state/`) and log (`pool.log`)
    /// in `dir`, a budget of `budget`; waits until it answers.
    pub fn start(dir: &Path, budget: &str) -> Self {
        let child = Command::new(binary())
            .args(arguments(dir, budget))
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(dir.join("pool.log")).expect("the pool's log"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary().display()));
        let daemon = Self {
            dir: dir.to_owned(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while daemon.client().show().is_err() {
            assert!(
                Instant::now() < deadline,
                "tidal-pool did not serve its socket; its log:\n{}",
                daemon.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    /// Runs the daemon on `dir` with a budget of `budget` to see it refuse to start.
    pub fn refused(dir: &Path, budget: &str) -> Output {
        Command::new(binary())
            .args(arguments(dir, budget))
            .output()
            .expect("tidal-pool runs")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("pool.sock")
    }

    pub fn client(&self) -> PoolClient {
        PoolClient::new(self.socket(), CALL_TIMEOUT)
    }

    /// `PUT /pool/move`, waiting as long as the VMs' guests may take.
    pub fn move_memory(&self, request: &MoveRequest) -> Result<MoveReport, ClientError> {
        PoolClient::new(self.socket(), MOVE_TIMEOUT).move_memory(request)
    }

    /// `PUT /pool/vms/{name}`, waiting as a move does.
    pub fn set_ram(&self, name: &str, request: &DesiredRam) -> Result<Resized, ClientError> {
        PoolClient::new(self.socket(), MOVE_TIMEOUT).set_ram(name, request)
    }

    pub fn show(&self) -> PoolView {
        self.client()
            .show()
            .unwrap_or_else(|e| panic!("GET /pool: {e}"))
    }

    /// `METHOD PATH` with a JSON body, as any client might send it: the status and the body.
    pub fn call(&self, method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, String) {
        let body = body.map(|b| b.to_string().into_bytes());
        let answer = ApiClient::new(self.socket())
            .with_timeout(CALL_TIMEOUT)
            .send(method.parse().expect("an HTTP method"), path, body)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        (
            answer.status.as_u16(),
            String::from_utf8_lossy(&answer.body).into_owned(),
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pool.log")).unwrap_or_default()
    }

    /// Kills the daemon (SIGKILL): it leaves what it had on disk, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the daemon with SIGTERM; panics unless it ends with status 0.
    pub fn stop(mut self) {
        let status = crate::terminate(&mut self.child, STOP_TIMEOUT);
        assert!(
            status.is_some_and(|s| s.success()),
            "tidal-pool ended with {status:?} within {STOP_TIMEOUT:?} of SIGTERM\n{}",
            self.log()
        );
    }
}

impl Drop for PoolDaemon {
    /// Stops the daemon; after a failed test, first shows its log.
    fn drop(&mut self) {
        if thread::panicking() {
            crate::tell(&format!(
                "---- tidal-pool's log ----\n{}---- end ----",
                self.log()
            ));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    tidal_binary().with_file_name("tidal-pool")
}

fn arguments(dir: &Path, budget: &str) -> Vec<std::ffi::OsString> {
    vec![
        "--socket".into(),
        dir.join("pool.sock").into(),
        "--state-dir".into(),
        dir.join("state").into(),
        "--budget".into(),
        budget.into(),
    ]
}

/// A Tidal VM of 512 MiB boot RAM and a 2 GiB hotplug region in the pool on `socket`, as
/// `name` of priority `priority`.
pub fn pooled_vm(socket: &Path, name: &str, priority: i32) -> ElasticVm {
    let guest = Guest::new().arg("--pool").arg(format!(
        "socket={},name={name},priority={priority}",
        socket.display()
    ));
    ElasticVm::boot(guest, "size=512M,hotplug_size=2G")
}
