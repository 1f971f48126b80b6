//! Whether a VM's process still runs: its pid, and the start time `/proc` gives it (field 22
//! of `/proc/PID/stat`), so that a pid the kernel gave to another process does not count.

/// When process `pid` started, in clock ticks after the host's boot; None when there is no
/// such process.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// Whether process `pid`, started at `started`, still runs.
pub fn is_running(pid: u32, started: u64) -> bool {
    start_time(pid) == Some(started)
}

/// What process `pid` has resident (bytes), 0 when it cannot be read.
pub fn resident(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// Field 22 of a `/proc/PID/stat` text; the name in field 2 may hold spaces and parentheses,
/// so fields are counted after its last `)` (where field 3 begins).
fn parse_start_time(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_field_22() {
        let stat = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 20 21";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn this_process_runs_and_a_pid_with_another_start_does_not() {
        let pid = std::process::id();
        let started = start_time(pid).expect("this process has a start time");
        assert!(is_running(pid, started));
        assert!(!is_running(pid, started + 1));
        assert!(!is_running(u32::MAX, started));
    }
}
