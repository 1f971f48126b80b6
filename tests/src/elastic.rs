//! [`ElasticVm`]: a booted guest with a hotplug region and the REST API client for it, for the
//! tests that grow and shrink guests (hotplug.rs, faults.rs).

use std::path::PathBuf;
use std::process::Command;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use tidal_api::{AddMemoryRequest, ApiClient, ClientError, DimmInfo, ResizeRequest};

use crate::bench::host::Rss;
use crate::{tidal_binary, Guest, RunningGuest, GROW_TMPFS};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// The guest's memory block size: the unit of hotplug.
pub const BLOCK: u64 = 128 * MIB;
/// The longest any API call may take: longer than every operation timeout the tests ask for, so
/// only a server that stopped answering hits it (and fails the test rather than hanging it).
pub const API_TIMEOUT: Duration = Duration::from_secs(900);

/// A booted guest with a hotplug region and the API client for it.
pub struct ElasticVm {
    pub guest: RunningGuest,
    pub api: ApiClient,
    pub socket: PathBuf,
    /// Holds the API socket; removed with the VM.
    _dir: tempfile::TempDir,
}

impl ElasticVm {
    /// Boots `guest` with `memory` (a `--memory` option) and an API socket.
    pub fn boot(guest: Guest, memory: &str) -> Self {
        let dir = tempfile::tempdir().expect("create the socket directory");
        let socket = dir.path().join("api.sock");
        let guest = guest
            .memory(memory)
            .arg("--api-socket")
            .arg(&socket)
            .arg("--log-level")
            .arg("info")
            .boot();
        Self {
            api: ApiClient::new(&socket).with_timeout(API_TIMEOUT),
            socket,
            guest,
            _dir: dir,
        }
    }

    /// The default elastic VM: 1 GiB of boot RAM and an 8 GiB hotplug region.
    pub fn default_boot(guest: Guest) -> Self {
        Self::boot(guest, "size=1G,hotplug_size=8G")
    }

    /// Resizes through the API, giving the guest up to 10 minutes: under emulation (the test
    /// host) migrating a GiB of data out of a DIMM takes close to a minute.
    pub fn resize(&mut self, bytes: u64) {
        let start = Instant::now();
        if let Err(e) = self.api.resize(&resize_request(bytes)) {
            self.guest.fail(&format!("resize to {bytes} failed: {e}"));
        }
        self.guest
            .note_if_slow(&format!("resize to {bytes}"), start.elapsed());
    }

    /// [`ElasticVm::resize`] on a thread of its own; the handle gives its answer.
    pub fn resize_in_background(&self, bytes: u64) -> JoinHandle<Result<(), ClientError>> {
        let api = self.api.clone();
        thread::spawn(move || api.resize(&resize_request(bytes)))
    }

    /// `vm.memory.add` of one DIMM of `size` bytes into NUMA node `node`, not forced.
    pub fn add(&self, size: u64, node: u32) -> Result<DimmInfo, ClientError> {
        self.api.add_memory(&AddMemoryRequest {
            size,
            node,
            force: false,
        })
    }

