//! The host memory pool's API (`tidal-pool`, docs/pool.md): its request and answer types,
//! which the pool serves and Tidal's `--pool` and the tests send, and a blocking client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};

use crate::client::{ApiClient, ClientError, EventStream};
use crate::types::LaggedRecord;

/// What a VM tells the pool when it registers (`POST /pool/vms`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub name: String,
    /// Its API socket, where the pool reaches it.
    pub socket: PathBuf,
    /// Its process, whose end releases everything it holds.
    pub pid: u32,
    /// The least it is shrunk to for others, and the most it may hold (bytes).
    pub min: u64,
    pub max: u64,
    /// Higher takes from lower.
    pub priority: i32,
    /// Its fixed boot RAM, and the DIMMs (or removable boot RAM) it has plugged (bytes).
    pub boot: u64,
    pub plugged: u64,
}

/// The body of a reservation, commit, cancellation or release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeRequest {
    pub size: u64,
}

/// `PUT /pool/move`: `size` bytes from VM `from` to VM `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRequest {
    pub from: String,
    pub to: String,
    pub size: u64,
    /// Each VM's `timeout_secs` for its resize (seconds for its guest to answer each DIMM);
    /// absent: each VM's own default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// A move's answer: both VMs' guest RAM after it (their `vm.info`), and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveReport {
    pub from: String,
    pub to: String,
    pub size: u64,
    pub from_ram: u64,
    pub to_ram: u64,
    pub millis: u64,
}

/// `PUT /pool/vms/{name}`: the guest RAM a VM is to have, taken from VMs of lower priority
/// when the budget is short.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredRam {
    pub desired_ram: u64,
    /// As in [`MoveRequest`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// The answer to [`DesiredRam`]: the VM's guest RAM now, and who gave what of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resized {
    pub name: String,
    pub ram: u64,
    pub taken: Vec<Taken>,
}

/// What one VM of lower priority gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taken {
    pub from: String,
    pub size: u64,
}

/// One line of `GET /pool/events`: what changed for which VM, and the figures after it, so
/// that the stream alone can draw each VM's share over time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolEvent {
    /// Numbered from 1 as the pool started.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub vm: String,
    pub what: PoolChange,
    /// The bytes the change was about (a reservation's, a move's).
    pub size: u64,
    /// A move's receiver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Why a request was refused or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// What the VM holds of the budget after the change, and what the pool has free.
    pub held: u64,
    pub free: u64,
}

/// What a [`PoolEvent`] says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolChange {
    Registered,
    Left,
    /// Its process ended, and the sweep released what it held.
    Ended,
    Reserved,
    /// A reservation the budget could not hold.
    Refused,
    Committed,
    Cancelled,
    Released,
    /// A move from this VM to `to` landed, or failed (with `message`).
    Moved,
    MoveFailed,
}

/// What `GET /pool` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub budget: u64,
    pub held: u64,
    pub free: u64,
    pub vms: Vec<PoolVmView>,
}

/// One VM in [`PoolView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolVmView {
    pub name: String,
    pub socket: String,
    pub pid: u32,
    pub boot: u64,
    pub plugged: u64,
    pub reserved: u64,
    /// Set aside for it by a move under way.
    pub promised: u64,
    pub min: u64,
    pub max: u64,
    pub priority: i32,
}

/// What a VM does with part of the pool's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Takes it for a hot-add.
    Reserve,
    /// The reserved hot-add is plugged.
    Commit,
    /// The reserved hot-add did not happen.
    Cancel,
    /// A DIMM is back with the host.
    Release,
}

impl Claim {
    fn action(self) -> &'static str {
        match self {
            Claim::Reserve => "reserve",
            Claim::Commit => "commit",
            Claim::Cancel => "cancel",
            Claim::Release => "release",
        }
    }
}

/// Talks to the pool on one socket, each call bounded by a timeout.
#[derive(Debug, Clone)]
pub struct PoolClient {
    api: ApiClient,
}

impl PoolClient {
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            api: ApiClient::new(socket).with_timeout(timeout),
        }
    }

    pub fn socket(&self) -> &Path {
        self.api.socket()
    }

    /// `GET /pool`.
    pub fn show(&self) -> Result<PoolView, ClientError> {
        let body = self.exchange(Method::GET, "/pool", None)?;
        serde_json::from_slice(&body).map_err(ClientError::Decode)
    }

    /// `POST /pool/vms`.
    pub fn register(&self, registration: &Registration) -> Result<(), ClientError> {
        let body = serde_json::to_vec(registration).map_err(ClientError::Encode)?;
        self.exchange(Method::POST, "/pool/vms", Some(body))
            .map(drop)
    }

    /// `DELETE /pool/vms/{name}`.
    pub fn leave(&self, name: &str) -> Result<(), ClientError> {
        self.exchange(Method::DELETE, &format!("/pool/vms/{name}"), None)
            .map(drop)
    }

    /// `PUT /pool/vms/{name}/{reserve|commit|cancel|release}` of `size` bytes.
    pub fn claim(&self, name: &str, claim: Claim, size: u64) -> Result<(), ClientError> {
        let body = serde_json::to_vec(&SizeRequest { size }).map_err(ClientError::Encode)?;
        let path = format!("/pool/vms/{name}/{}", claim.action());
        self.exchange(Method::PUT, &path, Some(body)).map(drop)
    }

    /// `PUT /pool/move`.
    pub fn move_memory(&self, request: &MoveRequest) -> Result<MoveReport, ClientError> {
        let body = serde_json::to_vec(request).map_err(ClientError::Encode)?;
        let answer = self.exchange(Method::PUT, "/pool/move", Some(body))?;
        serde_json::from_slice(&answer).map_err(ClientError::Decode)
    }

    /// `PUT /pool/vms/{name}`.
    pub fn set_ram(&self, name: &str, request: &DesiredRam) -> Result<Resized, ClientError> {
        let body = serde_json::to_vec(request).map_err(ClientError::Encode)?;
        let answer = self.exchange(Method::PUT, &format!("/pool/vms/{name}"), Some(body))?;
        serde_json::from_slice(&answer).map_err(ClientError::Decode)
    }

    /// `GET /pool/events`: the pool's changes from now on, as they happen.
    pub fn events(&self) -> Result<PoolEvents, ClientError> {
        self.api.subscribe("/pool/events").map(PoolEvents)
    }

    fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::body::Bytes, ClientError> {
        let answer = self.api.send(method, path, body)?;
        if answer.status.is_success() {
            Ok(answer.body)
        } else {
            Err(crate::client::api_error(answer.status, &answer.body))
        }
    }
}

/// The stream of `GET /pool/events`; a reader that fell behind gets
/// [`ClientError::Lagged`] with the count it missed, and the stream goes on.
#[derive(Debug)]
pub struct PoolEvents(EventStream);

impl Iterator for PoolEvents {
    type Item = Result<PoolEvent, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.next_line().map(|line| {
            let line = line?;
            if let Ok(LaggedRecord { lagged }) = serde_json::from_slice(&line) {
                return Err(ClientError::Lagged(lagged));
            }
            serde_json::from_slice(&line).map_err(ClientError::Decode)
        })
    }
}

/// Whether `error` is the pool's 507: its budget is short.
pub fn is_shortage(error: &ClientError) -> bool {
    matches!(error, ClientError::Api { status, .. } if *status == StatusCode::INSUFFICIENT_STORAGE)
}
