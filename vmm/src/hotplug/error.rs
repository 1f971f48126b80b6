//! Why a memory hotplug operation failed, as values with what the client needs to act on; the
//! one `From<HotplugError> for ApiError` gives each its HTTP status, so the hotplug logic
//! knows nothing of HTTP.

use std::time::Duration;

use tidal_api::size::format_size;
use tidal_api::{ApiError, ErrorKind};
use tidal_devices::memory_hotplug::HotplugError as SlotError;

use super::{ost_meaning, MapError};

/// What the guest was asked to do with a DIMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Insertion,
    Removal,
}

#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    #[error("this VM has no hotplug region: start it with --memory size=...,hotplug_size=SIZE")]
    NoRegion,
    #[error("node {0} has no hotplug memory: give it hotplug_size=SIZE in its --numa")]
    NoShare(u32),
    #[error("node {node} does not exist: this VM has NUMA nodes 0 to {}", .nodes.saturating_sub(1))]
    NoSuchNode { node: u32, nodes: usize },
    #[error(
        "no memory zone {zone}: a zone is a NUMA node, named by its id (0 to {})",
        .nodes.saturating_sub(1)
    )]
    NoSuchZone { zone: String, nodes: usize },
    #[error("no DIMM called '{0}'")]
    NoSuchDimm(String),
    /// The request asks for what this VM can never do; the message says what it can.
    #[error("{0}")]
    Invalid(String),
    #[error("every DIMM slot is in use: remove a DIMM or start the VM with more slots")]
    NoFreeSlot,
    #[error(
        "{} fits in the hotplug region only as {pieces} DIMMs, and {free} slots are free: \
         remove a DIMM or start the VM with more slots",
        format_size(*.size)
    )]
    SlotsShort {
        size: u64,
        pieces: usize,
        free: usize,
    },
    #[error(
        "{} requested but {share} has {} free (in one piece: maybe less)",
        format_size(*.size),
        format_size(*.free)
    )]
    RegionFull { size: u64, share: String, free: u64 },
    /// The host has less memory available (or fewer free huge pages) than the request adds.
    #[error("{0}")]
    HostShort(String),
    /// The host memory pool did not grant the DIMM (`--pool`).
    #[error(transparent)]
    Pool(crate::pool_link::PoolError),
    #[error(transparent)]
    Map(#[from] MapError),
    #[error(
        "another memory hotplug operation has been in progress for over {} s; try again when \
         it is done",
        .0.as_secs()
    )]
    Busy(Duration),
    #[error("cannot remove {id}: {source}")]
    NotRemovable { id: String, source: SlotError },
    #[error("{}", timeout_text(.id, *.request, *.waited))]
    Timeout {
        id: String,
        request: Request,
        waited: Duration,
    },
    #[error("{}", refusal_text(.id, *.request, *.status))]
    GuestRefused {
        id: String,
        request: Request,
        status: u32,
    },
    #[error("the VM is stopping: {0}")]
    Stopping(String),
    #[error("the VM is stopping ({why}) before the guest answered for {id}")]
    StoppedWaiting { why: String, id: String },
    #[error("{0} lock poisoned")]
    Poisoned(&'static str),
    #[error("{0} vanished")]
    Vanished(String),
    #[error("the plugged DIMMs hold less than the resize would remove")]
    Unplanned,
    #[error(transparent)]
    Slot(SlotError),
    /// Part of the operation was done, then `source` stopped it.
    #[error("{done}; then {source}")]
    Partial {
        done: String,
        source: Box<HotplugError>,
    },
    /// The guest refused a shrink (`source`) after it got the DIMM that keeps the shrink's
    /// overshoot; `undone` says what became of that DIMM.
    #[error("{source}; {undone}")]
    RolledBack {
        source: Box<HotplugError>,
        undone: String,
    },
}

impl HotplugError {
    /// This error after `done` (what the operation had done by then).
    pub fn after(self, done: String) -> Self {
        Self::Partial {
            done,
            source: Box::new(self),
        }
    }

    /// Whether the guest refused: its answer is final, unlike a timeout's silence.
    pub fn is_refusal(&self) -> bool {
        matches!(self.kind(), ErrorKind::GuestRefused)
    }

    fn kind(&self) -> ErrorKind {
        match self {
            Self::NoRegion
            | Self::NoShare(_)
            | Self::Invalid(_)
            | Self::NoFreeSlot
            | Self::SlotsShort { .. }
            | Self::RegionFull { .. } => ErrorKind::BadRequest,
            Self::NoSuchNode { .. } | Self::NoSuchZone { .. } | Self::NoSuchDimm(_) => {
                ErrorKind::NotFound
            }
            Self::HostShort(_) => ErrorKind::HostMemory,
            Self::Pool(e) if e.is_shortage() => ErrorKind::HostMemory,
            Self::Pool(_) => ErrorKind::Unavailable,
            Self::Map(e) if e.is_host_shortage() => ErrorKind::HostMemory,
            Self::Busy(_) | Self::NotRemovable { .. } => ErrorKind::Conflict,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::GuestRefused { .. } => ErrorKind::GuestRefused,
            Self::Partial { source, .. } | Self::RolledBack { source, .. } => source.kind(),
            Self::Map(_)
            | Self::Stopping(_)
            | Self::StoppedWaiting { .. }
            | Self::Poisoned(_)
            | Self::Vanished(_)
            | Self::Unplanned
            | Self::Slot(_) => ErrorKind::Internal,
        }
    }
}

impl From<HotplugError> for ApiError {
    fn from(error: HotplugError) -> Self {
        ApiError::new(error.kind(), error.to_string())
    }
}

fn timeout_text(id: &str, request: Request, waited: Duration) -> String {
    let secs = waited.as_secs();
    match request {
        Request::Insertion => format!(
            "the guest did not answer the insertion of {id} within {secs} s; it stays plugged \
             (state inserting): does the guest kernel support ACPI memory hotplug?"
        ),
        Request::Removal => format!(
            "the guest did not eject {id} within {secs} s; it stays plugged and in use (the \
             guest may still finish; retry to ask again)"
        ),
    }
}

fn refusal_text(id: &str, request: Request, status: u32) -> String {
    match request {
        Request::Insertion => format!("the guest refused {id}: {}", ost_meaning(status)),
        Request::Removal => format!(
            "the guest refused to eject {id}: {}; it stays plugged and usable",
            ost_meaning(status)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status_and_a_partial_one_its_cause() {
        let status = |e: HotplugError| ErrorKind::http_status(ApiError::from(e).kind);
        assert_eq!(status(HotplugError::NoFreeSlot), 400);
        assert_eq!(status(HotplugError::NoSuchDimm("dimm9".into())), 404);
        assert_eq!(status(HotplugError::Busy(Duration::from_secs(3))), 409);
        let refused = HotplugError::GuestRefused {
            id: "dimm1".into(),
            request: Request::Removal,
            status: 0x81,
        };
        let partial = ApiError::from(refused.after("plugged dimm2".into()));
        assert_eq!(partial.kind.http_status(), 422);
        assert_eq!(
            partial.message,
            "plugged dimm2; then the guest refused to eject dimm1: _OST status 0x81 (device in \
             use by application); it stays plugged and usable"
        );
        let timeout = ApiError::from(HotplugError::Timeout {
            id: "dimm0".into(),
            request: Request::Insertion,
            waited: Duration::from_secs(5),
        });
        assert_eq!(timeout.kind.http_status(), 504);
        assert!(
            timeout.message.contains("within 5 s"),
            "{}",
            timeout.message
        );
        assert_eq!(status(HotplugError::HostShort("short".into())), 507);
    }
}
