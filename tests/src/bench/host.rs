//! The host side: a VMM process's resident memory, split into guest RAM and the VMM's own, how
//! much of a DIMM's address range is resident, and where the benchmark runs.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Serialize;

use crate::in_testhost;

/// Mappings at least this large and anonymous are guest RAM. Both VMMs map boot RAM and each
/// DIMM (128 MiB and more) as one private anonymous mapping; nothing else of theirs is that big
/// (glibc's malloc arenas reserve 64 MiB, but in parts of different protection, hence separate
/// mappings, until they are full).
const GUEST_RAM_MIN_KIB: u64 = 64 * 1024;

/// The pages `/proc/PID/pagemap` counts in (x86_64's base page; the benchmark runs nowhere else).
const PAGE_BYTES: u64 = 4096;

/// A VMM process's resident memory, in MiB, and where its guest RAM is mapped.
#[derive(Debug, Clone, PartialEq)]
pub struct Rss {
    /// Resident in the guest-RAM mappings.
    pub guest_mib: f64,
    /// Resident anywhere else: the VMM's own overhead.
    pub own_mib: f64,
    /// The address ranges of the guest-RAM mappings, in address order.
    guest_ram: Vec<Range<u64>>,
}

impl Rss {
    /// Reads `/proc/PID/smaps`.
    pub fn of(pid: u32) -> io::Result<Self> {
        std::fs::read_to_string(format!("/proc/{pid}/smaps")).map(|smaps| Self::parse(&smaps))
    }

    pub fn total_mib(&self) -> f64 {
        self.guest_mib + self.own_mib
    }

    /// The guest-RAM addresses mapped now that were not in `before`: a DIMM hot-added since.
    /// By address, not by mapping: the kernel may have merged the DIMM's mapping with a
    /// neighbour.
    pub fn guest_ram_added_since(&self, before: &Rss) -> Vec<Range<u64>> {
        let mut added = self.guest_ram.clone();
        for old in &before.guest_ram {
            added = added
                .into_iter()
                .flat_map(|piece| subtract(piece, old))
                .collect();
        }
        added
    }

    /// Splits the `Rss:` of each mapping in `smaps` by [`GUEST_RAM_MIN_KIB`]. A mapping's header
    /// line is `start-end perms offset dev inode [path]`; its fields (`Size:`, `Rss:`, ...)
    /// follow, one a line.
    fn parse(smaps: &str) -> Self {
        let (mut guest_kib, mut own_kib) = (0u64, 0u64);
        let mut guest_ram = Vec::new();
        let mut is_guest_ram = false;
        for line in smaps.lines() {
            let mut words = line.split_whitespace();
            let Some(first) = words.next() else { continue };
            if !first.ends_with(':') {
                // A header: anonymous when no path follows the inode (or a named anonymous one).
                let path = words.nth(4);
                let range = address_range(first);
                is_guest_ram = path.is_none_or(|p| p.starts_with("[anon:"))
                    && (range.end - range.start) / 1024 >= GUEST_RAM_MIN_KIB;
                if is_guest_ram {
                    guest_ram.push(range);
                }
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
            guest_ram,
        }
    }
}

impl std::fmt::Display for Rss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} MiB guest RAM + {:.1} MiB own",
            self.guest_mib, self.own_mib
        )
    }
}

/// How many KiB of `ranges` are in RAM in process `pid` now, page by page from
/// `/proc/PID/pagemap` (bit 63 of a page's entry: present). Unmapped addresses count as not
/// resident, so a DIMM whose mapping is gone counts 0.
pub fn resident_kib(pid: u32, ranges: &[Range<u64>]) -> io::Result<u64> {
    const PRESENT: u64 = 1 << 63;
    const PAGES_PER_READ: usize = 8192;
    let pagemap = File::open(format!("/proc/{pid}/pagemap"))?;
    let mut entries = vec![0u8; PAGES_PER_READ * 8];
    let mut present = 0u64;
    for range in ranges {
        let (mut page, end) = (range.start / PAGE_BYTES, range.end.div_ceil(PAGE_BYTES));
        while page < end {
            let count =
                usize::try_from(end - page).map_or(PAGES_PER_READ, |left| left.min(PAGES_PER_READ));
            let chunk = &mut entries[..count * 8];
            pagemap.read_exact_at(chunk, page * 8)?;
            present += chunk
                .chunks_exact(8)
                .filter(|entry| {
                    u64::from_le_bytes((*entry).try_into().expect("chunks of 8")) & PRESENT != 0
                })
                .count() as u64;
            page += count as u64;
        }
    }
    Ok(present * PAGE_BYTES / 1024)
}

