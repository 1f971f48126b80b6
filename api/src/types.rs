//! The JSON bodies of requests and responses. Field names follow Cloud Hypervisor's API where
//! it has the same thing, so tools written for it fit.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingResponse {
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// What the VM was started with, in Cloud Hypervisor's shape (a subset of its `VmConfig`).
    pub config: VmConfigInfo,
    pub state: VmState,
    /// Bytes the guest has now: boot RAM plus the DIMMs it accepted (and those it is ejecting).
    pub memory_actual_size: u64,
    /// Bytes the VM is on its way to: boot RAM plus every DIMM plugged and not being removed.
    /// Equal to `memory_actual_size` once the guest has answered every change.
    pub desired_ram: u64,
    pub memory: MemoryInfo,
    pub cpus: u32,
}

/// Where the VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// The guest runs.
    Running,
    /// The VM is stopping (a signal, a guest panic, a power-off): nothing new starts.
    Shutdown,
}

/// The part of Cloud Hypervisor's `VmConfig` that Tidal has, with its field names, so that
/// clients written for it (Kata Containers' driver) read what they expect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfigInfo {
    pub cpus: CpusConfigInfo,
    pub memory: MemoryConfigInfo,
    pub payload: PayloadInfo,
    pub serial: ConsoleInfo,
    pub console: ConsoleInfo,
}

#[derive(Debug, Clone, Default, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpusConfigInfo {
    pub boot_vcpus: u32,
    /// The same as `boot_vcpus`: Tidal does not hotplug vCPUs.
    pub max_vcpus: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryConfigInfo {
    /// The memory the VM is configured for now: the `desired_ram` it is on its way to, as
    /// Cloud Hypervisor reports the last resize here.
    pub size: u64,
    /// The hotplug region's size (0: no hotplug).
    pub hotplug_size: u64,
    /// Always "Acpi": DIMMs through ACPI memory devices.
    pub hotplug_method: String,
    /// Every node's memory is a shared memfd.
    pub shared: bool,
    /// Every node's memory comes from huge pages.
    pub hugepages: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadInfo {
    pub kernel: String,
    #[serde(default)]
    pub initramfs: Option<String>,
    /// The kernel command line the guest got, with what Tidal appended.
    pub cmdline: String,
}

/// A console as Cloud Hypervisor describes one: its `mode` ("Tty", "File", "Off") and file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleInfo {
    pub mode: String,
    #[serde(default)]
    pub file: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryInfo {
    /// Boot RAM in bytes.
    pub boot: u64,
    /// Bytes in plugged DIMMs.
    pub hotplugged: u64,
    /// The hotplug region's size: the most that can ever be plugged (0: no hotplug).
    pub hotplug_size: u64,
    /// DIMM slots in the machine.
    pub slots: u32,
    /// Block size that every DIMM's size is a multiple of.
    pub block_size: u64,
    /// Bytes in DIMMs the guest has been told of and has not accepted yet.
    #[serde(default)]
    pub inserting: u64,
    /// Bytes in DIMMs the guest has been asked to eject and still holds.
    #[serde(default)]
    pub removing: u64,
    /// The same per NUMA node, by node id (one node without `--numa`).
    #[serde(default)]
    pub nodes: Vec<NodeMemory>,
}

/// One NUMA node's memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMemory {
    /// The node's id (its proximity domain).
    pub id: u32,
    /// Its boot RAM in bytes.
    pub boot: u64,
    /// Bytes in plugged DIMMs of this node.
    pub hotplugged: u64,
    /// Its share of the hotplug region (0: nothing can be added to it).
    pub hotplug_size: u64,
    /// The host memory behind its boot RAM and its DIMMs.
    pub backend: MemoryBackendInfo,
}

/// The host memory behind a node's RAM, as its `--memory` or `--numa` keys chose it; all
/// defaults: private anonymous memory in base pages, allocated as the guest touches it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBackendInfo {
    /// A memfd mapped shared (`shared=on`).
    pub shared: bool,
    /// Bytes per page from the host's huge page pool (`hugepages=on`); null: base pages.
    pub hugepage_size: Option<u64>,
    /// Allocated when mapped (`prefault=on`).
    pub prefault: bool,
    /// The host NUMA node it is bound to (`host_node=N`); null: any.
    pub host_node: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DimmState {
    /// No DIMM (only in events: before a plug, after an eject).
    Empty,
    /// Plugged; the guest has been told and has not answered yet.
    Inserting,
    /// The guest accepted it (`_OST` success).
    Added,
    /// The guest reported a failure for the insertion.
    Failed,
    /// The guest has been asked to eject it.
    Removing,
}

