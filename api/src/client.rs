//! A blocking client for the API over its Unix socket, for `tidalctl` and for tests that drive
//! a VM: one HTTP/1.1 exchange per call on a fresh connection.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use log::debug;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;
use tokio::net::UnixStream;
use tokio::runtime::Runtime;

use crate::endpoints::Endpoint;
use crate::types::{
    AddMemoryRequest, DimmInfo, ErrorBody, HotplugEvent, LaggedRecord, PingResponse,
    RemoveMemoryRequest, ResizeRequest, ResizeZoneRequest, VmInfo,
};

/// Why a call failed. [`ClientError::Api`] is the server's own answer; the rest are failures to
/// get one.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The server answered with an error; `message` is its `{"error": ...}` text.
    #[error("{message}")]
    Api { status: StatusCode, message: String },
    #[error("cannot connect to API socket {}: {source}", socket.display())]
    Connect { socket: PathBuf, source: io::Error },
    #[error("HTTP exchange on API socket {} failed: {source}", socket.display())]
    Http {
        socket: PathBuf,
        source: hyper::Error,
    },
    #[error("cannot build the request: {0}")]
    Request(#[from] http::Error),
    #[error("cannot encode the request body: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("the server's answer is not what was expected: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("cannot start the client's runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("no answer on API socket {} within {timeout:?}", socket.display())]
    Timeout { socket: PathBuf, timeout: Duration },
    /// The events stream skipped this many events (the reader fell behind, or asked for
    /// more history than the server holds); the stream goes on after it.
    #[error("the events stream skipped {0} events")]
    Lagged(u64),
}

/// A response of any status, as received.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Talks to the API server listening on one socket.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    /// The longest a call may take, connection to last byte; `None` waits as long as it takes.
    timeout: Option<Duration>,
}

impl ApiClient {
    /// A client that waits as long as each call takes (the server bounds its own operations).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: None,
        }
    }

    /// The same client, giving up on any call (except the events stream) after `timeout`: for
    /// callers that must not hang on a server that has stopped answering.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The socket this client connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /api/v1/vmm.ping`.
    pub fn ping(&self) -> Result<PingResponse, ClientError> {
        decode(&self.call(Endpoint::Ping, None)?)
    }

    /// `PUT /api/v1/vmm.shutdown`; returns once the VMM has been told to stop.
    pub fn shutdown(&self) -> Result<(), ClientError> {
        self.call(Endpoint::Shutdown, None).map(drop)
    }

    /// `GET /api/v1/vm.info`.
    pub fn info(&self) -> Result<VmInfo, ClientError> {
        decode(&self.call(Endpoint::VmInfo, None)?)
    }

    /// `GET /api/v1/vm.memory`.
    pub fn memory(&self) -> Result<Vec<DimmInfo>, ClientError> {
        decode(&self.call(Endpoint::VmMemory, None)?)
    }

    /// `PUT /api/v1/vm.resize`; returns once the VMM has finished (or given up).
    pub fn resize(&self, request: &ResizeRequest) -> Result<(), ClientError> {
        self.call(Endpoint::VmResize, Some(encode(request)?))
            .map(drop)
    }

    /// `PUT /api/v1/vm.resize-zone`; returns once the VMM has finished (or given up).
    pub fn resize_zone(&self, request: &ResizeZoneRequest) -> Result<(), ClientError> {
        self.call(Endpoint::VmResizeZone, Some(encode(request)?))
            .map(drop)
    }

    /// `PUT /api/v1/vm.memory.add`; returns the new DIMM.
    pub fn add_memory(&self, request: &AddMemoryRequest) -> Result<DimmInfo, ClientError> {
        decode(&self.call(Endpoint::VmAddMemory, Some(encode(request)?))?)
    }

    /// `PUT /api/v1/vm.memory.remove`; returns once the guest has ejected the DIMM.
    pub fn remove_memory(&self, request: &RemoveMemoryRequest) -> Result<(), ClientError> {
        self.call(Endpoint::VmRemoveMemory, Some(encode(request)?))
            .map(drop)
    }

    /// `GET /api/v1/events`: subscribes and returns the stream, which yields each event as it
    /// happens. Returns as soon as the server has accepted the subscription, so events from then
    /// on are not missed.
    pub fn events(&self) -> Result<EventStream, ClientError> {
        self.subscribe(Endpoint::Events.path())
    }

    /// `GET /api/v1/events?since=N`: [`ApiClient::events`], after first the events numbered above
    /// `seq` that the server still holds (a reconnecting reader's way to miss nothing).
    pub fn events_since(&self, seq: u64) -> Result<EventStream, ClientError> {
        self.subscribe(&format!("{}?since={seq}", Endpoint::Events.path()))
    }

    /// `GET path` of a stream of JSON lines (the VMM's events, the pool's), read line by line
    /// from the [`EventStream`].
    pub fn subscribe(&self, path: &str) -> Result<EventStream, ClientError> {
        let request = build_request(Method::GET, path, None)?;
        let runtime = runtime()?;
        let response = runtime.block_on(self.open(request))?;
        let status = response.status();
        let body = response.into_body();
        if !status.is_success() {
            let body = runtime.block_on(self.collect(body))?;
            return Err(api_error(status, &body));
        }
        Ok(EventStream {
            runtime,
            body,
            socket: self.socket.clone(),
            received: Vec::new(),
            ended: false,
        })
    }

    /// Calls `endpoint` with an optional JSON body and returns the body of a successful answer
    /// as sent; an error status becomes [`ClientError::Api`] with the server's message.
    pub fn call(&self, endpoint: Endpoint, body: Option<Vec<u8>>) -> Result<Bytes, ClientError> {
        let response = self.send(endpoint.method(), endpoint.path(), body)?;
        if response.status.is_success() {
            Ok(response.body)
        } else {
            Err(api_error(response.status, &response.body))
        }
    }

    /// Sends any request and returns the answer whatever its status.
    pub fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, ClientError> {
        let request = build_request(method, path, body)?;
        let exchange = async {
            let response = self.open(request).await?;
            let (parts, body) = response.into_parts();
            Ok(RawResponse {
                status: parts.status,
                headers: parts.headers,
                body: self.collect(body).await?,
            })
        };
        runtime()?.block_on(async {
            match self.timeout {
                None => exchange.await,
                Some(timeout) => tokio::time::timeout(timeout, exchange)
                    .await
                    .unwrap_or_else(|_| {
                        Err(ClientError::Timeout {
                            socket: self.socket.clone(),
                            timeout,
                        })
                    }),
            }
        })
    }

    /// Connects, sends `request` and returns the answer once its head has arrived; the body
    /// arrives while the runtime this runs on is driven.
    async fn open(&self, request: Request<Full<Bytes>>) -> Result<Response<Incoming>, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| http_error(&self.socket, source))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!("API connection closed with an error: {error}");
            }
        });
        sender
            .send_request(request)
            .await
            .map_err(|source| http_error(&self.socket, source))
    }

    /// The whole of a body.
    async fn collect(&self, body: Incoming) -> Result<Bytes, ClientError> {
        body.collect()
            .await
            .map(|body| body.to_bytes())
            .map_err(|source| http_error(&self.socket, source))
    }
}

