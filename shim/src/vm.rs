//! One container's Tidal process: started with the container's initramfs, its process's output
//! on COM2 (Tidal's stdout, which is containerd's stdout FIFO) and the kernel's console in a
//! file; driven through COM2's input (the init's `start` and `signal N` lines) and Tidal's API
//! (the memory).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use containerd_shim::monitor::{Subject, Topic};
use containerd_shim::synchronous::monitor::{monitor_subscribe, Subscription};
use thiserror::Error;
use tidal_api::{ApiClient, ResizeRequest};

use crate::guest_init::{self, INIT_PATH, READY_LINE, START_LINE};
use crate::options::RuntimeOptions;

/// The kernel's console file keeps at most this much (Tidal's `max=`).
const CONSOLE_LIMIT: &str = "1M";

/// How long a booting guest may take to reach its init.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// How long Tidal's API socket may take to appear.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

/// Seconds the guest may take to accept or give back each DIMM of a resize: under the
/// kubelet's 2-minute wait for a CRI call, so that a guest that cannot give memory back (what
/// it holds does not fit in the rest) gets Tidal's answer to the kubelet (the DIMM stays; a
/// retry of the same size goes on waiting) rather than the kubelet's own timeout.
const RESIZE_TIMEOUT_SECS: u64 = 100;

#[derive(Debug, Error)]
pub enum VmError {
    #[error("cannot create {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the container's stdout {path}: {source}")]
    Stdout {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the container's stdout {0} is a logging binary, which this runtime does not run")]
    LogBinary(String),
    #[error("cannot watch for Tidal's exit: {0}")]
    Monitor(containerd_shim::Error),
    #[error("cannot start {tidal}: {source}")]
    Spawn {
        tidal: PathBuf,
        source: std::io::Error,
    },
    #[error("the guest did not reach its init within {0:?} (its console: {1})")]
    BootTimeout(Duration, PathBuf),
    #[error(
        "Tidal exited with status {status} before the guest was ready: {last_line} (its log: \
         {log})"
    )]
    EarlyExit {
        status: i32,
        /// The log's last line: Tidal ends with the reason.
        last_line: String,
        log: PathBuf,
    },
    #[error("cannot tell the guest's init: {0}")]
    Control(std::io::Error),
    #[error("Tidal's API: {0}")]
    Api(#[from] tidal_api::ClientError),
}

/// Where one VM's files are: in the container's bundle, but for its API socket.
#[derive(Debug, Clone)]
pub struct VmFiles {
    pub initramfs: PathBuf,
    pub console: PathBuf,
    pub log: PathBuf,
    pub api_socket: PathBuf,
}

impl VmFiles {
    pub fn new(bundle: &Path, api_socket: PathBuf) -> Self {
        Self {
            initramfs: bundle.join("tidal-initramfs.cpio"),
            console: bundle.join("tidal-console.log"),
            log: bundle.join("tidal.log"),
            api_socket,
        }
    }
}

/// A running Tidal process.
pub struct TidalVm {
    child: Child,
    /// COM2's input: the init's control lines.
    control: ChildStdin,
    files: VmFiles,
}

/// Tidal's end, as the shim's reaper (which waits for every child) reports it.
pub struct ExitWatch {
    pid: i32,
    /// Unsubscribes when dropped.
    events: Subscription,
    console: PathBuf,
}

impl ExitWatch {
    /// Waits for Tidal to end and returns the container's exit status: what the init
    /// reported, or Tidal's own when the guest never said (128 + a signal's number for a
    /// killed Tidal).
    pub fn wait(self) -> u32 {
        let tidal_status = self.tidal_status(true).unwrap_or(255);
        let console = std::fs::read_to_string(&self.console).unwrap_or_default();
        guest_init::exit_status(&console)
            .unwrap_or_else(|| u32::try_from(tidal_status).unwrap_or(255))
    }

    /// Tidal's exit status once it has ended: waiting for it when `block`, else `None` while
    /// it runs; `None` too when the reaper is gone (the shim is ending).
    fn tidal_status(&self, block: bool) -> Option<i32> {
        loop {
            let event = if block {
                self.events.rx.recv().ok()?
            } else {
                self.events.rx.try_recv().ok()?
            };
            if matches!(event.subject, Subject::Pid(pid) if pid == self.pid) {
                return Some(event.exit_code);
            }
        }
    }
}

