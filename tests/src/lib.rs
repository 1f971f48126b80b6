//! Support code for Tidal's integration tests, in the manner of Cloud Hypervisor's `test_infra`:
//! a test boots a guest, runs shell commands in it and checks what it sees, in a few lines.
//!
//! ```no_run
//! use tidal_tests::Guest;
//!
//! let mut guest = Guest::new().cpus(4).memory("512M").boot();
//! assert_eq!(guest.nproc(), 4);
//! assert!(guest.poweroff().success());
//! ```
//!
//! How it works:
//! - [`Guest`] spawns the `tidal` binary ([`tidal_binary`]) with the guest kernel and busybox
//!   initramfs built by `resources/build-guest.sh` ([`GuestImages`]), its stdin piped and its
//!   stdout (the guest's serial console) collected by a thread into a shared console buffer.
//! - The guest's `/init` prints [`READY_LINE`] and then runs a shell on the serial console (input
//!   echo off); [`RunningGuest::run`] writes one command line wrapped in unique begin/end markers
//!   and parses the output and exit status between them.
//! - Every failure panics with the last console lines and the end of tidal's stderr.
//!
//! Booting Linux needs hardware-backed KVM: on machines whose `/dev/kvm` is KVM-PVM, the tests
//! that boot guests run inside the test host (`ci/test.sh` does that, through `ci/testhost.sh`).
//! [`Guest::boot`] refuses to run otherwise rather than wait for a boot that cannot finish.
//! Tests of the command line alone ([`run_tidal`]) need no KVM at all.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

pub mod bench;
pub mod containerd;
pub mod cri;
pub mod elastic;
pub mod pool;
pub mod threads;

/// The one line the guest's `/init` prints when userspace is up.
pub const READY_LINE: &str = "TIDAL-GUEST-READY";

/// The kernel command line [`Guest`] passes unless told otherwise: tidal's own default (serial
/// console, reboot through the ACPI reset register, a guest panic ends the VM after a second)
/// plus `quiet` (every console byte is a VM exit). Tidal appends what the machine needs
/// (`pci=off`).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 quiet reboot=acpi panic=1";

/// How long [`Guest::boot`] waits for [`READY_LINE`] by default (the environment variable
/// `TIDAL_TEST_BOOT_TIMEOUT`, in seconds, overrides it). A nested boot in the test host takes
/// 4 to 15 s; one that has not finished in a minute has hung (ci/test.sh retries it), and
/// waiting longer only costs CI time.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`RunningGuest::run`] waits for a command by default.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long [`RunningGuest::poweroff`] and [`RunningGuest::reboot`] wait for tidal to exit.
pub const DEFAULT_EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Console lines quoted in failure messages.
const TAIL_LINES: usize = 40;
/// Lines of tidal's stderr quoted in failure messages.
const STDERR_TAIL_LINES: usize = 20;

// ------------------------------------------------------------------------------------------------
// Where things are

/// The cache directory of `resources/build-guest.sh`: `$TIDAL_CACHE`, else `$HOME/.cache/tidal`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TIDAL_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| OsString::from("/root"));
    Path::new(&home).join(".cache/tidal")
}

/// The guest kernel and initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImages {
    /// The kernel guests boot: the uncompressed ELF vmlinux, started through PVH.
    pub kernel: PathBuf,
    /// The same kernel as the bzImage it came in, started through the 64-bit boot protocol.
    pub bzimage: PathBuf,
    /// The busybox initramfs whose `/init` speaks the [`READY_LINE`] protocol.
    pub initramfs: PathBuf,
}

impl GuestImages {
    /// Finds the images: `$TIDAL_KERNEL`, `$TIDAL_BZIMAGE` and `$TIDAL_INITRAMFS` when set,
    /// else `VMLINUX=`, `KERNEL=` and `INITRAMFS=` from `guest.env` in [`cache_dir`].
    pub fn try_find() -> Result<Self, String> {
        let env_file = cache_dir().join("guest.env");
        let from_file = std::fs::read_to_string(&env_file)
            .map(|text| parse_env_file(&text))
            .unwrap_or_default();
        let pick = |var: &str, key: &str| -> Result<PathBuf, String> {
            let path = std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| from_file.get(key).map(PathBuf::from))
                .ok_or_else(|| {
                    format!(
                        "no guest {key}: set {var}, or run resources/build-guest.sh (it writes {})",
                        env_file.display()
                    )
                })?;
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!(
                    "guest {key} {} does not exist: run resources/build-guest.sh",
                    path.display()
                ))
            }
        };
        Ok(GuestImages {
            kernel: pick("TIDAL_KERNEL", "VMLINUX")?,
            bzimage: pick("TIDAL_BZIMAGE", "KERNEL")?,
            initramfs: pick("TIDAL_INITRAMFS", "INITRAMFS")?,
        })
    }

    /// Like [`GuestImages::try_find`], but panics with the reason.
    pub fn find() -> Self {
        Self::try_find().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Parses `KEY=VALUE` lines (no quoting; `#` comments and blank lines skipped).
fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The `tidal` binary: `$TIDAL_BIN`, else `tidal` in the Cargo target directory this test
/// executable was built in (same profile first, then release, then debug).
pub fn tidal_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("TIDAL_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("cannot find the path of the test executable");
    // Test executables live in target/<profile>/deps/.
    let profile_dir = exe.parent().and_then(Path::parent);
    let target_dir = profile_dir.and_then(Path::parent);
    let mut candidates = Vec::new();
    if let Some(dir) = profile_dir {
        candidates.push(dir.join("tidal"));
    }
    if let Some(dir) = target_dir {
        candidates.push(dir.join("release/tidal"));
        candidates.push(dir.join("debug/tidal"));
    }
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "the tidal binary was not found (looked at {candidates:?}): build it with \
                 `cargo build --release -p tidal-vmm`, or set TIDAL_BIN"
            )
        })
}

