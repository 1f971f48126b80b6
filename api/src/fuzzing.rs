//! The API's whole HTTP path without a socket, for the fuzz target
//! `fuzz/fuzz_targets/http_request.rs`: raw bytes go through hyper's HTTP/1 server, set up as
//! the API server sets it up, into the router and the handlers, and the bytes the server
//! answered come back.

use std::io;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::request_clock;
use crate::routes;
use crate::server::{http1_builder, ServerLimits};
use crate::stopping::Stopping;
use crate::VmApi;

/// Serves one connection on which a client writes `request` (one request, several, or
/// anything at all) and then closes its side, and returns everything the server wrote before
/// it closed the connection. Calls go to `vm` as in the real server.
///
/// Two differences from a connection on the API socket: the server answers what it has read
/// even though the client closed its side (a real client keeps it open until it has its
/// answers; hyper would otherwise drop the connection at once), and the server counts as
/// stopping from the start, so the events stream ends once it has sent what `vm` queued
/// during `subscribe`. An error only says that the runtime could not start.
pub fn serve_bytes(vm: Arc<dyn VmApi>, request: &[u8]) -> io::Result<Vec<u8>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    // A dropped sender reads as a stop.
    let (_, stopped) = watch::channel(true);
    let limits = ServerLimits::default();
    let router = routes::router(vm, Stopping(stopped), limits.body_read_timeout);
    runtime.block_on(async move {
        let (client, server) = tokio::io::duplex(limits.max_header_bytes);
        // As the API server sets it up, plus the half-close.
        let (server, clock) = request_clock::counted(server);
        let mut http = http1_builder(&limits, clock);
        http.half_close(true);
        let connection =
            http.serve_connection(TokioIo::new(server), TowerToHyperService::new(router));
        let (mut from_server, mut to_server) = tokio::io::split(client);
        // The server may close before it has read everything: then the rest is not sent.
        let send = async {
            if to_server.write_all(request).await.is_ok() {
                let _ = to_server.shutdown().await;
            }
        };
        let mut answer = Vec::new();
        let receive = from_server.read_to_end(&mut answer);
        // A connection error is the server refusing what it read: its answer says so.
        let (_, (), received) = tokio::join!(connection, send, receive);
        received.map(|_| answer)
    })
}
