//! What a failed run leaves behind, so that it can be diagnosed afterwards: how the VMM ended,
//! the ends of its stderr and of the guest console, the DIMMs as last seen, the step of the run
//! and how long it had run. Kept in the JSON file (`retried[].evidence`) and as files in a
//! directory of its own (`failed/<vmm>-run<N>-<attempt>/` beside the JSON file), which outlive
//! the test host.

use std::fmt;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use super::vmm::VmmKind;

/// Lines of the VMM's stderr and of the guest console kept.
pub const EVIDENCE_LINES: usize = 200;

/// How the VMM process stood when the run failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum VmmExit {
    /// Still running (it was killed afterwards): the guest or the harness failed, not the VMM.
    Running,
    /// Exited by itself with this status (Tidal: 3 for a guest panic, see README "Exit codes").
    Exited { code: i32 },
    /// Ended by this signal (SIGABRT: a panic of the VMM itself, which aborts).
    Signalled { signal: i32 },
}

impl VmmExit {
    /// `None` (no status) means still running.
    pub fn of(status: Option<ExitStatus>) -> Self {
        match status {
            None => VmmExit::Running,
            Some(status) => match (status.code(), status.signal()) {
                (Some(code), _) => VmmExit::Exited { code },
                (None, Some(signal)) => VmmExit::Signalled { signal },
                (None, None) => VmmExit::Running,
            },
        }
    }
}