/// What backs `/dev/kvm` on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// `kvm_amd` or `kvm_intel`: Linux guests boot in seconds.
    Hardware,
    /// KVM-PVM, a software backend: fine for tiny guests, far too slow to boot Linux.
    Pvm,
    /// No usable `/dev/kvm`.
    None,
}

/// Tells what backs `/dev/kvm` (the same answer as `ci/kvm-kind.sh`).
pub fn kvm_kind() -> KvmKind {
    let module = |name: &str| Path::new("/sys/module").join(name).is_dir();
    if module("kvm_amd") || module("kvm_intel") {
        KvmKind::Hardware
    } else if module("kvm_pvm") && Path::new("/dev/kvm").exists() {
        KvmKind::Pvm
    } else {
        KvmKind::None
    }
}

/// Whether this process runs inside the test host (`ci/testhost.sh` sets `TIDAL_IN_TESTHOST=1`).
pub fn in_testhost() -> bool {
    std::env::var_os("TIDAL_IN_TESTHOST").is_some_and(|v| !v.is_empty() && v != "0")
}

/// Panics unless Linux guests can boot here: hardware-backed KVM (directly, or inside the test
/// host). Never lets a guest-booting test pass silently, or wait for a boot that cannot finish.
pub fn require_kvm_for_linux_guests() {
    match (kvm_kind(), in_testhost()) {
        (KvmKind::Hardware, _) => {}
        (kind, false) => panic!(
            "\n\n*** This test boots a Linux guest, which needs hardware-backed KVM, but /dev/kvm \
             here is {kind:?}. ***\n*** Integration tests must be run through ci/test.sh, which \
             runs them inside the test host (ci/testhost.sh). ***\n\n"
        ),
        (kind, true) => panic!(
            "TIDAL_IN_TESTHOST is set but /dev/kvm is {kind:?}, not hardware-backed: the test \
             host did not load kvm_amd"
        ),
    }
}

// ------------------------------------------------------------------------------------------------
// The console: bytes collected by a reader thread, waited on by the test

#[derive(Default)]
struct StreamState {
    bytes: Vec<u8>,
    closed: bool,
    /// The reader thread reads nothing while set: the writer's pipe fills and its writes block,
    /// as with a reader that stalled.
    paused: bool,
}

/// A growing byte buffer fed by one reader thread.
#[derive(Clone, Default)]
struct Stream {
    inner: Arc<(Mutex<StreamState>, Condvar)>,
}

/// Why a wait on a [`Stream`] ended without its condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitError {
    Timeout,
    Closed,
}

impl Stream {
    fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.inner.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a thread that appends everything `source` yields, and marks the end of it.
    /// With `echo_prefix`, each chunk also goes to this process's stderr as it comes.
    fn collect_from(
        &self,
        mut source: impl Read + Send + 'static,
        echo_prefix: Option<&'static str>,
    ) {
        let stream = self.clone();
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                stream.wait_while_paused();
                match source.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Some(prefix) = echo_prefix {
                            eprint!("{prefix}{}", String::from_utf8_lossy(&chunk[..n]));
                        }
                        stream.lock().bytes.extend_from_slice(&chunk[..n]);
                        stream.inner.1.notify_all();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
            stream.lock().closed = true;
            stream.inner.1.notify_all();
        });
    }

    /// Calls `check` on the bytes until it returns `Some`, the stream ends, or `deadline` passes.
    fn wait_until<T>(
        &self,
        deadline: Instant,
        mut check: impl FnMut(&[u8]) -> Option<T>,
    ) -> Result<T, WaitError> {
        let mut state = self.lock();
        loop {
            if let Some(found) = check(&state.bytes) {
                return Ok(found);
            }
            if state.closed {
                return Err(WaitError::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitError::Timeout);
            }
            state = self
                .inner
                .1
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().bytes).into_owned()
    }

    fn set_paused(&self, paused: bool) {
        self.lock().paused = paused;
        self.inner.1.notify_all();
    }

    fn wait_while_paused(&self) {
        let mut state = self.lock();
        while state.paused {
            state = self
                .inner
                .1
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn len(&self) -> usize {
        self.lock().bytes.len()
    }
}

/// The position of `needle` in `haystack` at or after `from`.
fn find_bytes(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() {
        return Some(from.min(haystack.len()));
    }
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// The last `n` lines of `text`, carriage returns removed.
pub(crate) fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| l.replace('\r', ""))
        .collect::<Vec<_>>()
        .join("\n")
}

// ------------------------------------------------------------------------------------------------
// The guest

/// How to boot a guest under Tidal; [`Guest::boot`] starts it.
#[derive(Debug, Clone)]
pub struct Guest {
    binary: Option<PathBuf>,
    cpus: u32,
    memory: String,
    cmdline: String,
    cmdline_extra: Vec<String>,
    kernel: Option<PathBuf>,
    initramfs: Option<PathBuf>,
    serial: String,
    extra_args: Vec<OsString>,
    boot_timeout: Duration,
}

impl Default for Guest {
    fn default() -> Self {
        Self::new()
    }
}

impl Guest {
    /// One vCPU, 512 MiB, [`DEFAULT_CMDLINE`], the images of [`GuestImages::find`], the boot
    /// timeout of [`DEFAULT_BOOT_TIMEOUT`].
    pub fn new() -> Self {
        Guest {
            binary: None,
            cpus: 1,
            memory: "512M".to_owned(),
            cmdline: DEFAULT_CMDLINE.to_owned(),
            cmdline_extra: Vec::new(),
            kernel: None,
            initramfs: None,
            serial: "stdio".to_owned(),
            extra_args: Vec::new(),
            boot_timeout: std::env::var("TIDAL_TEST_BOOT_TIMEOUT")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .map_or(DEFAULT_BOOT_TIMEOUT, Duration::from_secs),
        }
    }

    /// Runs this program instead of [`tidal_binary`]: anything that takes tidal's command line,
    /// such as `ci/qemu-as-tidal.sh`, the benchmark's reference VMM.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Number of vCPUs (`--cpus`).
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Guest memory: a size such as `"512M"` (passed as `--memory size=512M`), or a whole
    /// `key=value,...` option (anything containing `=`) passed unchanged.
    pub fn memory(mut self, memory: impl Into<String>) -> Self {
        self.memory = memory.into();
        self
    }

