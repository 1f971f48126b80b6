//! The VMMs behind one trait, so the measurements are written once: each boots the same guest
//! through the test harness ([`Guest`]) and plugs and unplugs DIMMs its own way. Tidal through
//! its REST API (whose calls return once the guest is done), QEMU through QMP (whose
//! `device_add` and `device_del` return at once; the removal ends with an event), Cloud
//! Hypervisor ([`super::ch`], when the benchmark is given its binary) through its REST API's
//! `vm.resize`, which only adds.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};
use thiserror::Error;
use tidal_api::{
    AddMemoryRequest, ApiClient, ClientError, DimmInfo, DimmState, RemoveMemoryRequest,
    ResizeRequest,
};

use super::ch::CloudHypervisor;
use super::figures::{Figure, Plan};
use super::qmp::{Qmp, QmpError};
use crate::{Guest, RunningGuest};

/// How long the guest may take to eject a DIMM: under emulation, migrating half a GiB out of
/// one takes about a minute.
pub const REMOVE_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest a call of Tidal's API may take: beyond [`REMOVE_TIMEOUT`], so only a server that
/// stopped answering hits it.
const API_TIMEOUT: Duration = Duration::from_secs(900);
/// How long a QMP command's answer may take (QEMU answers at once, the guest does the rest).
const QMP_TIMEOUT: Duration = Duration::from_secs(60);
/// ACPI `_OST` status codes that do not mean an ejection failed: success, and "ejection in
/// progress" (Linux's first answer to an eject request).
const OST_SUCCESS: u64 = 0;
const OST_EJECT_IN_PROGRESS: u64 = 0x84;
/// The `_OST` source code of an eject request.
const OST_EJECT_REQUEST: u64 = 3;
/// How long the evidence of a failed run waits for the VMM's list of DIMMs: a VMM that does
/// not answer at once is part of what failed.
const MEMORY_STATE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a failed run waits for QEMU's `SHUTDOWN` event: QEMU sent it before it exited, so
/// it is either there at once or QEMU still runs.
const SHUTDOWN_EVENT_WAIT: Duration = Duration::from_secs(2);
/// What the guest kernel prints when it resets the machine itself: a panic (the guest runs
/// with `panic=1`, a reboot a second later), a reboot it was asked for, and SysRq's reset.
const GUEST_RESET_LINES: [&str; 3] = [
    "Kernel panic",
    "reboot: Restarting system",
    "sysrq: Resetting",
];

/// Which VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum VmmKind {
    #[serde(rename = "tidal")]
    Tidal,
    #[serde(rename = "qemu")]
    Qemu,
    /// Only when the benchmark is given its binary (`--ch PATH`): Debian does not package it.
    #[serde(rename = "ch")]
    CloudHypervisor,
}

impl VmmKind {
    /// Every VMM, in the order a benchmark round runs them.
    pub const ALL: [VmmKind; 3] = [VmmKind::Tidal, VmmKind::Qemu, VmmKind::CloudHypervisor];

    /// Starts the benchmark's guest under this VMM with a control socket: Tidal's API, QEMU's
    /// QMP, Cloud Hypervisor's API (running `ch_binary`, which only it needs). Does not wait for
    /// the guest ([`RunningGuest::wait_until_booted`] does), so that a boot that fails leaves
    /// its evidence like any other step.
    pub fn spawn(self, plan: &Plan, ch_binary: Option<&Path>) -> Result<Box<dyn Vmm>, VmmError> {
        let dir = tempfile::tempdir().map_err(VmmError::SocketDir)?;
        let socket = dir.path().join("control.sock");
        let guest = Guest::new().cpus(plan.cpus).memory(plan.memory_option());
        Ok(match self {
            VmmKind::Tidal => {
                let guest = guest.arg("--api-socket").arg(&socket).spawn();
                Box::new(Tidal {
                    guest,
                    api: ApiClient::new(&socket).with_timeout(API_TIMEOUT),
                    probe: ApiClient::new(&socket).with_timeout(MEMORY_STATE_TIMEOUT),
                    _dir: dir,
                })
            }
            VmmKind::Qemu => {
                let guest = guest
                    .binary(qemu_as_tidal())
                    .arg("--qmp-socket")
                    .arg(&socket)
                    .spawn();
                Box::new(Qemu {
                    guest,
                    socket,
                    qmp: None,
                    next_dimm: 0,
                    _dir: dir,
                })
            }
            VmmKind::CloudHypervisor => {
                let binary = ch_binary.ok_or(VmmError::NoChBinary)?;
                Box::new(CloudHypervisor::spawn(guest, binary, plan, dir))
            }
        })
    }

