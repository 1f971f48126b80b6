//! The API server's life: [`start`] binds the socket and serves it from a dedicated thread
//! named `api`; the returned [`ApiServer`] stops it and removes the socket when dropped.
//!
//! Connections are served by hyper's HTTP/1 server within [`ServerLimits`], so that a client
//! that is slow, stuck or gone cannot hold the server: its request head must arrive within a
//! time and a size, its body within a time, and only so many connections are served at once
//! (a few more wait a moment for a free one; the rest are answered 503 at once).
//! How long an answer takes is not limited: a resize may wait minutes for the guest.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use log::{debug, error, info};
use thiserror::Error;
use tokio::net::{UnixListener, UnixStream};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::request_clock::{self, RequestClock};
use crate::routes;
use crate::socket::{SocketError, SocketFile};
use crate::stopping::Stopping;
use crate::types::ErrorBody;
use crate::VmApi;

/// How long a stopping server lets requests in flight finish before cutting them off. A
/// resize may wait much longer for the guest; its answer is then lost, not its effect.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How long a connection beyond [`ServerLimits::max_connections`] waits for a served one to
/// close before it is answered 503. Served connections close when their client does, or at
/// the head and body timeouts: a short wait covers clients that open one connection per call.
pub const SLOT_WAIT: Duration = Duration::from_secs(1);

/// How long to wait before accepting again after `accept` failed (as axum and hyper do): the
/// usual cause, running out of file descriptors, takes a while to go away.
const ACCEPT_RETRY: Duration = Duration::from_secs(1);

/// How long a client may take to send a request's line and headers: from the connection's
/// start for its first request, from the first byte for a later one (an idle kept-alive
/// connection stays open, see [`request_clock`]). `tidalctl` and `curl` send them in one
/// write over a local socket, so anything slower is stuck or hostile; 10 s leaves room for a
/// loaded host yet frees the connection soon.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client may take to send a whole request body once its headers are in. Bodies
/// are a few dozen bytes (at most 64 KiB): like the headers, they arrive at once or never.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request line plus headers accepted, in bytes. Our requests' heads are about
/// 100 bytes and curl's about 150; 16 KiB leaves room for any proxy or tool that adds
/// headers, where hyper would otherwise buffer up to about 400 KiB per connection.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// How many connections are served at once. Each may hold a thread for a VMM call that waits
/// for the guest, so this also bounds those threads. The socket is the VMM owner's alone and
/// a tool opens one connection per call, so 64 is far above any real use.
pub const MAX_CONNECTIONS: usize = 64;