    /// Replaces the whole kernel command line.
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.cmdline = cmdline.into();
        self
    }

    /// Appends to the kernel command line.
    pub fn cmdline_extra(mut self, extra: impl Into<String>) -> Self {
        self.cmdline_extra.push(extra.into());
        self
    }

    /// Boots this kernel instead of the built guest kernel.
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Self {
        self.kernel = Some(path.into());
        self
    }

    /// Loads this initramfs instead of the built one.
    pub fn initramfs(mut self, path: impl Into<PathBuf>) -> Self {
        self.initramfs = Some(path.into());
        self
    }

    /// Adds an argument to tidal's command line.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.extra_args.push(arg.as_ref().to_owned());
        self
    }

    /// How long [`Guest::boot`] waits for [`READY_LINE`].
    pub fn boot_timeout(mut self, timeout: Duration) -> Self {
        self.boot_timeout = timeout;
        self
    }

    /// tidal's `--serial` (default `stdio`, which the shell commands of [`RunningGuest::run`]
    /// need; with any other the console stays empty).
    pub fn serial(mut self, serial: impl Into<String>) -> Self {
        self.serial = serial.into();
        self
    }

    /// The full kernel command line.
    pub fn full_cmdline(&self) -> String {
        std::iter::once(self.cmdline.as_str())
            .chain(self.cmdline_extra.iter().map(String::as_str))
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The `tidal` command this guest runs as (not yet spawned; stdio not set up).
    pub fn command(&self) -> Command {
        let mut command = Command::new(self.binary.clone().unwrap_or_else(tidal_binary));
        command.args(self.args());
        command
    }

    /// tidal's arguments for this guest.
    pub fn args(&self) -> Vec<OsString> {
        let (kernel, initramfs) = match (&self.kernel, &self.initramfs) {
            (Some(k), Some(i)) => (k.clone(), i.clone()),
            _ => {
                let images = GuestImages::find();
                (
                    self.kernel.clone().unwrap_or(images.kernel),
                    self.initramfs.clone().unwrap_or(images.initramfs),
                )
            }
        };
        let memory = if self.memory.contains('=') {
            self.memory.clone()
        } else {
            format!("size={}", self.memory)
        };
        let mut args: Vec<OsString> = vec![
            "--kernel".into(),
            kernel.into(),
            "--initramfs".into(),
            initramfs.into(),
            "--cmdline".into(),
            self.full_cmdline().into(),
            "--cpus".into(),
            self.cpus.to_string().into(),
            "--memory".into(),
            memory.into(),
            "--serial".into(),
            self.serial.clone().into(),
        ];
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// Starts tidal without waiting for the guest (checks for KVM first, like [`Guest::boot`]).
    pub fn spawn(self) -> RunningGuest {
        require_kvm_for_linux_guests();
        self.spawn_unchecked()
    }

    /// [`Guest::spawn`] without the check for hardware-backed KVM: for tests that stop tidal
    /// while its guest boots and never wait for the guest, which also run where `/dev/kvm` is
    /// KVM-PVM (there Linux boots for minutes, but tidal itself runs).
    pub fn spawn_unchecked(self) -> RunningGuest {
        tell_panics();
        let mut command = self.command();
        let description = format!("{command:?}");
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {description}: {e}"));
        let echo = std::env::var_os("TIDAL_TEST_ECHO_CONSOLE").is_some_and(|v| v != "0");
        let console = Stream::default();
        let stderr = Stream::default();
        // The reader threads end by themselves when tidal closes its output.
        if let Some(out) = child.stdout.take() {
            console.collect_from(out, echo.then_some(""));
        }
        if let Some(err) = child.stderr.take() {
            stderr.collect_from(err, echo.then_some("[tidal stderr] "));
        }
        RunningGuest::new(child, console, stderr, description, self.boot_timeout)
    }

    /// Starts tidal and waits until the guest prints [`READY_LINE`]; panics (with the console
    /// tail) when it does not within the boot timeout or tidal exits first.
    pub fn boot(self) -> RunningGuest {
        let mut guest = self.spawn();
        guest.wait_until_booted();
        guest
    }
}

/// What a command run in the guest printed, and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Standard output and standard error together (one serial console), `\r\n` turned to `\n`,
    /// trailing newlines removed (as by shell command substitution).
    pub output: String,
    /// The shell's `$?`.
    pub status: i32,
}

impl CommandOutput {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// Numbers the markers of every command of this process, so none can match an earlier one.
static COMMAND_SEQ: AtomicU64 = AtomicU64::new(1);

/// A running tidal with its guest. Dropping it kills a tidal that is still running.
/// Steps that take at least this long are noted in the test's output
/// ([`RunningGuest::note_if_slow`]).
const SLOW_STEP: Duration = Duration::from_secs(1);

pub struct RunningGuest {
    child: Child,
    stdin: Option<ChildStdin>,
    console: Stream,
    stderr: Stream,
    /// Console offset where the next [`RunningGuest::wait_for`] starts looking.
    cursor: usize,
    started: Instant,
    boot_time: Option<Duration>,
    description: String,
    boot_timeout: Duration,
    exit_status: Option<ExitStatus>,
}

impl RunningGuest {
    /// Wraps a spawned child whose stdout and stderr are already being collected.
    fn new(
        mut child: Child,
        console: Stream,
        stderr: Stream,
        description: String,
        boot_timeout: Duration,
    ) -> Self {
        RunningGuest {
            stdin: child.stdin.take(),
            child,
            console,
            stderr,
            cursor: 0,
            started: Instant::now(),
            boot_time: None,
            description,
            boot_timeout,
            exit_status: None,
        }
    }