    /// The name the JSON file and the evidence's directories use: `tidal`, `qemu`, `ch`.
    pub fn key(self) -> &'static str {
        match self {
            VmmKind::Tidal => "tidal",
            VmmKind::Qemu => "qemu",
            VmmKind::CloudHypervisor => "ch",
        }
    }

    /// The name of its columns in the table: `Tidal`, `QEMU`, `CH`.
    pub fn short_name(self) -> &'static str {
        match self {
            VmmKind::Tidal => "Tidal",
            VmmKind::Qemu => "QEMU",
            VmmKind::CloudHypervisor => "CH",
        }
    }

    /// Whether it can take ACPI memory back: Cloud Hypervisor cannot (a smaller `desired_ram`
    /// is accepted and nothing happens until a reboot), so its runs only add.
    pub fn removes_memory(self) -> bool {
        self != VmmKind::CloudHypervisor
    }

    /// Whether its runs measure `figure`: every figure of a removal (and the memory around
    /// it) only where [`VmmKind::removes_memory`].
    pub fn measures(self, figure: Figure) -> bool {
        self.removes_memory() || !figure.needs_removal()
    }
}

impl fmt::Display for VmmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmmKind::Tidal => "Tidal",
            VmmKind::Qemu => "QEMU",
            VmmKind::CloudHypervisor => "Cloud Hypervisor",
        })
    }
}

/// `ci/qemu-as-tidal.sh`, which runs QEMU with tidal's command line: the one place that knows
/// QEMU's flags.
pub fn qemu_as_tidal() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/qemu-as-tidal.sh")
}