/// One `_OST` report from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OstStatus {
    /// ACPI notification the report answers: 1 device check (insert), 3 eject request.
    pub event: u32,
    /// 0 success; 0x80.. failures, 0x84 eject in progress (ACPI spec, `_OST`).
    pub status: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DimmInfo {
    /// Stable name, e.g. "dimm0".
    pub id: String,
    pub slot: u32,
    /// NUMA node (proximity domain).
    pub node: u32,
    /// Guest physical base address.
    pub base: u64,
    pub size: u64,
    pub state: DimmState,
    pub last_ost: Option<OstStatus>,
}

/// The longest a request may ask to wait for the guest.
pub const MAX_TIMEOUT_SECS: u64 = 3600;

/// Cloud Hypervisor's `vm.resize` body, with Tidal's own fields beside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeRequest {
    /// Total guest memory wanted, in bytes: a multiple of the block size between boot RAM and
    /// boot RAM plus the hotplug region. Absent or null: memory stays as it is.
    #[serde(default)]
    pub desired_ram: Option<u64>,
    /// vCPUs wanted: absent, null or the VM's count (Tidal does not hotplug vCPUs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_vcpus: Option<u32>,
    /// Balloon size wanted: absent, null or 0 (Tidal has no balloon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_balloon: Option<u64>,
    /// Seconds to wait for the guest's answer to each DIMM; the VMM's default when absent, at
    /// most [`MAX_TIMEOUT_SECS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Add memory even when the host has less available than it asks for (the VM may then
    /// be killed by the host's OOM killer once the guest uses it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Answer once the guest has answered every DIMM the resize plugged or asked back (its
    /// `_OST`), not as soon as it has been told, as Cloud Hypervisor does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wait: bool,
}

/// A NUMA node's id as `vm.resize-zone` takes it: a number, or the number as a string (Cloud
/// Hypervisor names memory zones with strings).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ZoneId {
    Node(u32),
    Name(String),
}

impl ZoneId {
    /// The node the id names, if it names one by number.
    pub fn node(&self) -> Option<u32> {
        match self {
            ZoneId::Node(node) => Some(*node),
            ZoneId::Name(name) => name.parse().ok(),
        }
    }
}

impl std::fmt::Display for ZoneId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ZoneId::Node(node) => write!(f, "{node}"),
            ZoneId::Name(name) => write!(f, "'{name}'"),
        }
    }
}

/// Grow or shrink one NUMA node ("zone" in Cloud Hypervisor's name for the call).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeZoneRequest {
    /// The node's id.
    pub id: ZoneId,
    /// The node's memory wanted (boot RAM plus its DIMMs), in bytes.
    pub desired_ram: u64,
    /// Seconds to wait for the guest's answer to each DIMM; the VMM's default when absent, at
    /// most [`MAX_TIMEOUT_SECS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Add memory even when the host has less available than it asks for (the VM may then
    /// be killed by the host's OOM killer once the guest uses it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// Answer once the guest has answered every DIMM the resize plugged or asked back (its
    /// `_OST`), not as soon as it has been told, as Cloud Hypervisor does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wait: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveMemoryRequest {
    /// The DIMM's id, as `vm.memory` lists it.
    pub id: String,
    /// Seconds to wait for the guest to eject it; the VMM's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// One line of the `events` stream: a DIMM changed state, or the guest reported `_OST`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotplugEvent {
    /// The event's number: 1 for the VM's first, one more for each after it (`?since=` this
    /// to have the events after it again).
    pub seq: u64,
    /// The DIMM's id.
    pub id: String,
    pub slot: u32,
    pub node: u32,
    pub base: u64,
    pub size: u64,
    pub old_state: DimmState,
    pub new_state: DimmState,
    /// The `_OST` report that caused this event, if one did.
    pub ost: Option<OstStatus>,
    /// When it happened, in microseconds since the Unix epoch (fine enough to time the VMM's
    /// own share of an operation).
    pub timestamp_us: u64,
}

/// The line of the `events` stream that stands for events the reader will not see: it fell
/// too far behind, or asked for events (`?since=`) older than the history holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaggedRecord {
    /// How many events were skipped.
    pub lagged: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMemoryRequest {
    /// DIMM size in bytes: a multiple of the block size.
    pub size: u64,
    /// NUMA node; 0 when absent.
    #[serde(default)]
    pub node: u32,
    /// Add memory even when the host has less available than it asks for (the VM may then
    /// be killed by the host's OOM killer once the guest uses it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// What kind of failure, which decides the HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong (400).
    BadRequest,
    /// Nothing with that name (404).
    NotFound,
    /// Another hotplug operation is in flight (409).
    Conflict,
    /// The guest said no (422).
    GuestRefused,
    /// The guest did not answer in time (504).
    Timeout,
    /// The host has less memory available than the request would add (507).
    HostMemory,
    /// Something the VMM needs for the request cannot be reached (503): the host memory pool.
    Unavailable,
    /// Tidal failed (500).
    Internal,
}

impl ErrorKind {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::GuestRefused => 422,
            ErrorKind::Timeout => 504,
            ErrorKind::HostMemory => 507,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }
}

/// An error for the client: its kind and one clear sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// The body of every error response: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