    /// Waits until the guest prints [`READY_LINE`] and records the boot time; panics (with the
    /// console tail) when it does not within the boot timeout or tidal exits first.
    pub fn wait_until_booted(&mut self) {
        self.wait_for(READY_LINE, self.boot_timeout);
        let boot_time = self.started.elapsed();
        self.boot_time = Some(boot_time);
        println!("tidal-tests: {READY_LINE} after {boot_time:.2?}");
    }

    /// Time since tidal was spawned.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Prints a line for a step (`what`) that took `took`, if that was a second or more: a failed
    /// test's output then shows where its time went.
    pub fn note_if_slow(&self, what: &str, took: Duration) {
        if took >= SLOW_STEP {
            let what: String = what.chars().take(70).collect();
            println!(
                "tidal-tests: at {:.1?}: {what:?} took {took:.1?}",
                self.started.elapsed()
            );
        }
    }

    /// Time from spawning tidal to [`READY_LINE`] (set by [`Guest::boot`]).
    pub fn boot_time(&self) -> Option<Duration> {
        self.boot_time
    }

    /// tidal's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the guest console printed so far.
    pub fn console(&self) -> String {
        self.console.text()
    }

    /// Everything tidal printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// The last `n` console lines.
    pub fn console_tail(&self, n: usize) -> String {
        tail_lines(&self.console.text(), n)
    }

    /// Says so ([`report_triple_fault`]) when tidal logged that the guest died of a triple
    /// fault: the failure may come from an assertion that never shows tidal's log.
    pub fn report_triple_fault(&self) {
        let stderr = self.stderr.text();
        let Some(fault) = stderr.lines().find(|line| line.contains("triple fault")) else {
            return;
        };
        // Where the DIMMs were tells a crash during a hot-remove from one anywhere else.
        match self.dimms_at_the_end() {
            Some(dimms) => report_triple_fault(&format!("{fault} | {dimms}")),
            None => report_triple_fault(fault),
        }
    }

    /// tidal's line listing the DIMMs' states, which it logs when a reset, a guest panic or a
    /// failure ends the VM.
    pub fn dimms_at_the_end(&self) -> Option<String> {
        self.stderr
            .text()
            .lines()
            .find(|line| line.contains(DIMMS_AT_THE_END))
            .map(str::to_owned)
    }

    /// Why the guest did not answer, in a few lines: whether a newline on its input makes its
    /// console go on (Linux's 8250 driver also transmits from the receive interrupt, so output
    /// that resumes then had lost a transmit interrupt: a serial emulation bug), and what tidal's
    /// vCPU threads were doing meanwhile. A console that stopped halfway (`stopped_halfway`:
    /// through a command's output or a line, see [`stopped_halfway`] and [`line_cut_off`]; a
    /// command or a boot that is merely slow stops at a line's end) in a guest that
    /// stays silent while no vCPU thread waits on a lock in tidal gets a line of its own that
    /// ci/test.sh looks for: under nested emulation guests hang at random (docs/testing.md).
    fn diagnose_silence(&mut self, stopped_halfway: bool) -> String {
        let pid = self.child.id();
        let before = threads::sample(pid);
        let console_len = self.console.len();
        let probe_start = Instant::now();
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(b"\n").and_then(|()| stdin.flush());
        }
        let answered = self
            .console
            .wait_until(probe_start + SILENCE_PROBE, |bytes| {
                (bytes.len() > console_len).then_some(())
            })
            .is_ok();
        // The wait ends early when the console answers: sample over the whole probe anyway.
        thread::sleep(SILENCE_PROBE.saturating_sub(probe_start.elapsed()));
        let after = threads::sample(pid);
        let mut report = String::from("---- why the guest is silent ----\n");
        for thread in after.iter().filter(|t| t.is_vcpu()) {
            let used = before
                .iter()
                .find(|b| b.tid == thread.tid)
                .map(|b| thread.cpu_ticks.saturating_sub(b.cpu_ticks));
            let _ = writeln!(
                report,
                "  {} (thread {}): {}, {} ticks of CPU over the probe",
                thread.name,
                thread.tid,
                thread.place(),
                used.map_or("?".to_owned(), |t| t.to_string())
            );
        }
        let vcpus_free = after.iter().any(|t| t.is_vcpu())
            && !after.iter().any(|t| t.is_vcpu() && t.waits_on_a_lock());
        if answered {
            report.push_str(
                "  the console went on after a newline was sent to the guest: the command \
                 ended just then, or the guest's serial transmitter had stalled (a lost \
                 transmit interrupt)\n",
            );
        } else {
            let _ = writeln!(
                report,
                "  a newline sent to the guest got no output within {SILENCE_PROBE:?}"
            );
            if vcpus_free && stopped_halfway {
                tell(&format!(
                    "{SILENT_GUEST_MARKER} its output stopped halfway through a command or a \
                     line, a newline got no answer, no vCPU thread waits on a lock in tidal"
                ));
            }
        }
        report
    }

    /// Panics with `message`, the console tail and the end of tidal's stderr.
    pub fn fail(&self, message: &str) -> ! {
        let mut report = format!("{message}\n  tidal: {}\n", self.description);
        let _ = write!(
            report,
            "---- last {TAIL_LINES} console lines ----\n{}\n",
            self.console_tail(TAIL_LINES)
        );
        let stderr = self.stderr.text();
        if !stderr.trim().is_empty() {
            let _ = write!(
                report,
                "---- tidal stderr, last {STDERR_TAIL_LINES} lines ----\n{}\n",
                tail_lines(&stderr, STDERR_TAIL_LINES)
            );
        }
        report.push_str("---- end ----");
        panic!("{report}");
    }