/// The events stream as it arrives, over its own connection, which stays open until this is
/// dropped. As an [`Iterator`] it yields each event, parsed; [`EventStream::next_line`] yields
/// them as sent. Both block until the next event and end when the server ends the stream.
#[derive(Debug)]
pub struct EventStream {
    /// Drives the connection, whenever the stream waits for the next line.
    runtime: Runtime,
    body: Incoming,
    socket: PathBuf,
    /// What has arrived and is not yet returned: complete lines, then the start of the next.
    received: Vec<u8>,
    /// The body is over (or broke): nothing more will arrive.
    ended: bool,
}

impl EventStream {
    /// The next event's JSON line as the server sent it, without its newline; `None` once the
    /// server has ended the stream. Blank lines are skipped. After an error the stream is over.
    pub fn next_line(&mut self) -> Option<Result<Vec<u8>, ClientError>> {
        loop {
            if let Some(end) = self.received.iter().position(|&byte| byte == b'\n') {
                let line: Vec<u8> = self.received.drain(..=end).take(end).collect();
                if !line.trim_ascii().is_empty() {
                    return Some(Ok(line));
                }
                continue;
            }
            if self.ended {
                // A last line without its newline still counts.
                let rest = std::mem::take(&mut self.received);
                return (!rest.trim_ascii().is_empty()).then_some(Ok(rest));
            }
            match self.runtime.block_on(self.body.frame()) {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.received.extend_from_slice(data);
                    }
                }
                Some(Err(source)) => {
                    self.ended = true;
                    self.received.clear();
                    return Some(Err(http_error(&self.socket, source)));
                }
                None => self.ended = true,
            }
        }
    }
}

impl Iterator for EventStream {
    type Item = Result<HotplugEvent, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_line().map(|line| {
            let line = line?;
            match serde_json::from_slice::<LaggedRecord>(&line) {
                Ok(LaggedRecord { lagged }) => Err(ClientError::Lagged(lagged)),
                Err(_) => decode(&line),
            }
        })
    }
}

fn build_request(
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Request<Full<Bytes>>, ClientError> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "localhost");
    if body.is_some() {
        request = request.header(CONTENT_TYPE, "application/json");
    }
    Ok(request.body(Full::new(Bytes::from(body.unwrap_or_default())))?)
}

/// A runtime for one exchange (or one events stream) on the calling thread.
fn runtime() -> Result<Runtime, ClientError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(ClientError::Runtime)
}

/// [`ClientError::Api`] from an error answer, with the server's message if it sent one.
pub(crate) fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let message = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => error,
        Err(_) => format!(
            "{status} from the server: {}",
            String::from_utf8_lossy(body)
        ),
    };
    ClientError::Api { status, message }
}

fn http_error(socket: &Path, source: hyper::Error) -> ClientError {
    ClientError::Http {
        socket: socket.to_owned(),
        source,
    }
}

fn encode(request: &impl Serialize) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(request).map_err(ClientError::Encode)
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(body).map_err(ClientError::Decode)
}
