//! The API server's life: [`start`] binds the socket and serves it from a dedicated thread
//! named `api`; the returned [`ApiServer`] stops it and removes the socket when dropped.

use std::future::IntoFuture;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use axum::Router;
use log::{debug, error, info};
use thiserror::Error;
use tokio::net::UnixListener;
use tokio::runtime::Runtime;
use tokio::sync::watch;

use crate::routes;
use crate::socket::{SocketError, SocketFile};
use crate::VmApi;

/// How long a stopping server lets requests in flight finish before cutting them off. A
/// resize may wait much longer for the guest; its answer is then lost, not its effect.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

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
/// handle is dropped. Calls into `vm` run on a blocking pool, so a slow resize does not hold up
/// other requests. `thread_start` runs at the start of each of the server's threads.
pub fn start(
    socket: &Path,
    vm: Arc<dyn VmApi>,
    thread_start: ThreadStart,
) -> Result<ApiServer, ServerError> {
    let (listener, socket) = SocketFile::bind(socket)?;
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
    let router = routes::router(vm, stopping.clone());
    let thread = thread::Builder::new()
        .name("api".to_owned())
        .spawn(move || {
            thread_start();
            serve(runtime, listener, router, stopping)
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

/// The `api` thread: serves until told to stop, then gives requests in flight
/// [`SHUTDOWN_GRACE`] to finish.
fn serve(runtime: Runtime, listener: UnixListener, router: Router, stopping: Stopping) {
    runtime.block_on(async {
        let server = axum::serve(listener, router)
            .with_graceful_shutdown(stopping.clone().requested())
            .into_future();
        let grace_over = async {
            stopping.requested().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            result = server => {
                if let Err(error) = result {
                    error!("API server failed: {error}");
                }
            }
            () = grace_over => debug!("API server stopped with requests still in flight"),
        }
    });
    // VMM calls still running on the blocking pool finish on their own; do not wait for them.
    runtime.shutdown_background();
}

/// Tells whoever holds a clone that the server is stopping, so that answers with no natural
/// end (the events stream) end instead of holding up the graceful shutdown.
#[derive(Debug, Clone)]
pub(crate) struct Stopping(watch::Receiver<bool>);

impl Stopping {
    /// Resolves once the handle asks the server to stop or is gone; at once if that already
    /// happened, however often it is asked.
    pub(crate) async fn requested(mut self) {
        // An error means the sender was dropped: also a reason to stop.
        let _ = self.0.wait_for(|&stop| stop).await;
    }
}