/// What one client may take of the server. [`Default`] gives the limits the VMM uses; tests
/// shorten the timeouts through [`start_with_limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// How long a request's line and headers may take to arrive (for a kept-alive
    /// connection's later requests, from their first byte); past it the connection is closed
    /// without an answer.
    pub header_read_timeout: Duration,
    /// How long a request's body may take to arrive, counted from its headers. Past it the
    /// request is answered `408 Request Timeout` and the connection closed.
    pub body_read_timeout: Duration,
    /// The largest request line plus headers, in bytes; a bigger head is answered
    /// `431 Request Header Fields Too Large` and the connection closed.
    pub max_header_bytes: usize,
    /// How many connections are served at once (at least one). As many more may wait up to
    /// [`SLOT_WAIT`] for a served one to close (the timeouts above free the connection of any
    /// client that is stuck or gone); past that, or beyond them, a connection is answered
    /// `503 Service Unavailable` and closed.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_read_timeout: BODY_READ_TIMEOUT,
            max_header_bytes: MAX_HEADER_BYTES,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error("cannot start the API server's runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("cannot serve API socket: {0}")]
    Listener(#[source] io::Error),
    #[error("cannot start the API server thread: {0}")]
    Thread(#[source] io::Error),
}

/// A running API server. Dropping it (or calling [`ApiServer::shutdown`]) stops the server,
/// waits for its thread and removes the socket file.
#[derive(Debug)]
pub struct ApiServer {
    socket: SocketFile,
    /// Set to true to stop the server.
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

/// Runs first in every thread the server starts (the `api` thread and each `api-vm-call`
/// thread), before it does anything else: where the VMM confines them (seccomp).
pub type ThreadStart = Arc<dyn Fn() + Send + Sync>;

/// Serves the API on a Unix socket at `socket` (created with mode 0600) until the returned
/// handle is dropped, within the default [`ServerLimits`]. Calls into `vm` run on a blocking
/// pool, so a slow resize does not hold up other requests. `thread_start` runs at the start of
/// each of the server's threads.
pub fn start(
    socket: &Path,
    vm: Arc<dyn VmApi>,
    thread_start: ThreadStart,
) -> Result<ApiServer, ServerError> {
    start_with_limits(socket, vm, thread_start, ServerLimits::default())
}

/// [`start`] with other limits than the default ones.
pub fn start_with_limits(
    socket: &Path,
    vm: Arc<dyn VmApi>,
    thread_start: ThreadStart,
    limits: ServerLimits,
) -> Result<ApiServer, ServerError> {
    start_on(BoundSocket::bind(socket)?, vm, thread_start, limits)
}

/// The API socket, bound and listening (clients can connect and wait), before the server's
/// threads exist: for a VMM that confines itself in between ([`start`] does both at once).
#[derive(Debug)]
pub struct BoundSocket {
    listener: std::os::unix::net::UnixListener,
    socket: SocketFile,
}

impl BoundSocket {
    /// Creates the socket file at `path` with mode 0600.
    pub fn bind(path: &Path) -> Result<Self, ServerError> {
        let (listener, socket) = SocketFile::bind(path)?;
        Ok(Self { listener, socket })
    }

    /// Makes `uid`:`gid` the socket file's owner.
    pub fn hand_to(&self, uid: u32, gid: u32) -> Result<(), ServerError> {
        Ok(self.socket.hand_to(uid, gid)?)
    }
}

/// [`start_with_limits`] on a socket bound before.
pub fn start_on(
    bound: BoundSocket,
    vm: Arc<dyn VmApi>,
    thread_start: ThreadStart,
    limits: ServerLimits,
) -> Result<ApiServer, ServerError> {
    let BoundSocket { listener, socket } = bound;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("api-vm-call")
        .on_thread_start({
            let thread_start = thread_start.clone();
            move || thread_start()
        })
        .build()
        .map_err(ServerError::Runtime)?;
    listener
        .set_nonblocking(true)
        .map_err(ServerError::Listener)?;
    let listener = {
        let _context = runtime.enter();
        UnixListener::from_std(listener).map_err(ServerError::Listener)?
    };
    let (stop, stopping) = watch::channel(false);
    let stopping = Stopping(stopping);
    let router = routes::router(vm, stopping.clone(), limits.body_read_timeout);
    let thread = thread::Builder::new()
        .name("api".to_owned())
        .spawn(move || {
            thread_start();
            serve(runtime, listener, router, limits, stopping)
        })
        .map_err(ServerError::Thread)?;
    info!("API server listening on {}", socket.path().display());
    Ok(ApiServer {
        socket,
        stop,
        thread: Some(thread),
    })
}

impl ApiServer {
    /// Where the server listens.
    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    /// Stops the server and removes its socket; the same as dropping the handle.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // Fails only if the server thread is already gone, which is what we want anyway.
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                error!("the API server thread panicked");
            }
        }
        info!("API server on {} stopped", self.socket.path().display());
        // `self.socket` is dropped after this, removing the socket file.
    }
}

/// The `api` thread: serves until told to stop, then stops accepting connections, asks each
/// open one to close once its request in flight is answered, and gives them
/// [`SHUTDOWN_GRACE`] to do so.
fn serve(
    runtime: Runtime,
    listener: UnixListener,
    router: Router,
    limits: ServerLimits,
    stopping: Stopping,
) {
    runtime.block_on(async {
        let connections = GracefulShutdown::new();
        accept_until_stopped(listener, &router, limits, &connections, stopping).await;
        if tokio::time::timeout(SHUTDOWN_GRACE, connections.shutdown())
            .await
            .is_err()
        {
            debug!("API server stopped with requests still in flight");
        }
    });
    // Connections still open and VMM calls still running on the blocking pool end on their
    // own; do not wait for them.
    runtime.shutdown_background();
}

