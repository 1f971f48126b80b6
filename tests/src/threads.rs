//! What a VMM's threads are doing, read from /proc: for reports about a guest that stopped
//! answering or a tidal that does not die.

use std::fmt::Write as _;
use std::path::Path;

/// The system call number of `ioctl` on x86-64: a vCPU thread inside it is in `KVM_RUN`.
const SYS_IOCTL: u64 = 16;
/// The system call number of `futex` on x86-64: a thread inside it waits for a lock.
const SYS_FUTEX: u64 = 202;

/// One thread of a process at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadSample {
    pub tid: String,
    pub name: String,
    /// The system call the thread is blocked in, `None` while it runs (in the guest, for a vCPU).
    pub syscall: Option<u64>,
    /// User and system CPU time so far, in clock ticks.
    pub cpu_ticks: u64,
}

impl ThreadSample {
    fn read(task: &Path) -> Option<Self> {
        let read = |name: &str| std::fs::read_to_string(task.join(name)).ok();
        let stat = read("stat")?;
        Some(Self {
            tid: task.file_name()?.to_string_lossy().into_owned(),
            name: read("comm")?.trim().to_owned(),
            syscall: read("syscall").and_then(|text| parse_syscall(&text)),
            cpu_ticks: parse_cpu_ticks(&stat)?,
        })
    }

    /// Where the thread is, in words.
    pub fn place(&self) -> String {
        match self.syscall {
            None => "running".to_owned(),
            Some(SYS_IOCTL) => "in ioctl (KVM_RUN for a vCPU)".to_owned(),
            Some(SYS_FUTEX) => "waiting on a lock (futex)".to_owned(),
            Some(n) => format!("in system call {n}"),
        }
    }

    /// Whether this is a vCPU thread: tidal names them `vcpuN`, QEMU (the benchmark's reference
    /// VMM) `CPU N/KVM`.
    pub fn is_vcpu(&self) -> bool {
        self.name.starts_with("vcpu")
            || (self.name.starts_with("CPU ") && self.name.ends_with("/KVM"))
    }

    pub fn waits_on_a_lock(&self) -> bool {
        self.syscall == Some(SYS_FUTEX)
    }
}

/// Every thread of process `pid` (empty when it is gone).
pub fn sample(pid: u32) -> Vec<ThreadSample> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut threads: Vec<_> = tasks
        .flatten()
        .filter_map(|task| ThreadSample::read(&task.path()))
        .collect();
    threads.sort_by(|a, b| a.name.cmp(&b.name).then(a.tid.cmp(&b.tid)));
    threads
}

/// `/proc/PID/task/TID/syscall`: the number first, or `running`.
fn parse_syscall(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// utime + stime from `/proc/PID/task/TID/stat` (fields 14 and 15; the name in field 2 may
/// hold spaces and parentheses, so counting starts after its last `)`).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// State, wait channel and kernel stack of each thread of process `pid` (stacks need root),
/// for reports about a process that does not die.
pub fn kernel_stacks(pid: u32) -> String {
    let task_dir = format!("/proc/{pid}/task");
    let Ok(tasks) = std::fs::read_dir(&task_dir) else {
        return format!("  (cannot read {task_dir})");
    };
    let mut report = String::new();
    for task in tasks.flatten() {
        let path = task.path();
        let read = |name: &str| std::fs::read_to_string(path.join(name)).unwrap_or_default();
        let state = read("status")
            .lines()
            .find(|l| l.starts_with("State:"))
            .unwrap_or("State: ?")
            .to_owned();
        let _ = writeln!(
            report,
            "  thread {} ({}): {state}, wchan {}\n{}",
            task.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan"),
            read("stack")
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_time_after_a_name_with_spaces() {
        let stat = "42 (vcpu 0 (x)) S 1 42 42 0 -1 4194368 10 0 0 0 7 5 0 0 20 0 3 0";
        assert_eq!(parse_cpu_ticks(stat), Some(12));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_the_system_call_or_running() {
        assert_eq!(
            parse_syscall("16 0x3 0xae80 0x0 0x0 0x0 0x0 0x7ffd 0x7f"),
            Some(16)
        );
        assert_eq!(parse_syscall("running"), None);
    }

    #[test]
    fn knows_the_vcpu_threads_of_tidal_and_qemu() {
        let named = |name: &str| ThreadSample {
            tid: "1".to_owned(),
            name: name.to_owned(),
            syscall: None,
            cpu_ticks: 0,
        };
        assert!(named("vcpu0").is_vcpu());
        assert!(named("CPU 1/KVM").is_vcpu());
        assert!(!named("tidal").is_vcpu());
        assert!(!named("qemu-system-x86").is_vcpu());
        assert!(!named("CPU 0/TCG").is_vcpu());
    }

    #[test]
    fn samples_this_process() {
        let threads = sample(std::process::id());
        assert!(!threads.is_empty());
        assert!(threads.iter().all(|t| !t.name.is_empty()));
    }
}
