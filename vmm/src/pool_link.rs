//! Tidal's side of the host memory pool (`--pool`, docs/pool.md): the VM registers with
//! `tidal-pool` at start (its boot RAM counted against the pool's budget), reserves each DIMM's
//! size before it plugs it, commits or cancels the reservation, releases a DIMM's size once
//! the host has its memory back, and leaves the pool at exit. The calls go to a thread of
//! their own (`pool`, confined to talking to the pool's socket); the hotplug side hands them
//! over on a bounded queue and waits a bounded time for a reservation's answer.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use tidal_api::pool::{self, Claim, PoolClient, Registration};
use tidal_api::ClientError;

use crate::seccomp::ThreadFilter;

/// How long one call to the pool may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a call waits for its answer: its call, behind at most a few others.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a reservation's call may take: one the free budget cannot hold waits while the
/// pool shrinks VMs of lower priority for it (each waiting for its guest).
const RESERVE_TIMEOUT: Duration = Duration::from_secs(600);

/// Calls waiting for the pool thread; a full queue fails a reservation at once.
const QUEUE: usize = 64;

/// `--pool`: the pool's socket and how this VM registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolOptions {
    pub socket: PathBuf,
    pub name: String,
    /// The least the pool may shrink the VM to, and the most it may hold (bytes; default:
    /// its boot RAM, and its boot RAM plus its hotplug region).
    pub min: Option<u64>,
    pub max: Option<u64>,
    pub priority: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The pool said no: its budget is short (`short`), or another reason.
    #[error("the host memory pool refused: {message}")]
    Refused { short: bool, message: String },
    #[error("the host memory pool at {} cannot be reached ({source}): nothing is added unaccounted", socket.display())]
    Unreachable {
        socket: PathBuf,
        source: ClientError,
    },
    #[error("the host memory pool did not answer within {0:?}: nothing is added unaccounted")]
    NoAnswer(Duration),
    #[error("cannot start the pool thread: {0}")]
    Thread(std::io::Error),
}

impl PoolError {
    /// Whether the pool's budget is what is short (a 507, as the host's own shortage is).
    pub fn is_shortage(&self) -> bool {
        matches!(self, PoolError::Refused { short: true, .. })
    }

    /// The pool's answer as this error: its refusal, or why there was none.
    fn from_client(socket: &Path, error: ClientError) -> Self {
        match error {
            ClientError::Api { .. } => PoolError::Refused {
                short: pool::is_shortage(&error),
                message: error.to_string(),
            },
            source => PoolError::Unreachable {
                socket: socket.to_owned(),
                source,
            },
        }
    }
}

/// What the pool thread is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Claim(Claim),
    Leave,
}

struct Call {
    op: Op,
    size: u64,
    answer: Option<SyncSender<Result<(), PoolError>>>,
}

/// The VM's membership of the pool.
pub struct PoolLink {
    name: String,
    calls: SyncSender<Call>,
    /// The thread's confinement, handed over once the filters exist.
    confine: SyncSender<Option<ThreadFilter>>,
    thread: Option<JoinHandle<()>>,
}

impl PoolLink {
    /// Registers the VM (`boot` bytes of fixed boot RAM, `plugged` bytes of boot RAM it can
    /// give back, as DIMMs, and a hotplug region of `hotplug` bytes; its API on `api_socket`)
    /// and starts the pool thread, which waits for [`PoolLink::confine`].
    pub fn join(
        options: &PoolOptions,
        api_socket: Option<&Path>,
        boot: u64,
        plugged: u64,
        hotplug: u64,
    ) -> Result<Self, PoolError> {
        let client = PoolClient::new(&options.socket, CALL_TIMEOUT);
        let registration = Registration {
            name: options.name.clone(),
            socket: api_socket.map(Path::to_owned).unwrap_or_default(),
            pid: std::process::id(),
            min: options.min.unwrap_or(boot + plugged),
            max: options.max.unwrap_or(boot + plugged + hotplug),
            priority: options.priority,
            boot,
            plugged,
        };
        client
            .register(&registration)
            .map_err(|e| PoolError::from_client(&options.socket, e))?;
        log::info!(
            "joined the host memory pool at {} as {}",
            options.socket.display(),
            options.name
        );
        let (calls, queue) = mpsc::sync_channel(QUEUE);
        let (confine, confinement) = mpsc::sync_channel(1);
        let name = options.name.clone();
        let thread = std::thread::Builder::new()
            .name("pool".to_owned())
            .spawn(move || serve(&client, &name, &confinement, &queue))
            .map_err(PoolError::Thread)?;
        Ok(Self {
            name: options.name.clone(),
            calls,
            confine,
            thread: Some(thread),
        })
    }