impl fmt::Display for VmmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            VmmExit::Running => f.write_str("was still running"),
            VmmExit::Exited { code } => write!(f, "exited with status {code}"),
            VmmExit::Signalled { signal } => {
                write!(f, "was killed by signal {signal}")?;
                match signal_name(signal) {
                    Some(name) => write!(f, " ({name})"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// The names of the signals a VMM is likely to die of.
fn signal_name(signal: i32) -> Option<&'static str> {
    Some(match signal {
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGSYS => "SIGSYS",
        libc::SIGTERM => "SIGTERM",
        _ => return None,
    })
}

/// Everything a failed run leaves behind.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    pub vmm: VmmKind,
    /// Which run: "run 2 of 5", or the warm-up.
    pub stage: String,
    /// 1 for the run's first boot, 2 for its retry.
    pub attempt: usize,
    /// The step of the run it failed in.
    pub step: String,
    /// Seconds from the VMM's start to the failure.
    pub elapsed_s: f64,
    /// Seconds from the step's start to the failure.
    pub step_elapsed_s: f64,
    /// Why the run stopped, as the harness saw it (its first line).
    pub error: String,
    pub exit: VmmExit,
    /// The last line of the VMM's stderr that reports an error, else its last line.
    pub last_error_line: Option<String>,
    /// The lines where Tidal reported a vCPU's triple fault (with the registers it could read)
    /// or a KVM internal error or failed entry.
    pub vcpu_faults: Vec<String>,
    /// The VMM's DIMMs as last seen (Tidal: `vm.memory`; QEMU: `query-memory-devices`), asked
    /// at the failure or, when the VMM no longer answered, at the start of the last step.
    pub memory: Option<Value>,
    /// The last [`EVIDENCE_LINES`] lines of the VMM's stderr.
    pub stderr_tail: Vec<String>,
    /// The last [`EVIDENCE_LINES`] lines of the guest console.
    pub console_tail: Vec<String>,
}

/// Why the evidence could not be written.
#[derive(Debug, Error)]
#[error("cannot keep the evidence of the failed run in {}: {source}", path.display())]
pub struct EvidenceError {
    path: PathBuf,
    source: io::Error,
}

/// What in a VMM's stderr line marks it as an error: env_logger's level, Tidal's one-line
/// error, a Rust panic, QEMU's own messages.
const ERROR_MARKS: [&str; 4] = [" ERROR ", "error:", "panicked at", "qemu-system-x86_64:"];
/// What Tidal's vCPU fault reports say (vmm/src/vcpu.rs).
const VCPU_FAULT_MARKS: [&str; 3] = ["triple fault", "KVM internal error", "VM entry failed"];

impl Evidence {
    /// The evidence of a run of `vmm` whose VMM wrote `stderr` and whose guest wrote
    /// `console`; the rest as the caller saw it.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vmm: VmmKind,
        stage: &str,
        attempt: usize,
        step: String,
        (elapsed_s, step_elapsed_s): (f64, f64),
        error: &str,
        exit: VmmExit,
        memory: Option<Value>,
        stderr: &str,
        console: &str,
    ) -> Self {
        let lines = |text: &str| -> Vec<String> {
            tail(text, EVIDENCE_LINES)
                .into_iter()
                .map(str::to_owned)
                .collect()
        };
        Evidence {
            vmm,
            stage: stage.to_owned(),
            attempt,
            step,
            elapsed_s,
            step_elapsed_s,
            error: error.lines().next().unwrap_or_default().to_owned(),
            exit,
            last_error_line: last_error_line(stderr).map(str::to_owned),
            vcpu_faults: stderr
                .lines()
                .filter(|line| VCPU_FAULT_MARKS.iter().any(|mark| line.contains(mark)))
                .map(str::to_owned)
                .collect(),
            memory,
            stderr_tail: lines(stderr),
            console_tail: lines(console),
        }
    }

    /// The directory name of this evidence: `tidal-run2-1`, `qemu-warmup-2`.
    pub fn name(&self) -> String {
        let run = self
            .stage
            .strip_prefix("run ")
            .and_then(|rest| rest.split_whitespace().next())
            .map_or_else(|| "warmup".to_owned(), |n| format!("run{n}"));
        format!("{}-{run}-{}", self.vmm.key(), self.attempt)
    }

    /// In one line: the step, the time, how the VMM ended and its last error line.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "in step \"{}\", {:.1} s after the VMM started: {}; {} {}",
            self.step, self.elapsed_s, self.error, self.vmm, self.exit
        );
        if let Some(error) = &self.last_error_line {
            line.push_str(&format!(", its last error line: {}", error.trim()));
        }
        line
    }

    /// Writes the evidence into `dir/<name>/`: `summary.txt` (the one-line summary, the
    /// step, the times, the exit and the vCPU faults), `stderr.log`, `console.log` and, when
    /// the DIMMs were seen, `memory.json`. Returns that directory.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, EvidenceError> {
        let path = dir.join(self.name());
        let write = |file: &str, text: String| {
            std::fs::write(path.join(file), text).map_err(|source| EvidenceError {
                path: path.join(file),
                source,
            })
        };
        std::fs::create_dir_all(&path).map_err(|source| EvidenceError {
            path: path.clone(),
            source,
        })?;
        let mut summary = format!(
            "{} {}, attempt {}, failed {}\n\nstep: {}\nelapsed: {:.1} s since the VMM started, \
             {:.1} s into the step\nerror: {}\nVMM: {}\nlast error line: {}\n",
            self.vmm,
            self.stage,
            self.attempt,
            self.summary(),
            self.step,
            self.elapsed_s,
            self.step_elapsed_s,
            self.error,
            self.exit,
            self.last_error_line.as_deref().unwrap_or("none"),
        );
        for fault in &self.vcpu_faults {
            summary.push_str(&format!("vCPU fault: {fault}\n"));
        }
        write("summary.txt", summary)?;
        write("stderr.log", self.stderr_tail.join("\n") + "\n")?;
        write("console.log", self.console_tail.join("\n") + "\n")?;
        if let Some(memory) = &self.memory {
            let text = serde_json::to_string_pretty(memory)
                .expect("a JSON value has string keys only, so it always serializes");
            write("memory.json", text + "\n")?;
        }
        Ok(path)
    }
}