    /// Waits until the console shows `needle` after everything matched so far; panics when it
    /// does not within `timeout` or tidal exits first, saying why the guest is silent (a boot
    /// that never reached [`READY_LINE`] is one ci/test.sh retries).
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let from = self.cursor;
        let result = self.console.wait_until(Instant::now() + timeout, |bytes| {
            find_bytes(bytes, needle.as_bytes(), from)
        });
        match result {
            Ok(at) => self.cursor = at + needle.len(),
            Err(WaitError::Timeout) => {
                // A boot takes seconds; one still short of the ready line after the boot
                // timeout has stopped, wherever its last line ended.
                let unfinished_boot = needle == READY_LINE && self.boot_time.is_none();
                let stopped_halfway = unfinished_boot || line_cut_off(&self.console.lock().bytes);
                let diagnosis = self.diagnose_silence(stopped_halfway);
                self.fail(&format!(
                    "timed out after {timeout:?} waiting for {needle:?} on the guest console\n\
                     {diagnosis}"
                ))
            }
            Err(WaitError::Closed) => {
                let status = self.wait_exit(Duration::from_secs(5));
                self.fail(&format!(
                    "tidal closed the console (exit status {status:?}) before {needle:?} appeared"
                ))
            }
        }
    }

    /// Stops reading tidal's stdout, as a console reader that stalled: the pipe fills and
    /// tidal's writes to it block. [`RunningGuest::resume_console`] (or the end of the guest)
    /// reads on.
    pub fn stall_console(&self) {
        self.console.set_paused(true);
    }

    /// Reads tidal's stdout again after [`RunningGuest::stall_console`].
    pub fn resume_console(&self) {
        self.console.set_paused(false);
    }

    /// Waits until tidal's stderr shows `needle`; panics when it does not within `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let found = self.stderr.wait_until(Instant::now() + timeout, |bytes| {
            find_bytes(bytes, needle.as_bytes(), 0)
        });
        if let Err(why) = found {
            self.fail(&format!(
                "tidal's log did not show {needle:?} ({why:?} after {timeout:?})"
            ));
        }
    }

    /// Writes one line to the guest console (tidal's stdin).
    pub fn send_line(&mut self, line: &str) {
        let written = match self.stdin.as_mut() {
            Some(stdin) => stdin
                .write_all(format!("{line}\n").as_bytes())
                .and_then(|()| stdin.flush()),
            None => Err(std::io::Error::other("stdin already closed")),
        };
        if let Err(e) = written {
            self.fail(&format!("cannot write {line:?} to tidal's stdin: {e}"));
        }
    }

    /// Runs `command` in the guest shell, waiting up to [`DEFAULT_COMMAND_TIMEOUT`].
    pub fn run(&mut self, command: &str) -> CommandOutput {
        self.run_with_timeout(command, DEFAULT_COMMAND_TIMEOUT)
    }

    /// Runs `command` (one shell command line) in the guest and returns what it printed and its
    /// exit status; panics when it does not finish within `timeout`.
    pub fn run_with_timeout(&mut self, command: &str, timeout: Duration) -> CommandOutput {
        let seq = COMMAND_SEQ.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}_{seq}", std::process::id());
        let begin = format!("__TIDAL_B_{tag}__");
        let end = format!("__TIDAL_E_{tag}__ ");
        // The markers are spelled with an empty quoted string inside ("__TI""DAL_..."), so an
        // echo of the command line itself can never match them. The bare `echo` puts the end
        // marker on a line of its own even when the output does not end in a newline.
        let line = format!(
            "echo \"__TI\"\"DAL_B_{tag}__\"; {command}\n__tidal_rc=$?; echo; \
             echo \"__TI\"\"DAL_E_{tag}__ $__tidal_rc\""
        );
        let from = self.console.len();
        self.send_line(&line);
        let sent = Instant::now();
        let deadline = sent + timeout;
        let result = self.console.wait_until(deadline, |bytes| {
            let b = find_bytes(bytes, begin.as_bytes(), from)?;
            let body_start = find_bytes(bytes, b"\n", b)? + 1;
            let e = find_bytes(bytes, end.as_bytes(), body_start)?;
            let status_end = find_bytes(bytes, b"\n", e)?;
            Some((body_start, e, status_end))
        });
        let (body_start, e, status_end) = match result {
            Ok(found) => found,
            Err(WaitError::Timeout) => {
                let stopped_halfway =
                    stopped_halfway(&self.console.lock().bytes, begin.as_bytes(), from);
                let diagnosis = self.diagnose_silence(stopped_halfway);
                self.fail(&format!(
                    "timed out after {timeout:?} running {command:?} in the guest\n{diagnosis}"
                ))
            }
            Err(WaitError::Closed) => self.fail(&format!(
                "tidal exited while running {command:?} in the guest"
            )),
        };
        let (body, status_text) = {
            let state = self.console.lock();
            (
                String::from_utf8_lossy(&state.bytes[body_start..e]).replace('\r', ""),
                String::from_utf8_lossy(&state.bytes[e + end.len()..status_end])
                    .trim()
                    .to_owned(),
            )
        };
        self.cursor = status_end;
        let status = status_text.parse::<i32>().unwrap_or_else(|_| {
            self.fail(&format!(
                "cannot read the exit status of {command:?}: {status_text:?}"
            ))
        });
        self.note_if_slow(command, sent.elapsed());
        // Like shell command substitution: trailing newlines (and the bare `echo`'s) removed.
        let output = body.trim_end_matches('\n').to_owned();
        CommandOutput { output, status }
    }

    /// Runs `command` and returns its output; panics (with the console tail) unless it exits 0.
    pub fn run_ok(&mut self, command: &str) -> String {
        self.run_ok_within(command, DEFAULT_COMMAND_TIMEOUT)
    }

    /// Writes `bytes` of a fresh pattern (see [`pattern_fill_command`]) to the guest file
    /// `path` and returns its checksum line; panics when that fails or takes over `timeout`.
    pub fn write_pattern(&mut self, path: &str, bytes: u64, timeout: Duration) -> String {
        let command = format!("{} && md5sum {path}", pattern_fill_command(path, bytes));
        self.run_ok_within(&command, timeout)
    }

    /// The `md5sum` line of the guest file `path`; panics when that fails or takes over
    /// `timeout` (reading back a large file that was migrated takes a while under emulation).
    pub fn checksum(&mut self, path: &str, timeout: Duration) -> String {
        self.run_ok_within(&format!("md5sum {path}"), timeout)
    }

    /// [`RunningGuest::run_ok`] with a timeout of its own.
    fn run_ok_within(&mut self, command: &str, timeout: Duration) -> String {
        let result = self.run_with_timeout(command, timeout);
        if !result.success() {
            self.fail(&format!(
                "guest command {command:?} exited with status {}; its output:\n{}",
                result.status, result.output
            ));
        }
        result.output
    }

    /// A `/proc/meminfo` value in KiB, e.g. `meminfo_kib("MemTotal")`.
    pub fn meminfo_kib(&mut self, key: &str) -> u64 {
        let output = self.run_ok(&format!("grep '^{key}:' /proc/meminfo"));
        output
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| self.fail(&format!("no {key} in /proc/meminfo: {output:?}")))
    }

    /// The guest's `nproc`.
    pub fn nproc(&mut self) -> u32 {
        self.run_number("nproc")
    }

    /// The number of processors in the guest's `/proc/cpuinfo`.
    pub fn cpuinfo_processors(&mut self) -> u32 {
        self.run_number("grep -c '^processor' /proc/cpuinfo")
    }

    /// Runs `command` and parses its output as a number.
    pub fn run_number<T: std::str::FromStr>(&mut self, command: &str) -> T {
        let output = self.run_ok(command);
        output
            .trim()
            .parse()
            .unwrap_or_else(|_| self.fail(&format!("{command:?} printed {output:?}, not a number")))
    }

    /// Whether `path` exists in the guest.
    pub fn path_exists(&mut self, path: &str) -> bool {
        self.run(&format!("test -e '{path}'")).success()
    }

    /// Sends `poweroff -f` and waits for tidal to exit; kills it and panics if it does not
    /// within [`DEFAULT_EXIT_TIMEOUT`].
    pub fn poweroff(&mut self) -> ExitStatus {
        self.shut_down("poweroff -f")
    }

    /// Sends `reboot -f` and waits for tidal to exit (Tidal ends the VM on a guest reset); kills
    /// it and panics if it does not within [`DEFAULT_EXIT_TIMEOUT`].
    pub fn reboot(&mut self) -> ExitStatus {
        self.shut_down("reboot -f")
    }

    fn shut_down(&mut self, command: &str) -> ExitStatus {
        let sent_at = self.console.len();
        self.send_line(command);
        match self.wait_exit(DEFAULT_EXIT_TIMEOUT) {
            Some(status) => status,
            None => {
                // The kernel says "Power down" or "Restarting system" even with `quiet`: a
                // guest that printed nothing since never acted on the command.
                let never_began = self.console.len() == sent_at;
                let diagnosis = self.diagnose_silence(never_began);
                self.kill();
                self.fail(&format!(
                    "tidal did not exit within {DEFAULT_EXIT_TIMEOUT:?} after `{command}` \
                     (killed)\n{diagnosis}"
                ))
            }
        }
    }

    /// Sends `signal` (`libc::SIGTERM`, say) to tidal; panics if it has exited and been reaped.
    pub fn signal(&mut self, signal: i32) {
        if let Some(status) = self.exit_status {
            self.fail(&format!(
                "cannot send signal {signal} to tidal: it exited ({status})"
            ));
        }
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill has no memory effects; `pid` is our child, not yet reaped (no exit
        // status was collected), so the id cannot have been reused by another process.
        if unsafe { libc::kill(pid, signal) } != 0 {
            let error = std::io::Error::last_os_error();
            self.fail(&format!("cannot send signal {signal} to tidal: {error}"));
        }
    }

    /// Waits up to `timeout` for tidal to exit and returns its exit code; panics (with the
    /// console and stderr tails) when it does not exit in time, or dies of a signal instead.
    pub fn expect_exit_code(&mut self, timeout: Duration) -> i32 {
        let Some(status) = self.wait_exit(timeout) else {
            self.kill();
            self.fail(&format!("tidal did not exit within {timeout:?} (killed)"));
        };
        status.code().unwrap_or_else(|| {
            self.fail(&format!(
                "tidal died of a signal ({status}) instead of exiting"
            ))
        })
    }

    /// Waits up to `timeout` for tidal to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit_status.is_some() {
            return self.exit_status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exit_status = Some(status);
                    // Let the readers collect the last output (briefly: a child of tidal could
                    // hold the pipes open).
                    let grace = Instant::now() + Duration::from_secs(2);
                    let _ = self.console.wait_until(grace, |_| None::<()>);
                    let _ = self.stderr.wait_until(grace, |_| None::<()>);
                    return Some(status);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => return None,
                Err(e) => self.fail(&format!("cannot wait for tidal: {e}")),
            }
        }
    }

    /// Kills tidal (SIGKILL) if it is still running, and reaps it. A process that SIGKILL does
    /// not end within [`KILL_TIMEOUT`] is stuck in the kernel (in KVM, say): rather than hang the
    /// test run, this reports where its threads are stuck on stderr and leaves it behind.
    pub fn kill(&mut self) {
        if self.exit_status.is_some() {
            return;
        }
        let _ = self.child.kill();
        let deadline = Instant::now() + KILL_TIMEOUT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.exit_status = Some(status);
                    return;
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) | Err(_) => break,
            }
        }
        tell(&format!(
            "tidal-tests: tidal (pid {}) did not die within {KILL_TIMEOUT:?} of SIGKILL; \
             left behind. Its threads in the kernel:\n{}",
            self.child.id(),
            threads::kernel_stacks(self.child.id())
        ));
    }
}