/// Accepts connections and serves each on its own task, at most `limits.max_connections` at
/// once, until the server is asked to stop; then drops the listener, so that nobody else can
/// connect. A connection beyond the limit waits up to [`SLOT_WAIT`] for one to close (at most
/// as many waiting as are served), else it is answered 503 and closed: a client learns at once
/// that the server is full instead of waiting in the backlog for ever.
async fn accept_until_stopped(
    listener: UnixListener,
    router: &Router,
    limits: ServerLimits,
    connections: &GracefulShutdown,
    stopping: Stopping,
) {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let admission = Admission {
        slots: Arc::new(Semaphore::new(max)),
        waiting: Arc::new(Semaphore::new(max)),
        max,
    };
    // A waiting connection that got a slot; each waiter sends at most once.
    let (admitted, mut ready) = mpsc::channel(max);
    loop {
        let (stream, slot) = tokio::select! {
            () = stopping.clone().requested() => return,
            Some(ready) = ready.recv() => ready,
            stream = accept(&listener) => match admission.admit(stream, &admitted) {
                Some(admitted) => admitted,
                None => continue,
            },
        };
        let (stream, clock) = request_clock::counted(stream);
        let connection = http1_builder(&limits, clock).serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                log_connection_error(&error);
            }
            // The slot is free again only once the connection is closed.
            drop(slot);
        });
    }
}

/// hyper's HTTP/1 server as every API connection gets it (the fuzz target's too), timed by
/// the connection's own `clock`. Header names go out in canonical case (`Content-Length`):
/// Cloud Hypervisor's client finds the body by that literal header.
pub(crate) fn http1_builder(limits: &ServerLimits, clock: RequestClock) -> http1::Builder {
    let mut http = http1::Builder::new();
    http.timer(clock)
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .title_case_headers(true)
        .keep_alive(true);
    http
}

/// A connection and the slot it is served in.
type Admitted = (UnixStream, OwnedSemaphorePermit);

/// Which connections are served: `max` at once, as many more waiting for a slot.
struct Admission {
    slots: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
    max: usize,
}

impl Admission {
    /// The connection and its slot if one is free; else the connection waits on a task of its
    /// own (sent to `admitted` once it has a slot) or, with as many already waiting, is
    /// refused.
    fn admit(&self, stream: UnixStream, admitted: &mpsc::Sender<Admitted>) -> Option<Admitted> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Some((stream, slot));
        }
        let Ok(waiter) = self.waiting.clone().try_acquire_owned() else {
            refuse(stream, self.max);
            return None;
        };
        let (slots, admitted, max) = (self.slots.clone(), admitted.clone(), self.max);
        tokio::spawn(async move {
            match tokio::time::timeout(SLOT_WAIT, slots.acquire_owned()).await {
                Ok(Ok(slot)) => {
                    // Fails only if the server is stopping: the connection closes unserved.
                    let _ = admitted.send((stream, slot)).await;
                }
                Ok(Err(_)) | Err(_) => refuse(stream, max),
            }
            drop(waiter);
        });
        None
    }
}

/// Answers a connection the server has no slot for with a 503 and closes it. Nothing here
/// waits: a new connection's send buffer has room for the answer, and what the client has sent
/// so far is read and dropped (a Unix socket closed with bytes unread is reset, which could
/// cost the client the answer).
fn refuse(stream: UnixStream, max: usize) {
    let mut unread = [0u8; 4096];
    for _ in 0..16 {
        if !matches!(stream.try_read(&mut unread), Ok(n) if n > 0) {
            break;
        }
    }
    let body = serde_json::to_string(&ErrorBody {
        error: format!("the API server is serving {max} connections, the most it serves at once; try again later"),
    })
    .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 503 \r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    match stream.try_write(answer.as_bytes()) {
        Ok(_) => debug!("API connection refused: all {max} connection slots are taken"),
        Err(error) => debug!("API connection refused, and the answer not sent: {error}"),
    }
}

/// The next connection. Errors are retried: a client that gave up before it was accepted
/// needs nothing, and running out of file descriptors takes a while to go away.
async fn accept(listener: &UnixListener) -> UnixStream {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(error) if error.kind() == io::ErrorKind::ConnectionAborted => {
                debug!("API connection aborted before it was accepted: {error}");
            }
            Err(error) => {
                error!("cannot accept an API connection: {error}");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// A client cut off for breaking a limit is worth a line at info level; a client that went
/// away or spoke nonsense only at debug level.
fn log_connection_error(error: &hyper::Error) {
    if error.is_timeout() || error.is_parse_too_large() {
        info!("API connection closed: {error}");
    } else {
        debug!("API connection closed: {error}");
    }
}
