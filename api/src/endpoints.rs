//! The API's endpoints in one list, so that the server's router, the client and the test that
//! holds the server to `openapi.yaml` all speak of the same paths and methods.

use http::Method;

/// One operation of the API. Names and paths follow Cloud Hypervisor's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /api/v1/vmm.ping`: the server answers and says its version.
    Ping,
    /// `PUT /api/v1/vmm.shutdown`: end the VM and the VMM.
    Shutdown,
    /// `GET /api/v1/vm.info`: the VM's state and memory totals.
    VmInfo,
    /// `GET /api/v1/vm.memory`: every DIMM.
    VmMemory,
    /// `PUT /api/v1/vm.resize`: grow or shrink the guest's memory to a total.
    VmResize,
    /// `PUT /api/v1/vm.resize-zone`: grow or shrink one NUMA node's memory to a total.
    VmResizeZone,
    /// `PUT /api/v1/vm.memory.add`: plug one DIMM.
    VmAddMemory,
    /// `PUT /api/v1/vm.memory.remove`: eject one DIMM.
    VmRemoveMemory,
    /// `GET /api/v1/events`: hotplug events as they happen, one JSON object per line
    /// (`application/x-ndjson`), for as long as the client reads.
    Events,
}

impl Endpoint {
    /// Every endpoint the server serves; the router is built from this list.
    pub const ALL: [Endpoint; 9] = [
        Endpoint::Ping,
        Endpoint::Shutdown,
        Endpoint::VmInfo,
        Endpoint::VmMemory,
        Endpoint::VmResize,
        Endpoint::VmResizeZone,
        Endpoint::VmAddMemory,
        Endpoint::VmRemoveMemory,
        Endpoint::Events,
    ];

    /// The request path.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Ping => "/api/v1/vmm.ping",
            Endpoint::Shutdown => "/api/v1/vmm.shutdown",
            Endpoint::VmInfo => "/api/v1/vm.info",
            Endpoint::VmMemory => "/api/v1/vm.memory",
            Endpoint::VmResize => "/api/v1/vm.resize",
            Endpoint::VmResizeZone => "/api/v1/vm.resize-zone",
            Endpoint::VmAddMemory => "/api/v1/vm.memory.add",
            Endpoint::VmRemoveMemory => "/api/v1/vm.memory.remove",
            Endpoint::Events => "/api/v1/events",
        }
    }

    /// The HTTP method: `GET` to read, `PUT` to change.
    pub fn method(self) -> Method {
        match self {
            Endpoint::Ping | Endpoint::VmInfo | Endpoint::VmMemory | Endpoint::Events => {
                Method::GET
            }
            Endpoint::Shutdown
            | Endpoint::VmResize
            | Endpoint::VmResizeZone
            | Endpoint::VmAddMemory
            | Endpoint::VmRemoveMemory => Method::PUT,
        }
    }
}