/// Why something done to a VM failed.
#[derive(Debug, Error)]
pub enum VmmError {
    #[error("Tidal's API: {0}")]
    Api(#[from] ClientError),
    #[error("Cloud Hypervisor's API: {0}")]
    ChApi(#[source] ClientError),
    #[error("Cloud Hypervisor's vmm.ping answered without a pid: {0}")]
    ChNoPid(Value),
    #[error("a run of Cloud Hypervisor needs its binary (--ch PATH)")]
    NoChBinary,
    #[error("Cloud Hypervisor cannot remove ACPI memory ({0})")]
    ChCannotRemove(String),
    #[error("cannot create a directory for the VMM's control socket: {0}")]
    SocketDir(#[source] io::Error),
    #[error("QMP: {0}")]
    Qmp(#[from] QmpError),
    #[error("QEMU does not use KVM (query-kvm answered {0})")]
    NoKvm(Value),
    #[error("the guest refused to eject {id} (ACPI _OST status {status:#x})")]
    EjectRefused { id: String, status: u64 },
    #[error("Tidal's event stream ended without {0} being inserted")]
    NoInsertEvent(String),
    #[error("cannot read the VMM's memory map: {0}")]
    Smaps(#[source] io::Error),
    #[error("cannot read which of the VMM's pages are resident: {0}")]
    Pagemap(#[source] io::Error),
    #[error("{0}")]
    Shrink(String),
    #[error("nothing of the guest's fill is resident in new guest RAM of the VMM: the DIMM's mapping was not found")]
    DimmNotFound,
    #[error("guest command {command:?} exited with status {status}: {output}")]
    Guest {
        command: String,
        status: i32,
        output: String,
    },
}

/// A booted guest and the VMM's control of its memory.
pub trait Vmm {
    /// The guest, for shell commands, the VMM's pid and the boot time.
    fn guest(&mut self) -> &mut RunningGuest;

    /// The VMM's name and version, as it reports them.
    fn version(&mut self) -> Result<String, VmmError>;

    /// The VMM's process, whose memory is measured: the harness's child unless the VMM runs
    /// below a wrapper that stays (Cloud Hypervisor under `script`).
    fn pid(&mut self) -> Result<u32, VmmError> {
        Ok(self.guest().pid())
    }

    /// Which VMM this is.
    fn kind(&self) -> VmmKind;

    /// Asks for a DIMM of `size` bytes and returns once the VMM has answered (Tidal: after the
    /// guest's `_OST`; QEMU: at once, the guest onlines it afterwards).
    fn add_dimm(&mut self, size: u64) -> Result<Added, VmmError>;

    /// Asks for DIMM `id` to go and waits until it is gone; returns when that was.
    fn remove_dimm(&mut self, id: &str) -> Result<Instant, VmmError>;

    /// Shrinks the guest by `size` bytes, one of its DIMMs, of which `cheapest` holds the
    /// least: Tidal chooses by itself (`vm.resize`, waiting for the guest), QEMU, which has no
    /// resize, removes `cheapest`. Returns how long it took from the request until the DIMM
    /// was gone, and which one went.
    fn shrink_by(&mut self, size: u64, cheapest: &str) -> Result<(Duration, String), VmmError>;

    /// The VMM's DIMMs as it describes them (Tidal: `vm.memory`; QEMU: `query-memory-devices`),
    /// `None` when it does not answer: for the evidence of a failed run.
    fn memory_state(&mut self) -> Option<Value>;

    /// After a failed run: says so ([`crate::report_triple_fault`]) when the VMM showed that
    /// the guest died of a triple fault, which under nested emulation happens at random.
    fn report_triple_fault(&mut self);
}

/// A DIMM a VMM has plugged.
pub struct Added {
    pub id: String,
    /// The VMM's own share of the hot-add: from the request until it raised the guest's hotplug
    /// interrupt.
    pub vmm_share: Duration,
}

struct Tidal {
    guest: RunningGuest,
    api: ApiClient,
    /// The same API with a short timeout, for [`Vmm::memory_state`].
    probe: ApiClient,
    /// Holds the socket; removed with the VM.
    _dir: tempfile::TempDir,
}

impl Vmm for Tidal {
    fn guest(&mut self) -> &mut RunningGuest {
        &mut self.guest
    }

    fn kind(&self) -> VmmKind {
        VmmKind::Tidal
    }

    fn version(&mut self) -> Result<String, VmmError> {
        Ok(format!("Tidal {}", self.api.ping()?.version))
    }

    /// Times the VMM's share by the DIMM's `inserting` event: Tidal sends it right before it
    /// raises the interrupt, stamped with the host's clock.
    fn add_dimm(&mut self, size: u64) -> Result<Added, VmmError> {
        let events = self.api.events()?;
        let start = SystemTime::now();
        let id = self
            .api
            .add_memory(&AddMemoryRequest {
                size,
                node: 0,
                force: false,
            })?
            .id;
        for event in events {
            let event = event?;
            if event.id == id && event.new_state == DimmState::Inserting {
                let raised = UNIX_EPOCH + Duration::from_micros(event.timestamp_us);
                let vmm_share = raised.duration_since(start).unwrap_or_default();
                return Ok(Added { id, vmm_share });
            }
        }
        Err(VmmError::NoInsertEvent(id))
    }

    fn remove_dimm(&mut self, id: &str) -> Result<Instant, VmmError> {
        self.api.remove_memory(&RemoveMemoryRequest {
            id: id.to_owned(),
            timeout_secs: Some(REMOVE_TIMEOUT.as_secs()),
        })?;
        Ok(Instant::now())
    }

    fn shrink_by(&mut self, size: u64, _cheapest: &str) -> Result<(Duration, String), VmmError> {
        let ids = |dimms: Vec<DimmInfo>| dimms.into_iter().map(|d| d.id).collect::<Vec<_>>();
        let before = ids(self.api.memory()?);
        let total = self.api.info()?.memory_actual_size;
        let start = Instant::now();
        self.api.resize(&ResizeRequest {
            desired_ram: Some(total - size),
            timeout_secs: Some(REMOVE_TIMEOUT.as_secs()),
            wait: true,
            ..ResizeRequest::default()
        })?;
        let took = start.elapsed();
        let after = ids(self.api.memory()?);
        match before
            .into_iter()
            .filter(|id| !after.contains(id))
            .collect::<Vec<_>>()[..]
        {
            [ref removed] => Ok((took, removed.clone())),
            ref removed => Err(VmmError::Shrink(format!(
                "the shrink by {size} bytes removed {removed:?}, not one DIMM"
            ))),
        }
    }

    fn memory_state(&mut self) -> Option<Value> {
        let dimms = self.probe.memory().ok()?;
        serde_json::to_value(dimms).ok()
    }

    /// Tidal logs the triple fault itself.
    fn report_triple_fault(&mut self) {
        self.guest.report_triple_fault();
    }
}

struct Qemu {
    guest: RunningGuest,
    socket: PathBuf,
    /// Connected on first use, so a failure to connect is an error of a run, reported with the
    /// console, rather than of the boot.
    qmp: Option<Qmp>,
    /// Numbers the DIMMs' ids.
    next_dimm: u32,
    /// Holds the socket; removed with the VM.
    _dir: tempfile::TempDir,
}

impl Qemu {
    /// The QMP connection; the first time, also checks that QEMU runs on KVM, since a silent
    /// fallback to TCG would make every figure meaningless.
    fn qmp(&mut self) -> Result<&mut Qmp, VmmError> {
        let qmp = match self.qmp.take() {
            Some(qmp) => qmp,
            None => {
                let mut qmp = Qmp::connect(&self.socket, QMP_TIMEOUT)?;
                let kvm = qmp.execute("query-kvm", None)?;
                if kvm["enabled"] != true {
                    return Err(VmmError::NoKvm(kvm));
                }
                qmp
            }
        };
        Ok(self.qmp.insert(qmp))
    }
}

/// The memory backend of DIMM `id`: the RAM QEMU frees when the backend is deleted.
fn backend_id(id: &str) -> String {
    format!("{id}-ram")
}

/// Whether `event` says DIMM `id` is gone.
fn deleted(event: &Value, id: &str) -> bool {
    event["event"] == "DEVICE_DELETED" && event["data"]["device"] == id
}

/// Why QEMU's `SHUTDOWN` event `event` means the guest died of a triple fault, if it does: QEMU
/// (run with `-no-reboot`) ends on any reset of the guest's, and says `guest-reset` both for
/// a triple fault and for a reset the guest kernel made, which it announces on its `console`.
fn triple_fault_evidence(event: &Value, console: &str) -> Option<String> {
    let reason = &event["data"]["reason"];
    (event["event"] == "SHUTDOWN"
        && reason == "guest-reset"
        && !GUEST_RESET_LINES.iter().any(|line| console.contains(line)))
    .then(|| {
        format!(
            "QEMU ended on the guest's reset (SHUTDOWN event, reason {reason}) and the guest \
             kernel said nothing of a panic or a reboot"
        )
    })
}

/// The `_OST` status with which the guest refused to eject DIMM `id`, if `event` is that.
fn eject_refused(event: &Value, id: &str) -> Option<u64> {
    let info = &event["data"]["info"];
    let status = info["status"].as_u64()?;
    (event["event"] == "ACPI_DEVICE_OST"
        && info["device"] == id
        && info["source"].as_u64() == Some(OST_EJECT_REQUEST)
        && status != OST_SUCCESS
        && status != OST_EJECT_IN_PROGRESS)
        .then_some(status)
}

impl Vmm for Qemu {
    fn guest(&mut self) -> &mut RunningGuest {
        &mut self.guest
    }

    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }

    fn version(&mut self) -> Result<String, VmmError> {
        let version = self.qmp()?.execute("query-version", None)?;
        let qemu = &version["qemu"];
        Ok(format!(
            "QEMU {}.{}.{} ({})",
            qemu["major"],
            qemu["minor"],
            qemu["micro"],
            version["package"].as_str().unwrap_or("").trim()
        ))
    }

    /// QEMU raises the guest's ACPI event inside `device_add`, so its answer ends the VMM's
    /// share.
    fn add_dimm(&mut self, size: u64) -> Result<Added, VmmError> {
        let id = format!("dimm{}", self.next_dimm);
        self.next_dimm += 1;
        let qmp = self.qmp()?;
        let start = Instant::now();
        qmp.execute(
            "object-add",
            Some(json!({ "qom-type": "memory-backend-ram", "id": backend_id(&id), "size": size })),
        )?;
        qmp.execute(
            "device_add",
            Some(json!({ "driver": "pc-dimm", "id": id, "memdev": backend_id(&id) })),
        )?;
        Ok(Added {
            id,
            vmm_share: start.elapsed(),
        })
    }

    /// `device_del`, then the `DEVICE_DELETED` event (the guest has ejected the DIMM), then
    /// `object-del` of its backend so QEMU frees the memory.
    fn remove_dimm(&mut self, id: &str) -> Result<Instant, VmmError> {
        let qmp = self.qmp()?;
        qmp.execute("device_del", Some(json!({ "id": id })))?;
        let event = qmp.wait_event(
            &format!("DEVICE_DELETED for {id}"),
            REMOVE_TIMEOUT,
            |event| deleted(event, id) || eject_refused(event, id).is_some(),
        )?;
        let gone = Instant::now();
        if let Some(status) = eject_refused(&event, id) {
            return Err(VmmError::EjectRefused {
                id: id.to_owned(),
                status,
            });
        }
        qmp.execute("object-del", Some(json!({ "id": backend_id(id) })))?;
        Ok(gone)
    }

    fn shrink_by(&mut self, _size: u64, cheapest: &str) -> Result<(Duration, String), VmmError> {
        let start = Instant::now();
        let gone = self.remove_dimm(cheapest)?;
        Ok((gone.duration_since(start), cheapest.to_owned()))
    }

    /// Only once QMP is connected: a QEMU that never answered has nothing to show.
    fn memory_state(&mut self) -> Option<Value> {
        self.qmp
            .as_mut()?
            .execute("query-memory-devices", None)
            .ok()
    }

    /// QEMU logs nothing of a triple fault, but its `SHUTDOWN` event names the cause. Only
    /// a run that got as far as connecting to QMP can tell.
    fn report_triple_fault(&mut self) {
        let Some(qmp) = self.qmp.as_mut() else {
            return;
        };
        let Ok(event) = qmp.wait_event("SHUTDOWN", SHUTDOWN_EVENT_WAIT, |event| {
            event["event"] == "SHUTDOWN"
        }) else {
            return;
        };
        if let Some(evidence) = triple_fault_evidence(&event, &self.guest.console()) {
            crate::report_triple_fault(&evidence);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_qemus_removal_events() {
        let deleted_event = json!({"event": "DEVICE_DELETED",
            "data": {"device": "dimm1", "path": "/machine/peripheral/dimm1"}});
        assert!(deleted(&deleted_event, "dimm1"));
        assert!(!deleted(&deleted_event, "dimm2"));
        // A child object's deletion names only its path.
        assert!(!deleted(
            &json!({"event": "DEVICE_DELETED", "data": {"path": "/machine/peripheral/dimm1/x"}}),
            "dimm1"
        ));
        let ost = |source: u64, status: u64| {
            json!({"event": "ACPI_DEVICE_OST", "data": {"info": {"device": "dimm1",
                "slot": "1", "slot-type": "DIMM", "source": source, "status": status}}})
        };
        assert_eq!(eject_refused(&ost(3, 0x82), "dimm1"), Some(0x82));
        assert_eq!(eject_refused(&ost(3, 0x84), "dimm1"), None);
        assert_eq!(eject_refused(&ost(3, 0), "dimm1"), None);
        assert_eq!(eject_refused(&ost(1, 1), "dimm1"), None);
        assert_eq!(eject_refused(&ost(3, 0x82), "dimm0"), None);
        assert_eq!(eject_refused(&deleted_event, "dimm1"), None);
    }

    #[test]
    fn tells_a_triple_fault_from_the_guests_own_reset() {
        let shutdown =
            |reason: &str| json!({"event": "SHUTDOWN", "data": {"guest": true, "reason": reason}});
        let silent = "__TIDAL_B_1_16__\n";
        let evidence = triple_fault_evidence(&shutdown("guest-reset"), silent);
        assert!(evidence.is_some_and(|e| e.contains("reason \"guest-reset\"")));
        let panicked = "Kernel panic - not syncing: Out of memory\nRebooting in 1 seconds..";
        assert_eq!(
            triple_fault_evidence(&shutdown("guest-reset"), panicked),
            None
        );
        for reset in [
            "reboot: Restarting system\n",
            "[    4.96] sysrq: Resetting\n",
        ] {
            assert_eq!(triple_fault_evidence(&shutdown("guest-reset"), reset), None);
        }
        assert_eq!(
            triple_fault_evidence(&shutdown("guest-shutdown"), silent),
            None
        );
        assert_eq!(
            triple_fault_evidence(
                &json!({"event": "RESET", "data": {"reason": "guest-reset"}}),
                silent
            ),
            None
        );
    }

    #[test]
    fn finds_the_qemu_wrapper() {
        assert!(qemu_as_tidal().is_file(), "{}", qemu_as_tidal().display());
    }
}
