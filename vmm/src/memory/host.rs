//! What the host can still give guest memory: its `MemAvailable`, and the room left under this
//! process's cgroup memory limit when there is one. Memory that is hot-added beyond that is
//! only paid for when the guest touches it, and then the host's OOM killer takes the VM.
//! Huge pages come from their own pools, counted apart.
//!
//! The files are opened once, when Tidal starts: the API's threads, which plug DIMMs, may not
//! open files under their seccomp filter, only re-read open ones (`pread`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::backend::HugePageSize;

/// The host's free memory as Tidal can read it.
#[derive(Debug)]
pub struct HostMemory {
    meminfo: Option<File>,
    /// This process's cgroup v2 `memory.max` and `memory.current`.
    cgroup: Option<(File, File)>,
    /// The 2 MiB and the 1 GiB huge page pool.
    pools: [Option<HugePagePool>; 2],
}

/// The counters of one huge page pool (`/sys/kernel/mm/hugepages/hugepages-SIZEkB`).
#[derive(Debug)]
struct HugePagePool {
    free: File,
    reserved: File,
    /// How many surplus pages the host may make beyond the pool, and how many it has made.
    overcommit: File,
    surplus: File,
}

impl HugePagePool {
    fn open(page: HugePageSize) -> Option<Self> {
        let dir = PathBuf::from(page.sysfs_path());
        let open = |name: &str| File::open(dir.join(name)).ok();
        Some(Self {
            free: open("free_hugepages")?,
            reserved: open("resv_hugepages")?,
            overcommit: open("nr_overcommit_hugepages")?,
            surplus: open("surplus_hugepages")?,
        })
    }

    /// Pages a new mapping can reserve: free ones that no mapping has reserved, and the
    /// surplus pages the host may still make.
    fn available(&self) -> Option<u64> {
        let count = |file| read_text(file)?.trim().parse::<u64>().ok();
        let unreserved = count(&self.free)?.saturating_sub(count(&self.reserved)?);
        let surplus_room = count(&self.overcommit)?.saturating_sub(count(&self.surplus)?);
        Some(unreserved.saturating_add(surplus_room))
    }
}

impl HostMemory {
    /// Opens `/proc/meminfo` and, when this process is in a cgroup v2 with the memory
    /// controller, its `memory.max` and `memory.current`. What cannot be opened is left out.
    pub fn open() -> Self {
        let cgroup = cgroup_dir().and_then(|dir| {
            let max = File::open(dir.join("memory.max")).ok()?;
            let current = File::open(dir.join("memory.current")).ok()?;
            Some((max, current))
        });
        Self {
            meminfo: File::open("/proc/meminfo").ok(),
            cgroup,
            pools: [
                HugePagePool::open(HugePageSize::TwoMiB),
                HugePagePool::open(HugePageSize::OneGiB),
            ],
        }
    }

    /// Huge pages of size `page` that a new mapping can still reserve: the pool's free pages
    /// less those other mappings reserved but have not touched yet, plus the surplus pages the
    /// host may still make. `None` when unreadable.
    pub fn free_huge_pages(&self, page: HugePageSize) -> Option<u64> {
        let index = match page {
            HugePageSize::TwoMiB => 0,
            HugePageSize::OneGiB => 1,
        };
        self.pools[index].as_ref()?.available()
    }

    /// Bytes the host can give: the smaller of `MemAvailable` and the cgroup's room, `None`
    /// when neither can be read.
    pub fn available(&self) -> Option<u64> {
        let host = self
            .meminfo
            .as_ref()
            .and_then(read_text)
            .and_then(|text| mem_available(&text));
        let cgroup = self.cgroup.as_ref().and_then(|(max, current)| {
            let max = read_text(max)?;
            let current = read_text(current)?.trim().parse::<u64>().ok()?;
            cgroup_room(&max, current)
        });
        match (host, cgroup) {
            (Some(host), Some(cgroup)) => Some(host.min(cgroup)),
            (host, cgroup) => host.or(cgroup),
        }
    }
}

/// This process's cgroup v2 directory, from the `0::PATH` line of `/proc/self/cgroup`.
fn cgroup_dir() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = text.lines().find_map(|line| line.strip_prefix("0::"))?;
    Some(PathBuf::from("/sys/fs/cgroup").join(path.trim_start_matches('/')))
}

/// The whole of an open file, read from its start (pseudo-files are made afresh each read).
fn read_text(file: &File) -> Option<String> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let offset = u64::try_from(bytes.len()).ok()?;
        match file.read_at(&mut chunk, offset).ok()? {
            0 => break,
            n => bytes.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8(bytes).ok()
}

/// `MemAvailable:  123456 kB` in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// Room under a cgroup's `memory.max` (`max`: no limit) with `current` bytes in use.
fn cgroup_room(max: &str, current: u64) -> Option<u64> {
    let max = max.trim();
    if max == "max" {
        return None;
    }
    Some(max.parse::<u64>().ok()?.saturating_sub(current))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_available() {
        let meminfo = "MemTotal:       24684132 kB\nMemFree:        21115000 kB\n\
                       MemAvailable:   23170000 kB\nBuffers:            2200 kB\n";
        assert_eq!(mem_available(meminfo), Some(23_170_000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn a_cgroup_limit_leaves_its_room() {
        assert_eq!(cgroup_room("max\n", 5), None);
        assert_eq!(cgroup_room("1073741824\n", 1 << 28), Some(3 << 28));
        assert_eq!(cgroup_room("100\n", 200), Some(0));
    }

    #[test]
    fn this_host_has_memory_available_and_counts_its_huge_pages() {
        let host = HostMemory::open();
        assert!(host.available().is_some_and(|bytes| bytes > 0));
        let pool = |name: &str| -> u64 {
            let path = format!("/sys/kernel/mm/hugepages/hugepages-2048kB/{name}");
            std::fs::read_to_string(path)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        assert_eq!(
            host.free_huge_pages(HugePageSize::TwoMiB),
            Some(
                pool("free_hugepages") - pool("resv_hugepages")
                    + (pool("nr_overcommit_hugepages") - pool("surplus_hugepages"))
            )
        );
    }
}
