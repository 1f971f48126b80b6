//! Cloud Hypervisor beside Tidal and QEMU, when the benchmark is given its binary: booted
//! through `ci/ch-as-tidal.sh` (its flags, a terminal for its console), driven through its
//! REST API with Tidal's own client, since Tidal's API is compatible with it. Its ACPI
//! memory hotplug only adds: `vm.resize` to a larger `desired_ram` plugs the difference and
//! answers at once, and the guest onlines it afterwards.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tidal_api::endpoints::Endpoint;
use tidal_api::{ApiClient, ClientError, ResizeRequest};

use super::figures::Plan;
use super::vmm::{Added, Vmm, VmmError, VmmKind};
use crate::{Guest, RunningGuest};

/// The longest a call of Cloud Hypervisor's API may take: it answers at once, the guest does
/// the rest.
const API_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the evidence of a failed run waits for `vm.info`.
const INFO_TIMEOUT: Duration = Duration::from_secs(5);

/// `ci/ch-as-tidal.sh`, which runs Cloud Hypervisor with tidal's command line: the one place
/// that knows its flags.
pub fn ch_as_tidal() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/ch-as-tidal.sh")
}

pub(super) struct CloudHypervisor {
    guest: RunningGuest,
    api: ApiClient,
    /// The same API with a short timeout, for [`Vmm::memory_state`].
    probe: ApiClient,
    /// Guest memory asked for so far: boot RAM plus every resize's growth.
    desired_ram: u64,
    /// Numbers the additions, which Cloud Hypervisor does not name.
    next_dimm: u32,
    /// Cloud Hypervisor's own process (the harness's child is `script`), from `vmm.ping`.
    pid: Option<u32>,
    /// Holds the socket; removed with the VM.
    _dir: tempfile::TempDir,
}

impl CloudHypervisor {
    /// Starts `guest` under `binary` with its API on a socket in `dir`.
    pub(super) fn spawn(guest: Guest, binary: &Path, plan: &Plan, dir: tempfile::TempDir) -> Self {
        let socket = dir.path().join("control.sock");
        let guest = guest
            .binary(ch_as_tidal())
            .arg("--cloud-hypervisor")
            .arg(binary)
            .arg("--api-socket")
            .arg(&socket)
            .spawn();
        CloudHypervisor {
            guest,
            api: ApiClient::new(&socket).with_timeout(API_TIMEOUT),
            probe: ApiClient::new(&socket).with_timeout(INFO_TIMEOUT),
            desired_ram: plan.boot_memory,
            next_dimm: 0,
            pid: None,
            _dir: dir,
        }
    }

    /// `vmm.ping`'s answer, which has more than Tidal's (`build_version`, `pid`).
    fn ping(&self) -> Result<Value, VmmError> {
        let body = self
            .api
            .call(Endpoint::Ping, None)
            .map_err(VmmError::ChApi)?;
        serde_json::from_slice(&body).map_err(|e| VmmError::ChApi(ClientError::Decode(e)))
    }
}

/// The version `vmm.ping` says: the build's (`v53.0-246-g…`), else the release's.
fn ping_version(ping: &Value) -> String {
    let version = ping["build_version"]
        .as_str()
        .or_else(|| ping["version"].as_str())
        .unwrap_or("(no version)");
    format!("Cloud Hypervisor {version}")
}

/// `vm.info` as the evidence keeps it: the memory it was configured with and has now, without
/// the device tree.
fn memory_of(info: &Value) -> Value {
    serde_json::json!({
        "memory_actual_size": info["memory_actual_size"],
        "config": { "memory": info["config"]["memory"] },
    })
}

impl Vmm for CloudHypervisor {
    fn guest(&mut self) -> &mut RunningGuest {
        &mut self.guest
    }

    fn kind(&self) -> VmmKind {
        VmmKind::CloudHypervisor
    }

    fn version(&mut self) -> Result<String, VmmError> {
        Ok(ping_version(&self.ping()?))
    }

    fn pid(&mut self) -> Result<u32, VmmError> {
        if let Some(pid) = self.pid {
            return Ok(pid);
        }
        let ping = self.ping()?;
        let pid = ping["pid"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok())
            .ok_or(VmmError::ChNoPid(ping))?;
        Ok(*self.pid.insert(pid))
    }

    /// Cloud Hypervisor raises the guest's ACPI event inside `vm.resize`, so its answer ends
    /// the VMM's share.
    fn add_dimm(&mut self, size: u64) -> Result<Added, VmmError> {
        let desired_ram = self.desired_ram + size;
        let start = Instant::now();
        self.api
            .resize(&ResizeRequest {
                desired_ram: Some(desired_ram),
                ..ResizeRequest::default()
            })
            .map_err(VmmError::ChApi)?;
        let vmm_share = start.elapsed();
        self.desired_ram = desired_ram;
        let id = format!("dimm{}", self.next_dimm);
        self.next_dimm += 1;
        Ok(Added { id, vmm_share })
    }

    fn remove_dimm(&mut self, id: &str) -> Result<Instant, VmmError> {
        Err(VmmError::ChCannotRemove(format!("asked to remove {id}")))
    }

    fn shrink_by(&mut self, size: u64, _cheapest: &str) -> Result<(Duration, String), VmmError> {
        Err(VmmError::ChCannotRemove(format!(
            "asked to shrink by {size} bytes"
        )))
    }

    fn memory_state(&mut self) -> Option<Value> {
        let body = self.probe.call(Endpoint::VmInfo, None).ok()?;
        let info: Value = serde_json::from_slice(&body).ok()?;
        Some(memory_of(&info))
    }

    fn report_triple_fault(&mut self) {
        self.guest.report_triple_fault();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_cloud_hypervisors_ping_and_info() {
        let ping = json!({"build_version": "v53.0-246-gae44c2971-dirty", "version": "54.0.0",
            "pid": 19390, "features": ["io_uring", "kvm"]});
        assert_eq!(
            ping_version(&ping),
            "Cloud Hypervisor v53.0-246-gae44c2971-dirty"
        );
        assert_eq!(
            ping_version(&json!({"version": "48.0.0"})),
            "Cloud Hypervisor 48.0.0"
        );
        let info = json!({"config": {"cpus": {"boot_vcpus": 2}, "memory": {"size": 1_073_741_824_u64,
            "hotplug_method": "Acpi", "hotplug_size": 1_073_741_824_u64}}, "state": "Running",
            "memory_actual_size": 1_207_959_552_u64, "device_tree": {"__serial": {}}});
        assert_eq!(
            memory_of(&info),
            json!({"memory_actual_size": 1_207_959_552_u64, "config": {"memory": {
                "size": 1_073_741_824_u64, "hotplug_method": "Acpi",
                "hotplug_size": 1_073_741_824_u64}}})
        );
    }

    #[test]
    fn finds_the_ch_wrapper() {
        assert!(ch_as_tidal().is_file(), "{}", ch_as_tidal().display());
    }
}