    /// Lets the pool thread go on, confined by `filter` (none: seccomp is off).
    pub fn confine(&self, filter: Option<ThreadFilter>) {
        let _ = self.confine.try_send(filter);
    }

    /// Takes `size` bytes of the pool's budget for a hot-add; the pool's refusal, or why it
    /// could not answer, is the error.
    pub fn reserve(&self, size: u64) -> Result<(), PoolError> {
        let (answer, answered) = mpsc::sync_channel(1);
        self.calls
            .try_send(Call {
                op: Op::Claim(Claim::Reserve),
                size,
                answer: Some(answer),
            })
            .map_err(|_| PoolError::NoAnswer(Duration::ZERO))?;
        let wait = RESERVE_TIMEOUT + ANSWER_TIMEOUT;
        answered
            .recv_timeout(wait)
            .unwrap_or(Err(PoolError::NoAnswer(wait)))
    }

    /// The reserved hot-add of `size` bytes is plugged.
    pub fn commit(&self, size: u64) {
        self.tell(Claim::Commit, size);
    }

    /// The reserved hot-add of `size` bytes did not happen.
    pub fn cancel(&self, size: u64) {
        self.tell(Claim::Cancel, size);
    }

    /// The host has `size` bytes of an ejected DIMM back.
    pub fn release(&self, size: u64) {
        self.tell(Claim::Release, size);
    }

    fn tell(&self, claim: Claim, size: u64) {
        let call = Call {
            op: Op::Claim(claim),
            size,
            answer: None,
        };
        if self.calls.try_send(call).is_err() {
            log::error!(
                "the pool thread is not taking calls: the pool does not hear of {}'s {claim:?} of \
                 {} MiB (its own sweep settles it when this VM ends)",
                self.name,
                size >> 20
            );
        }
    }
}

impl Drop for PoolLink {
    /// Leaves the pool (what the VM held goes back to the budget) and ends the thread.
    fn drop(&mut self) {
        let (answer, answered) = mpsc::sync_channel(1);
        let leave = Call {
            op: Op::Leave,
            size: 0,
            answer: Some(answer),
        };
        // The thread may never have been confined (a start that failed): let it go on.
        self.confine(None);
        if self.calls.try_send(leave).is_ok() {
            if let Ok(Err(e)) = answered.recv_timeout(ANSWER_TIMEOUT) {
                log::warn!("cannot leave the host memory pool: {e}");
            }
        }
        let (calls, _) = mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.calls, calls));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The pool thread: confined first, then one call at a time until the queue closes or the VM
/// has left.
fn serve(
    client: &PoolClient,
    name: &str,
    confinement: &Receiver<Option<ThreadFilter>>,
    queue: &Receiver<Call>,
) {
    let reserving = PoolClient::new(client.socket(), RESERVE_TIMEOUT);
    match confinement.recv() {
        Ok(Some(filter)) => filter.apply_or_exit(),
        Ok(None) => {}
        Err(_) => return,
    }
    for call in queue {
        let result = match call.op {
            Op::Claim(Claim::Reserve) => reserving.claim(name, Claim::Reserve, call.size),
            Op::Claim(claim) => client.claim(name, claim, call.size),
            Op::Leave => client.leave(name),
        }
        .map_err(|e| PoolError::from_client(client.socket(), e));
        match (call.answer, result) {
            (Some(answer), result) => {
                let _ = answer.try_send(result);
            }
            (None, Err(e)) => log::error!(
                "host memory pool, {:?} {} MiB: {e}",
                call.op,
                call.size >> 20
            ),
            (None, Ok(())) => {}
        }
        if call.op == Op::Leave {
            return;
        }
    }
}