/// A guest shell command line that writes `bytes` of a fresh non-zero pattern (a line of 4 KiB
/// of random hex, repeated) to `path`: data that neither zero pages nor a fixed string could
/// fake, so a checksum of it shows that memory really moved intact.
///
/// The line is doubled into a block of 8 MiB, which `cat` then writes as often as it takes:
/// under emulation that fills tmpfs at ~50 MB/s, where `yes LINE | head -c` managed 3 MB/s.
pub fn pattern_fill_command(path: &str, bytes: u64) -> String {
    format!(
        "b={path}.block; head -c 4096 /dev/urandom | od -A n -t x1 | tr -d ' \\n' > $b && \
         echo >> $b && for i in 1 2 3 4 5 6 7 8 9 10; do cat $b $b > $b.2 && mv $b.2 $b; done && \
         n=$((({bytes} + $(wc -c < $b) - 1) / $(wc -c < $b))) && \
         while [ $n -gt 0 ]; do cat $b; n=$((n - 1)); done > {path} && rm $b && \
         truncate -s {bytes} {path}"
    )
}

/// The guest shell command that lets its tmpfs (`/tmp`, sized at boot) grow to 95 % of the
/// memory the guest has now, before a fill that may use hot-added memory.
pub const GROW_TMPFS: &str = "mount -o remount,size=95% /tmp";