/// The last `n` lines of `text`, carriage returns removed.
pub fn tail(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// The last line of `stderr` that reports an error ([`ERROR_MARKS`]), else its last non-empty
/// line.
fn last_error_line(stderr: &str) -> Option<&str> {
    let lines = || stderr.lines().rev().filter(|line| !line.trim().is_empty());
    lines()
        .find(|line| ERROR_MARKS.iter().any(|mark| line.contains(mark)))
        .or_else(|| lines().next())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const STDERR: &str = "[2026-12-05T00:00:01.000Z WARN  tidal_vmm::vcpu] vCPU 1: triple fault \
        (rip 0xffffffff81000000 rsp 0x1000 cr0 0x80050033 cr2 0x0 cr3 0x1000 cr4 0x370 efer \
        0xd01); treating it as a reset\n\
        [2026-12-05T00:00:02.000Z ERROR tidal_vmm::vm] the guest kernel panicked; stopping the VM\n\
        [2026-12-05T00:00:02.100Z INFO  tidal_vmm::vm] stopped\n";

    fn evidence(exit: VmmExit) -> Evidence {
        let console: String = (1..=250).map(|i| format!("line {i}\r\n")).collect();
        Evidence::new(
            VmmKind::Tidal,
            "run 2 of 3",
            1,
            "hot-add 128 MiB".to_owned(),
            (42.25, 1.5),
            "tidal exited while running \"grep '^MemTotal:' /proc/meminfo\" in the guest\nmore",
            exit,
            Some(json!([{"id": "dimm0", "state": "active"}])),
            STDERR,
            &console,
        )
    }

    #[test]
    fn keeps_the_last_200_lines() {
        let evidence = evidence(VmmExit::Exited { code: 3 });
        assert_eq!(evidence.console_tail.len(), EVIDENCE_LINES);
        assert_eq!(evidence.console_tail[0], "line 51");
        assert_eq!(evidence.console_tail[199], "line 250");
        assert_eq!(evidence.stderr_tail.len(), 3);
        assert_eq!(tail("a\r\nb\nc", 2), ["b", "c"]);
        assert!(tail("", 5).is_empty());
    }

    #[test]
    fn finds_the_last_error_line_and_the_vcpu_faults() {
        let evidence = evidence(VmmExit::Exited { code: 3 });
        assert!(evidence
            .last_error_line
            .as_deref()
            .is_some_and(|l| l.ends_with("the guest kernel panicked; stopping the VM")));
        assert_eq!(evidence.vcpu_faults.len(), 1);
        assert!(evidence.vcpu_faults[0].contains("rip 0xffffffff81000000"));
        assert_eq!(last_error_line("only\n\n"), Some("only"));
        assert_eq!(last_error_line(""), None);
        assert_eq!(
            last_error_line("tidal: error: no /dev/kvm\nbye\n"),
            Some("tidal: error: no /dev/kvm")
        );
    }

    #[test]
    fn says_how_the_vmm_ended() {
        assert_eq!(
            VmmExit::of(Some(ExitStatus::from_raw(3 << 8))),
            VmmExit::Exited { code: 3 }
        );
        let aborted = VmmExit::of(Some(ExitStatus::from_raw(libc::SIGABRT)));
        assert_eq!(aborted.to_string(), "was killed by signal 6 (SIGABRT)");
        assert_eq!(VmmExit::of(None).to_string(), "was still running");
        assert_eq!(
            serde_json::to_value(VmmExit::Exited { code: 3 }).unwrap(),
            json!({"state": "exited", "code": 3})
        );
    }

    #[test]
    fn sums_up_in_one_line() {
        let summary = evidence(VmmExit::Exited { code: 3 }).summary();
        assert_eq!(
            summary,
            "in step \"hot-add 128 MiB\", 42.2 s after the VMM started: tidal exited while \
             running \"grep '^MemTotal:' /proc/meminfo\" in the guest; Tidal exited with status \
             3, its last error line: [2026-12-05T00:00:02.000Z ERROR tidal_vmm::vm] the guest \
             kernel panicked; stopping the VM"
        );
        assert!(!summary.contains('\n'));
    }

    #[test]
    fn names_its_directory_by_vmm_run_and_attempt() {
        let mut evidence = evidence(VmmExit::Running);
        assert_eq!(evidence.name(), "tidal-run2-1");
        evidence.stage = "warm-up (not recorded)".to_owned();
        evidence.vmm = VmmKind::Qemu;
        evidence.attempt = 2;
        assert_eq!(evidence.name(), "qemu-warmup-2");
        evidence.vmm = VmmKind::CloudHypervisor;
        assert_eq!(evidence.name(), "ch-warmup-2");
    }

    #[test]
    fn writes_its_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = evidence(VmmExit::Exited { code: 3 })
            .write(&dir.path().join("failed"))
            .expect("write");
        assert_eq!(path, dir.path().join("failed/tidal-run2-1"));
        let read = |file: &str| std::fs::read_to_string(path.join(file)).expect(file);
        let summary = read("summary.txt");
        assert!(summary.contains("step: hot-add 128 MiB\n"), "{summary}");
        assert!(summary.contains("VMM: exited with status 3\n"), "{summary}");
        assert!(summary.contains("vCPU fault: "), "{summary}");
        assert!(read("console.log").ends_with("line 250\n"));
        assert!(read("stderr.log").contains("the guest kernel panicked"));
        let memory: Value = serde_json::from_str(&read("memory.json")).expect("json");
        assert_eq!(memory[0]["id"], "dimm0");
    }
}
