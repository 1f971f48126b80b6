//! A container's figures in the cgroup v1 metrics shape (`io.containerd.cgroups.v1.Metrics`)
//! that containerd's `ctr task metrics` and its CRI plugin (the kubelet's container stats)
//! read. A Tidal container has no cgroup of its own: its memory limit is the VM's RAM, its
//! usage the host memory its Tidal process holds resident (the guest pages it has touched and
//! the VMM's own), its CPU time the Tidal process's.

use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};

/// The type containerd decodes the metrics as.
pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";

/// What the host shows of one Tidal process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessFigures {
    pub resident_bytes: u64,
    pub cpu_nanos: u64,
}

impl ProcessFigures {
    /// The figures of process `pid` from `/proc`; zero for a process that is gone (a container
    /// that has stopped holds nothing).
    pub fn of(pid: u32) -> Self {
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        Self::parse(
            &statm,
            &stat,
            sysconf(libc::_SC_PAGESIZE),
            sysconf(libc::_SC_CLK_TCK),
        )
    }

    /// From the texts of `/proc/PID/statm` (its second field: resident pages) and
    /// `/proc/PID/stat` (utime and stime, fields 14 and 15, in clock ticks; the name in field
    /// 2 may hold spaces and parentheses, so fields are counted after its last `)`).
    fn parse(statm: &str, stat: &str, page_size: u64, ticks_per_second: u64) -> Self {
        let field = |text: &str, n: usize| -> u64 {
            text.split_whitespace()
                .nth(n)
                .and_then(|f| f.parse().ok())
                .unwrap_or(0)
        };
        let resident_pages = field(statm, 1);
        let after_name = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
        // After the name, field 3 (the state) comes first: utime is the 12th.
        let ticks = field(after_name, 11) + field(after_name, 12);
        Self {
            resident_bytes: resident_pages.saturating_mul(page_size),
            cpu_nanos: ticks.saturating_mul(1_000_000_000) / ticks_per_second.max(1),
        }
    }
}

/// The metrics of a container whose VM has `limit` bytes of RAM and whose process shows
/// `figures`, packed as containerd expects them.
pub fn metrics(limit: u64, figures: ProcessFigures) -> Any {
    let usage = figures.resident_bytes;
    let memory = MemoryStat {
        rss: usage,
        total_rss: usage,
        hierarchical_memory_limit: limit,
        usage: MessageField::some(MemoryEntry {
            usage,
            max: usage,
            limit,
            ..MemoryEntry::default()
        }),
        ..MemoryStat::default()
    };
    let metrics = Metrics {
        memory: MessageField::some(memory),
        cpu: MessageField::some(CPUStat {
            usage: MessageField::some(CPUUsage {
                total: figures.cpu_nanos,
                ..CPUUsage::default()
            }),
            ..CPUStat::default()
        }),
        pids: MessageField::some(PidsStat {
            current: u64::from(usage > 0),
            limit: 1,
            ..PidsStat::default()
        }),
        ..Metrics::default()
    };
    Any {
        type_url: METRICS_TYPE_URL.to_owned(),
        // Writing a message to memory cannot fail.
        value: metrics.write_to_bytes().unwrap_or_default(),
        ..Any::default()
    }
}

fn sysconf(name: libc::c_int) -> u64 {
    // SAFETY: sysconf reads a configuration value and touches no memory of ours.
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_resident_memory_and_cpu_time() {
        let stat = "42 (tidal (vm) x) S 1 42 42 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 3 0";
        let figures = ProcessFigures::parse("70000 2048 300 1 0 500 0", stat, 4096, 100);
        assert_eq!(figures.resident_bytes, 2048 * 4096);
        assert_eq!(figures.cpu_nanos, 3_000_000_000);
        assert_eq!(
            ProcessFigures::parse("", "", 4096, 100),
            ProcessFigures::default()
        );
    }

    #[test]
    fn packs_the_memory_as_cgroup_v1_metrics() {
        let figures = ProcessFigures {
            resident_bytes: 300 << 20,
            cpu_nanos: 7,
        };
        let any = metrics(1 << 30, figures);
        assert_eq!(any.type_url, METRICS_TYPE_URL);
        let back = Metrics::parse_from_bytes(&any.value).expect("metrics decode");
        let usage = back.memory.usage.as_ref().expect("a memory usage entry");
        assert_eq!((usage.usage, usage.limit), (300 << 20, 1 << 30));
        assert_eq!(back.memory.hierarchical_memory_limit, 1 << 30);
        assert_eq!(back.cpu.usage.total, 7);
    }

    #[test]
    fn the_shims_own_process_has_figures() {
        let own = ProcessFigures::of(std::process::id());
        assert!(own.resident_bytes > 0, "{own:?}");
        assert_eq!(ProcessFigures::of(u32::MAX), ProcessFigures::default());
    }
}