/// Whether the guest's console stopped halfway: the command whose begin marker (`begin`, sent
/// after offset `from`) never began (the guest's shell, idle until then, read no more input:
/// Tidal raises the receive interrupt again for input left unread, so the guest had stopped),
/// or its output had begun, or the console's last line is cut off (a shell or kernel line
/// never finished). A command that is merely slow leaves the console at the end of a line, its
/// marker's.
fn stopped_halfway(console: &[u8], begin: &[u8], from: usize) -> bool {
    let began = find_bytes(console, begin, from);
    let output_began = began
        .and_then(|b| find_bytes(console, b"\n", b))
        .is_some_and(|newline| console.len() > newline + 1);
    began.is_none() || output_began || line_cut_off(console)
}

/// Whether the console's last line is cut off: the guest stopped writing in the middle of a
/// line. Linux writes its console lines whole, polling the transmitter, so a kernel that is
/// merely slow to boot leaves the console at the end of a line.
fn line_cut_off(console: &[u8]) -> bool {
    console.last().is_some_and(|&byte| byte != b'\n')
}

/// Starts the line that reports a guest that stopped answering while tidal's vCPU threads were
/// free (see [`RunningGuest::diagnose_silence`]).
const SILENT_GUEST_MARKER: &str = "tidal-tests: the guest stopped answering inside KVM_RUN:";

/// How long [`RunningGuest::diagnose_silence`] waits for the console to answer a newline.
const SILENCE_PROBE: Duration = Duration::from_secs(10);

/// What tidal's line listing the DIMMs' states says when a reset or a failure ended the VM.
const DIMMS_AT_THE_END: &str = "DIMMs when the VM ended:";

/// Starts the line that reports a guest's triple fault after a failed test.
const TRIPLE_FAULT_MARKER: &str = "tidal-tests: the guest triple-faulted:";

/// Says on stderr, in a line of its own that ci/test.sh looks for (it retries such a test under
/// nested emulation), that the guest died of a triple fault; `evidence` is what showed it.
pub fn report_triple_fault(evidence: &str) {
    tell(&format!("{TRIPLE_FAULT_MARKER} {evidence}"));
}

/// Starts every line [`tell`] writes; ci/test.sh reads no test result from such a line.
pub const TOLD_PREFIX: &str = "tidal-tests| ";

/// Writes `text` to stderr at once, past libtest's output capture, each line starting with
/// [`TOLD_PREFIX`]. libtest prints a failed test's captured output only when the whole
/// executable ends; a run that the test host's death cuts short would never say why a test
/// failed, nor whether the emulation was to blame.
pub fn tell(text: &str) {
    let mut told = String::new();
    for line in text.lines() {
        let _ = writeln!(told, "{TOLD_PREFIX}{line}");
    }
    // `io::stderr()` itself is not captured (only the print macros are); one write per report
    // keeps its lines together.
    let _ = std::io::stderr().lock().write_all(told.as_bytes());
}

/// What a panic said, when it said it with a string (as `panic!` and `expect` do).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Has every panic say itself through [`tell`] instead of libtest's capture, once per process.
pub(crate) fn tell_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let thread = thread::current();
            let message = panic_message(info.payload());
            let location = info
                .location()
                .map_or_else(String::new, |l| format!(" at {l}"));
            tell(&format!(
                "thread '{}' panicked{location}:\n{message}",
                thread.name().unwrap_or("<unnamed>")
            ));
        }));
    });
}

/// How long [`RunningGuest::kill`] waits for a killed tidal to go.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(30);

impl Drop for RunningGuest {
    fn drop(&mut self) {
        self.resume_console();
        self.stdin.take();
        // A test that failed through a plain `expect` (an API call the dying tidal never
        // answered, say) printed nothing of tidal: say how it ended.
        let exited_first = thread::panicking()
            .then(|| self.child.try_wait().ok().flatten())
            .flatten();
        self.kill();
        if let Some(status) = exited_first {
            tell(&format!(
                "tidal-tests: tidal had already exited ({status}) when the test failed; its \
                 stderr, last {STDERR_TAIL_LINES} lines:\n{}",
                tail_lines(&self.stderr.text(), STDERR_TAIL_LINES)
            ));
        }
        if thread::panicking() {
            self.report_triple_fault();
        }
    }
}

// ------------------------------------------------------------------------------------------------
// The command line alone

/// What a short tidal run printed.
#[derive(Debug)]
pub struct TidalOutput {
    /// How tidal exited.
    pub status: ExitStatus,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// Runs tidal with `args` (stdin closed) and collects its output; kills it and panics if it
/// runs longer than `timeout`. For tests of the command line and `--dump-acpi`: no KVM check.
pub fn run_tidal<I, S>(args: I, timeout: Duration) -> TidalOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new(tidal_binary());
    command.args(args);
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {description}: {e}"));
    let stdout = Stream::default();
    let stderr = Stream::default();
    if let Some(out) = child.stdout.take() {
        stdout.collect_from(out, None);
    }
    if let Some(err) = child.stderr.take() {
        stderr.collect_from(err, None);
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{description} still ran after {timeout:?} (killed)\n---- stdout ----\n{}\n\
                     ---- stderr ----\n{}",
                    tail_lines(&stdout.text(), TAIL_LINES),
                    tail_lines(&stderr.text(), TAIL_LINES)
                );
            }
            Err(e) => panic!("cannot wait for {description}: {e}"),
        }
    };
    // The last output, collected briefly (a child of tidal could hold the pipes open).
    let grace = Instant::now() + Duration::from_secs(2);
    let _ = stdout.wait_until(grace, |_| None::<()>);
    let _ = stderr.wait_until(grace, |_| None::<()>);
    TidalOutput {
        status,
        stdout: stdout.text(),
        stderr: stderr.text(),
    }
}

