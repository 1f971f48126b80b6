//! `GET /pool/events`: every change of the ledger as a JSON line, to each subscriber through a
//! bounded queue of its own; one that falls behind gets `{"lagged": N}` for what it missed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use tidal_api::pool::{PoolChange, PoolEvent};
use tidal_api::LaggedRecord;
use tokio::sync::{broadcast, watch};

/// Events a subscriber may be behind before it loses the oldest.
const QUEUE: usize = 256;

pub struct Events {
    sender: broadcast::Sender<Bytes>,
    seq: AtomicU64,
    /// Set when the pool stops: every stream then ends, so a graceful shutdown need not wait
    /// for subscribers to go.
    stopping: watch::Sender<bool>,
}

/// What an event says, before it is numbered and stamped.
pub struct Change<'a> {
    pub vm: &'a str,
    pub what: PoolChange,
    pub size: u64,
    pub to: Option<&'a str>,
    pub message: Option<String>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(QUEUE).0,
            seq: AtomicU64::new(0),
            stopping: watch::channel(false).0,
        }
    }
}

impl Events {
    /// Sends `change` to every subscriber, with the VM's share and the free budget after it.
    pub fn tell(&self, change: Change<'_>, held: u64, free: u64) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX));
        let event = PoolEvent {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            at_ms,
            vm: change.vm.to_owned(),
            what: change.what,
            size: change.size,
            to: change.to.map(str::to_owned),
            message: change.message,
            held,
            free,
        };
        // Without subscribers the event goes nowhere, as it should.
        let _ = self.sender.send(line(&event));
    }

    /// Ends every stream.
    pub fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// A subscriber's body: its events from now on, until the pool stops.
    pub fn subscribe(&self) -> Body {
        let state = (self.sender.subscribe(), self.stopping.subscribe());
        let lines =
            futures_util::stream::unfold(state, |(mut receiver, mut stopping)| async move {
                let received = tokio::select! {
                    received = receiver.recv() => received,
                    _ = stopping.wait_for(|&stop| stop) => return None,
                };
                let line = match received {
                    Ok(line) => line,
                    Err(broadcast::error::RecvError::Lagged(lagged)) => {
                        line(&LaggedRecord { lagged })
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                Some((
                    Ok::<_, std::convert::Infallible>(line),
                    (receiver, stopping),
                ))
            });
        Body::from_stream(lines)
    }
}

fn line(value: &impl serde::Serialize) -> Bytes {
    let mut line = serde_json::to_vec(value).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}