    /// Runs tidalctl against this VM; returns its stdout, or fails with its stderr.
    pub fn tidalctl(&mut self, args: &[&str]) -> String {
        let start = Instant::now();
        let output = Command::new(tidal_binary().with_file_name("tidalctl"))
            .arg("--api-socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tidalctl");
        self.guest
            .note_if_slow(&format!("tidalctl {}", args.join(" ")), start.elapsed());
        if !output.status.success() {
            self.guest.fail(&format!(
                "tidalctl {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn memtotal_kib(&mut self) -> u64 {
        self.guest.meminfo_kib("MemTotal")
    }

    /// The guest's memory block indices in [base, base + size) that exist in sysfs.
    pub fn blocks_present(&mut self, base: u64, size: u64) -> Vec<u64> {
        (base / BLOCK..(base + size) / BLOCK)
            .filter(|index| {
                self.guest
                    .path_exists(&format!("/sys/devices/system/memory/memory{index}"))
            })
            .collect()
    }

    /// Fills `mib` MiB of tmpfs with a non-zero pattern and returns its checksum. The tmpfs is
    /// first resized to 95 % of the guest's memory now (it was sized at boot).
    pub fn fill(&mut self, mib: u64) -> String {
        self.guest.run_ok(GROW_TMPFS);
        self.guest
            .write_pattern("/tmp/fill", mib * MIB, Duration::from_secs(1200))
    }

    /// The checksum of what [`ElasticVm::fill`] wrote, read back.
    pub fn fill_checksum(&mut self) -> String {
        self.guest.checksum("/tmp/fill", Duration::from_secs(600))
    }

    /// tidal's resident set size, in KiB.
    pub fn host_rss_kib(&mut self) -> u64 {
        self.host_status_kib("VmRSS")
    }

    /// tidal's resident memory split into guest RAM and its own (from /proc/PID/smaps).
    pub fn host_rss(&mut self) -> Rss {
        Rss::of(self.guest.pid()).expect("read tidal's /proc smaps")
    }

    /// A KiB figure of tidal's /proc/PID/status, e.g. `VmSize` (everything it has mapped).
    pub fn host_status_kib(&mut self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.guest.pid()))
            .expect("read tidal's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in /proc/PID/status"))
    }

    /// How many guest RAM mappings tidal has. Each DIMM is one, with its KVM slot.
    pub fn host_ram_mapping_count(&mut self) -> usize {
        self.host_ram_mappings().len()
    }

    /// KiB of guest RAM tidal has mapped: boot RAM and every DIMM. Unlike `VmSize`, this does
    /// not move when tidal's threads or malloc arenas (64 MiB of address space each) come and go.
    pub fn host_ram_mapped_kib(&mut self) -> u64 {
        self.host_ram_mappings().iter().sum::<u64>() / 1024
    }

    fn host_ram_mappings(&mut self) -> Vec<u64> {
        guest_ram_mappings(self.guest.pid())
    }

    /// How many file descriptors tidal has open.
    pub fn host_fd_count(&mut self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.guest.pid()))
            .expect("list tidal's /proc fd directory")
            .count()
    }

    pub fn expect_api_error(
        &mut self,
        result: Result<impl std::fmt::Debug, ClientError>,
        status: u16,
    ) -> String {
        match api_error(&result, status) {
            Ok(message) => message.to_owned(),
            Err(other) => self.guest.fail(&other),
        }
    }
}

/// The message of `result` when it is an API error with `status`; otherwise what it was instead.
pub fn api_error<T: std::fmt::Debug>(
    result: &Result<T, ClientError>,
    status: u16,
) -> Result<&str, String> {
    match result {
        Err(ClientError::Api {
            status: got,
            message,
        }) if got.as_u16() == status => Ok(message),
        other => Err(format!(
            "expected an API error with status {status}, got {other:?}"
        )),
    }
}

/// A resize to `bytes` that waits for the guest's answers, up to 10 minutes for each DIMM (see
/// [`ElasticVm::resize`]).
fn resize_request(bytes: u64) -> ResizeRequest {
    ResizeRequest {
        desired_ram: Some(bytes),
        timeout_secs: Some(600),
        force: false,
        wait: true,
        ..ResizeRequest::default()
    }
}

/// The sizes of the guest RAM mappings of the tidal process `pid`: those of a block (128 MiB)
/// or more in /proc/PID/maps (its own heap arenas and stacks are smaller).
pub fn guest_ram_mappings(pid: u32) -> Vec<u64> {
    let maps =
        std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("read tidal's /proc maps");
    maps.lines()
        .filter_map(|line| {
            let (start, end) = line.split_whitespace().next()?.split_once('-')?;
            let size = u64::from_str_radix(end, 16).ok()? - u64::from_str_radix(start, 16).ok()?;
            (size >= BLOCK).then_some(size)
        })
        .collect()
}