impl TidalVm {
    /// Starts Tidal with `boot_memory` of RAM and `options`' hotplug region, and waits until
    /// the guest's init is ready for `start`.
    pub fn boot(
        options: &RuntimeOptions,
        files: &VmFiles,
        boot_memory: u64,
        stdout: &str,
    ) -> Result<(Self, ExitWatch), VmError> {
        let created = |path: &Path| {
            let path = path.to_owned();
            move |source| VmError::File { path, source }
        };
        let log = File::create(&files.log).map_err(created(&files.log))?;
        let out = open_stdout(stdout)?;
        let mut command = Command::new(&options.tidal);
        command
            .arg("--kernel")
            .arg(&options.kernel)
            .arg("--initramfs")
            .arg(&files.initramfs)
            .arg("--cmdline")
            .arg(format!("console=ttyS0 quiet panic=1 rdinit=/{INIT_PATH}"))
            .arg("--cpus")
            .arg(options.cpus.to_string())
            .arg("--memory")
            .arg(format!(
                "size={boot_memory},hotplug_size={}",
                options.hotplug_size
            ))
            .arg("--serial")
            .arg(format!(
                "file={},max={CONSOLE_LIMIT}",
                files.console.display()
            ))
            .arg("--serial2")
            .arg("stdio")
            .arg("--api-socket")
            .arg(&files.api_socket)
            .arg("--log-level")
            .arg("info")
            .args(options.pool.iter().flat_map(|socket| {
                // Named for its API socket's file: the container's id.
                ["--pool".into(), format!("socket={}", socket.display())]
            }))
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(log);
        let subscription = monitor_subscribe(Topic::Pid).map_err(VmError::Monitor)?;
        let mut child = command.spawn().map_err(|source| VmError::Spawn {
            tidal: options.tidal.clone(),
            source,
        })?;
        let control = child.stdin.take().ok_or_else(|| {
            VmError::Control(std::io::Error::other("Tidal's stdin is not a pipe"))
        })?;
        let watch = ExitWatch {
            pid: i32::try_from(child.id()).unwrap_or(i32::MAX),
            events: subscription,
            console: files.console.clone(),
        };
        let mut vm = Self {
            child,
            control,
            files: files.clone(),
        };
        vm.wait_for_console(&watch, READY_LINE, BOOT_TIMEOUT)?;
        Ok((vm, watch))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lets the init start the container's process.
    pub fn start(&mut self) -> Result<(), VmError> {
        self.tell(START_LINE)
    }

    /// Has the init send `signal` to the container's process.
    pub fn signal(&mut self, signal: u32) -> Result<(), VmError> {
        self.tell(&format!("signal {signal}"))
    }

    /// Asks the init what the guest's memory is (`memory N`); it answers on the kernel's
    /// console, which [`memory_report`] reads.
    pub fn ask_memory(&mut self, request: u64) -> Result<(), VmError> {
        self.tell(&format!("memory {request}"))
    }

    /// Ends Tidal at once (SIGKILL): the container's status is then 137.
    pub fn kill(&mut self) {
        // An error means it has already gone.
        let _ = self.child.kill();
    }

    fn tell(&mut self, line: &str) -> Result<(), VmError> {
        writeln!(self.control, "{line}")
            .and_then(|()| self.control.flush())
            .map_err(VmError::Control)
    }

    /// Waits until the kernel's console shows `needle`.
    fn wait_for_console(
        &mut self,
        watch: &ExitWatch,
        needle: &str,
        timeout: Duration,
    ) -> Result<(), VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            let console = std::fs::read_to_string(&self.files.console).unwrap_or_default();
            if console.contains(needle) {
                return Ok(());
            }
            if let Some(status) = watch.tidal_status(false) {
                let log = std::fs::read_to_string(&self.files.log).unwrap_or_default();
                return Err(VmError::EarlyExit {
                    status,
                    last_line: log.lines().last().unwrap_or("nothing logged").to_owned(),
                    log: self.files.log.clone(),
                });
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(VmError::BootTimeout(timeout, self.files.console.clone()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The guest's `(MemTotal, MemAvailable)` in bytes, as the init answers `memory {request}` on
/// the kernel's console (the file `console`) within `timeout`; None if it does not.
pub fn memory_report(console: &Path, request: u64, timeout: Duration) -> Option<(u64, u64)> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(console).unwrap_or_default();
        if let Some(report) = guest_init::memory_report(&text, request) {
            return Some(report);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The VM's memory, through Tidal's API.
pub struct VmMemory {
    api: ApiClient,
}

impl VmMemory {
    pub fn new(files: &VmFiles) -> Self {
        Self {
            api: ApiClient::new(&files.api_socket),
        }
    }

    /// Resizes the guest to `bytes` and waits until it has answered every DIMM: Tidal's
    /// resize is exact or refused, and the same size again changes nothing.
    pub fn resize(&self, bytes: u64) -> Result<(), VmError> {
        self.wait_for_socket()?;
        self.api.resize(&ResizeRequest {
            desired_ram: Some(bytes),
            timeout_secs: Some(RESIZE_TIMEOUT_SECS),
            wait: true,
            ..ResizeRequest::default()
        })?;
        Ok(())
    }

    fn wait_for_socket(&self) -> Result<(), VmError> {
        let deadline = Instant::now() + SOCKET_TIMEOUT;
        loop {
            match self.api.ping() {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

/// Where the container's output goes, as containerd names it: nothing (no stdout), a
/// `file://` log file (appended to), or a FIFO containerd reads.
fn open_stdout(stdout: &str) -> Result<Stdio, VmError> {
    if stdout.is_empty() {
        return Ok(Stdio::null());
    }
    if stdout.starts_with("binary://") {
        return Err(VmError::LogBinary(stdout.to_owned()));
    }
    let (path, options) = match stdout.strip_prefix("file://") {
        Some(path) => (path, OpenOptions::new().append(true).create(true).clone()),
        None => (stdout, OpenOptions::new().write(true).clone()),
    };
    options
        .open(path)
        .map(Stdio::from)
        .map_err(|source| VmError::Stdout {
            path: path.into(),
            source,
        })
}