/// A mapping's addresses, written `start-end` in hex (empty when unreadable).
fn address_range(text: &str) -> Range<u64> {
    let parse = |hex: &str| u64::from_str_radix(hex, 16).ok();
    text.split_once('-')
        .and_then(|(start, end)| Some(parse(start)?..parse(end)?))
        .filter(|range| range.start <= range.end)
        .unwrap_or(0..0)
}

/// What is left of `range` without `other`: nothing, one piece or two.
fn subtract(range: Range<u64>, other: &Range<u64>) -> Vec<Range<u64>> {
    let below = range.start..range.end.min(other.start);
    let above = range.start.max(other.end)..range.end;
    [below, above]
        .into_iter()
        .filter(|piece| !piece.is_empty())
        .collect()
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
            "inside the QEMU TCG test host (nested KVM, emulated): compare the VMMs with \
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
    fn finds_the_guest_ram_a_hot_add_mapped_even_when_merged_with_a_neighbour() {
        let before = Rss::parse(SMAPS);
        // A 1 GiB DIMM mapped right below the boot RAM, merged with it into one mapping, and a
        // 128 MiB one elsewhere; the 128 MiB guest mapping of before is gone.
        let after = Rss::parse(
            "7effc0000000-7f0040000000 rw-p 00000000 00:00 0
Rss:              524288 kB
7f4000000000-7f4008000000 rw-p 00000000 00:00 0
Rss:                   0 kB
",
        );
        assert_eq!(
            after.guest_ram_added_since(&before),
            [
                0x7eff_c000_0000..0x7f00_0000_0000,
                0x7f40_0000_0000..0x7f40_0800_0000
            ]
        );
        assert!(before.guest_ram_added_since(&before).is_empty());
    }

    #[test]
    fn subtracts_ranges() {
        assert_eq!(subtract(0..10, &(3..5)), [0..3, 5..10]);
        assert_eq!(subtract(0..10, &(0..10)), []);
        assert_eq!(subtract(0..10, &(8..20)), vec![0..8]);
        assert_eq!(subtract(5..10, &(0..3)), vec![5..10]);
    }

    #[test]
    fn counts_the_resident_pages_of_a_range() {
        let page_bytes = usize::try_from(PAGE_BYTES).unwrap();
        let len = 64 * page_bytes;
        // SAFETY: a fresh private anonymous mapping of our own, unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let start = addr as u64;
        let dimm = start..start + len as u64;
        let range = std::slice::from_ref(&dimm);
        let pid = std::process::id();
        assert_eq!(resident_kib(pid, range).unwrap(), 0, "untouched");
        for page in 0..10 {
            // SAFETY: inside the mapping made above.
            unsafe { addr.cast::<u8>().add(page * page_bytes).write(1) };
        }
        assert_eq!(resident_kib(pid, range).unwrap(), 40, "ten pages touched");
        // SAFETY: the mapping made above, used by nothing else.
        assert_eq!(unsafe { libc::madvise(addr, len, libc::MADV_DONTNEED) }, 0);
        assert_eq!(resident_kib(pid, range).unwrap(), 0, "given back");
        // SAFETY: as above; nothing uses it any more.
        assert_eq!(unsafe { libc::munmap(addr, len) }, 0);
        // Nothing maps the lowest 64 KiB (vm.mmap_min_addr).
        let low = 0..0x10000;
        let unmapped = std::slice::from_ref(&low);
        assert_eq!(resident_kib(pid, unmapped).unwrap(), 0, "unmapped");
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