/// Sends SIGTERM to `child` and waits up to `timeout` for it to end; `None` if it still runs.
pub fn terminate(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    // SAFETY: kill(2) on the pid of a child the caller owns and has not reaped.
    unsafe {
        libc::kill(i32::try_from(child.id()).unwrap_or(i32::MAX), libc::SIGTERM);
    }
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) | Err(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fill, run by the host's shell: exactly `bytes` long, the same line of 8192 hex
    /// digits throughout (cut off at the end), and different each time.
    #[test]
    fn a_pattern_fill_is_the_size_asked_for_and_one_line_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let fill = |name: &str, bytes: u64| {
            let path = dir.path().join(name);
            let command = pattern_fill_command(path.to_str().unwrap(), bytes);
            let status = Command::new("sh").arg("-c").arg(&command).status().unwrap();
            assert!(status.success(), "{command}");
            std::fs::read(&path).unwrap()
        };
        for bytes in [100, 8193, 9 << 20] {
            let data = fill("fill", bytes);
            assert_eq!(data.len() as u64, bytes);
            let line = &data[..data.len().min(8193)];
            assert!(line[..line.len().min(8192)]
                .iter()
                .all(u8::is_ascii_hexdigit));
            for chunk in data.chunks(8193) {
                assert_eq!(chunk, &line[..chunk.len()]);
            }
        }
        assert_ne!(fill("a", 4096), fill("b", 4096));
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 3, "only the fills are left: {leftovers:?}");
    }

    #[test]
    fn tells_a_stalled_console_from_a_slow_command() {
        let begin = b"__B1__";
        // Slow: the marker's line is the console's last.
        assert!(!stopped_halfway(b"old\n__B1__\n", begin, 4));
        // The command's output had begun, or a line was cut off before the command began.
        assert!(stopped_halfway(b"old\n__B1__\nMemTotal: 1\n", begin, 4));
        assert!(stopped_halfway(
            b"Enter 'help' for a list of built-in comma",
            begin,
            0
        ));
        // The command never began: the shell read no more input.
        assert!(stopped_halfway(b"old\n", begin, 4));
        assert!(stopped_halfway(b"", begin, 0));
        // A boot that stopped inside a kernel line, and one that is only slow.
        assert!(line_cut_off(
            b"[    1.068251] PCI: Fatal: No config space access f"
        ));
        assert!(!line_cut_off(
            b"[    1.068251] PCI: Fatal: No config space access function found\n"
        ));
    }

    #[test]
    fn finds_bytes_from_an_offset() {
        assert_eq!(find_bytes(b"abcabc", b"bc", 0), Some(1));
        assert_eq!(find_bytes(b"abcabc", b"bc", 2), Some(4));
        assert_eq!(find_bytes(b"abcabc", b"bc", 5), None);
        assert_eq!(find_bytes(b"abc", b"bc", 10), None);
    }

    #[test]
    fn parses_guest_env() {
        let env = parse_env_file("# c\nKERNEL=/a/vmlinuz\n\nINITRAMFS = /a/i.cpio.gz\nJUNK\n");
        assert_eq!(env.get("KERNEL").map(String::as_str), Some("/a/vmlinuz"));
        assert_eq!(
            env.get("INITRAMFS").map(String::as_str),
            Some("/a/i.cpio.gz")
        );
        assert_eq!(env.len(), 2);
    }

    #[test]
    fn tails_lines_without_carriage_returns() {
        assert_eq!(tail_lines("a\r\nb\r\nc\r\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
    }

    #[test]
    fn builds_the_command_line() {
        let guest = Guest::new()
            .kernel("/k")
            .initramfs("/i")
            .cpus(4)
            .memory("1G")
            .cmdline_extra("foo=1");
        assert_eq!(guest.full_cmdline(), format!("{DEFAULT_CMDLINE} foo=1"));
        let args: Vec<_> = guest
            .args()
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args
            .windows(2)
            .any(|w| w[0] == "--memory" && w[1] == "size=1G"));
        assert!(args.windows(2).any(|w| w[0] == "--cpus" && w[1] == "4"));
    }

    /// The marker protocol against a real shell reading a pipe, as the guest's does the tty.
    #[test]
    fn runs_commands_between_markers() {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("echo TIDAL-GUEST-READY; exec sh")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh");
        let console = Stream::default();
        let stderr = Stream::default();
        console.collect_from(child.stdout.take().expect("stdout"), None);
        stderr.collect_from(child.stderr.take().expect("stderr"), None);
        let mut guest =
            RunningGuest::new(child, console, stderr, "sh".into(), DEFAULT_BOOT_TIMEOUT);
        guest.wait_for(READY_LINE, Duration::from_secs(10));
        assert_eq!(guest.run_ok("echo hello; echo world"), "hello\nworld");
        assert_eq!(guest.run_ok("printf 'no newline'"), "no newline");
        assert_eq!(guest.run_ok("true"), "");
        let failed = guest.run("echo out; exit_code() { return 7; }; exit_code");
        assert_eq!(
            failed,
            CommandOutput {
                output: "out".into(),
                status: 7
            }
        );
        assert_eq!(guest.run_number::<u32>("echo 42"), 42);
        assert_eq!(
            guest.run_ok("echo '__TI''DAL_E_1_1__ 5'"),
            "__TIDAL_E_1_1__ 5"
        );
        guest.send_line("exit 0");
        assert_eq!(
            guest.wait_exit(Duration::from_secs(10)).map(|s| s.code()),
            Some(Some(0))
        );
    }
}
