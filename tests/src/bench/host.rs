//! The host side: a VMM process's resident memory, split into guest RAM and the VMM's own, and
//! where the benchmark runs.

use std::io;
use std::path::Path;

use serde::Serialize;

use crate::in_testhost;

/// Mappings at least this large and anonymous are guest RAM. Both VMMs map boot RAM and each
/// DIMM (128 MiB and more) as one private anonymous mapping; nothing else of theirs is that big
/// (glibc's malloc arenas reserve 64 MiB, but in parts of different protection, hence separate
/// mappings, until they are full).
const GUEST_RAM_MIN_KIB: u64 = 64 * 1024;

/// A VMM process's resident memory, in MiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rss {
    /// Resident in the guest-RAM mappings.
    pub guest_mib: f64,
    /// Resident anywhere else: the VMM's own overhead.
    pub own_mib: f64,
}

impl Rss {
    /// Reads `/proc/PID/smaps`.
    pub fn of(pid: u32) -> io::Result<Self> {
        std::fs::read_to_string(format!("/proc/{pid}/smaps")).map(|smaps| Self::parse(&smaps))
    }

    pub fn total_mib(&self) -> f64 {
        self.guest_mib + self.own_mib
    }

    /// Splits the `Rss:` of each mapping in `smaps` by [`GUEST_RAM_MIN_KIB`]. A mapping's header
    /// line is `start-end perms offset dev inode [path]`; its fields (`Size:`, `Rss:`, ...)
    /// follow, one a line.
    fn parse(smaps: &str) -> Self {
        let (mut guest_kib, mut own_kib) = (0u64, 0u64);
        let mut is_guest_ram = false;
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            let Some(first) = words.next() else { continue };
            if !first.ends_with(':') {
                // A header: anonymous when no path follows the inode (or a named anonymous one).
                let path = words.nth(4);
                is_guest_ram = path.is_none_or(|p| p.starts_with("[anon:"))
                    && mapping_kib(first) >= GUEST_RAM_MIN_KIB;
            } else if first == "Rss:" {
                let kib: u64 = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                if is_guest_ram {
                    guest_kib += kib;
                } else {
                    own_kib += kib;
                }
            }
        }
        Rss {
            guest_mib: kib_to_mib(guest_kib),
            own_mib: kib_to_mib(own_kib),
        }
    }
}

/// The size in KiB of a mapping written `start-end` in hex.
fn mapping_kib(range: &str) -> u64 {
    let parse = |hex: &str| u64::from_str_radix(hex, 16).ok();
    range
        .split_once('-')
        .and_then(|(start, end)| Some(parse(end)?.saturating_sub(parse(start)?) / 1024))
        .unwrap_or(0)
}

fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Where the benchmark ran: figures from the test host are emulated and only mean something
/// next to each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Environment {
    /// Inside the QEMU TCG test host (`TIDAL_IN_TESTHOST`), whose KVM is nested in emulation;
    /// otherwise on hardware KVM (guests boot nowhere else).
    pub in_testhost: bool,
    /// The CPU as the benchmark saw it (inside the test host: the emulated one).
    pub cpu: String,
    /// CPUs available to the benchmark.
    pub cpus: usize,
    /// The kernel the VMMs ran on.
    pub kernel: String,
}

impl Environment {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
            .map_or_else(
                || "unknown CPU".to_owned(),
                |(_, name)| name.trim().to_owned(),
            );
        Environment {
            in_testhost: in_testhost(),
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".to_owned(), |r| r.trim().to_owned()),
        }
    }

    /// Where, in words.
    pub fn place(&self) -> &'static str {
        if self.in_testhost {
            "inside the QEMU TCG test host (nested KVM, emulated): compare the two VMMs with \
             each other, not with hardware"
        } else {
            "on hardware KVM"
        }
    }

    /// Where, in a few words (the plot's caption).
    pub fn short_place(&self) -> &'static str {
        if self.in_testhost {
            "emulated, in the test host"
        } else {
            "hardware KVM"
        }
    }
}

/// Whether `program` is an executable file in one of `$PATH`'s directories.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let candidate = Path::new(&dir).join(program);
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0200000 r-xp 00000000 08:01 1234   /usr/bin/qemu-system-x86_64
Size:               2048 kB
Rss:                1024 kB
VmFlags: rd ex mr mw me
7f0000000000-7f0040000000 rw-p 00000000 00:00 0
Size:            1048576 kB
Rss:              524288 kB
VmFlags: rd wr mr mw me ac
7f1000000000-7f1000100000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                 512 kB
7f2000000000-7f2008000000 rw-p 00000000 00:00 0   [anon:guest]
Size:             131072 kB
Rss:                1024 kB
7f3000000000-7f3010000000 r--p 00000000 08:01 99   /var/big-file
Size:             262144 kB
Rss:                2048 kB
";

    #[test]
    fn splits_guest_ram_from_the_rest() {
        let rss = Rss::parse(SMAPS);
        assert_eq!(rss.guest_mib, 513.0);
        assert_eq!(rss.own_mib, 3.5);
        assert_eq!(rss.total_mib(), 516.5);
    }

    #[test]
    fn reads_this_process() {
        let rss = Rss::of(std::process::id()).expect("read our own smaps");
        assert!(rss.own_mib > 0.0);
    }

    #[test]
    fn finds_programs_on_path() {
        assert!(on_path("sh"));
        assert!(!on_path("no-such-program-tidal-bench"));
    }
}
