//! Tidal's REST API. This crate knows nothing of KVM: the VMM implements [`VmApi`] and the
//! server ([`start`]) turns HTTP requests on a Unix socket into calls on it; [`ApiClient`] and
//! the `tidalctl` binary are the other end. `openapi.yaml` beside this crate describes it all.

pub mod client;
pub mod endpoints;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod journal;
pub mod pool;
mod request_clock;
mod routes;
pub mod server;
pub mod size;
mod socket;
mod stopping;
pub mod types;

pub use client::{ApiClient, ClientError, EventStream};
pub use endpoints::Endpoint;
pub use journal::{EventJournal, Record, Subscription};
pub use routes::MAX_EVENT_STREAMS;
pub use server::{
    start, start_on, start_with_limits, ApiServer, BoundSocket, ServerError, ServerLimits,
    ThreadStart,
};
pub use socket::SocketError;
pub use types::*;

/// What the VMM offers the API. Calls may block (a resize waits for the guest), so the server
/// runs them off its I/O threads.
pub trait VmApi: Send + Sync + 'static {
    /// The VM's state and memory totals.
    fn info(&self) -> VmInfo;
    /// Every DIMM, plugged or on its way.
    fn memory(&self) -> Vec<DimmInfo>;
    /// Grows or shrinks the guest's memory to `desired_ram` bytes and waits for the guest to
    /// accept every change, each for up to `timeout_secs` (or the VMM's default).
    fn resize(&self, request: ResizeRequest) -> Result<(), ApiError>;
    /// [`VmApi::resize`] for one NUMA node: its boot RAM plus its DIMMs.
    fn resize_zone(&self, request: ResizeZoneRequest) -> Result<(), ApiError>;
    /// Plugs one DIMM and waits for the guest to accept it.
    fn add_memory(&self, request: AddMemoryRequest) -> Result<DimmInfo, ApiError>;
    /// Asks the guest to eject one DIMM and waits, up to `timeout_secs` (or the VMM's default),
    /// until the memory is back with the host.
    fn remove_memory(&self, request: RemoveMemoryRequest) -> Result<(), ApiError>;
    /// Every hotplug event from now on (with `since`, first those after event `since` that the
    /// VMM still holds): see [`EventJournal::subscribe`].
    fn subscribe(&self, since: Option<u64>) -> Subscription;
    /// Ends the VM and the VMM process, at once and without asking the guest (`vmm.shutdown`):
    /// answered before the server stops.
    fn shutdown(&self);
}
