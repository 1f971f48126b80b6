//! The pool's REST API on a Unix socket, in the style of Tidal's own: JSON bodies, errors as
//! `{"error": "..."}` with the status saying what kind (507: the budget is short). Every
//! change goes through one lock on the ledger and is on disk before it is answered; a sweep
//! releases what VMs whose process has ended held.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use tidal_api::pool::{
    DesiredRam, MoveReport, MoveRequest, PoolChange, PoolView, PoolVmView, Resized, SizeRequest,
};
use tidal_api::ApiClient;

use crate::events::{Change, Events};
use crate::ledger::{Ledger, LedgerError, Member, Registration};
use crate::moves::{self, MoveError};
use crate::process;
use crate::store::{Store, StoreError};

/// How often the pool looks for VMs whose process has ended.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub struct Pool {
    ledger: Mutex<Ledger>,
    store: Store,
    events: Events,
}

impl Pool {
    pub fn new(ledger: Ledger, store: Store) -> Self {
        Self {
            ledger: Mutex::new(ledger),
            store,
            events: Events::default(),
        }
    }

    /// Tells the events' subscribers of `change`, with the figures after it.
    pub fn tell(&self, change: Change<'_>) {
        let (held, free) = {
            let ledger = self.ledger();
            let held = ledger.member(change.vm).map_or(0, Member::held);
            (held, ledger.free())
        };
        self.events.tell(change, held, free);
    }

    /// [`Pool::change`] of VM `vm` by `size` bytes, told as `what` when it is done.
    fn change_told(
        &self,
        vm: &str,
        what: PoolChange,
        size: u64,
        change: impl FnOnce(&mut Ledger) -> Result<(), LedgerError>,
    ) -> Answer {
        let answer = self.change(change);
        self.told(vm, what, size, answer.map(drop))
    }

    /// Tells `what` of VM `vm` by `size` bytes, as `answer` has it (a refused reservation as
    /// refused; other failures are not changes), and gives the answer.
    fn told(&self, vm: &str, what: PoolChange, size: u64, answer: Result<(), Refusal>) -> Answer {
        let answer = answer.map(|()| StatusCode::NO_CONTENT);
        let message = answer.as_ref().err().map(ToString::to_string);
        let what = match (&answer, what) {
            (Ok(_), what) => what,
            (Err(_), PoolChange::Reserved) => PoolChange::Refused,
            (Err(_), _) => return answer,
        };
        if let Some(message) = &message {
            log::info!("refused: {message}");
        }
        self.tell(Change {
            vm,
            what,
            size,
            to: None,
            message,
        });
        answer
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies `change` to the ledger and keeps the result on disk; a change that fails, or
    /// cannot be kept, leaves the ledger as it was.
    fn apply<T>(
        &self,
        change: impl FnOnce(&mut Ledger) -> Result<T, LedgerError>,
    ) -> Result<T, Refusal> {
        let mut ledger = self.ledger();
        let mut changed = ledger.clone();
        let value = change(&mut changed)?;
        self.store.save(&changed)?;
        *ledger = changed;
        Ok(value)
    }

    fn change(&self, change: impl FnOnce(&mut Ledger) -> Result<(), LedgerError>) -> Answer {
        self.apply(change).map(|()| StatusCode::NO_CONTENT)
    }

    /// Starts a move in the ledger (`keep`: see [`Ledger::start_move`]); returns the clients of
    /// its donor's and receiver's APIs.
    pub fn start_move(
        &self,
        from: &str,
        to: &str,
        size: u64,
        keep: u64,
    ) -> Result<(ApiClient, ApiClient), Refusal> {
        self.apply(|ledger| {
            ledger.start_move(from, to, size, keep)?;
            let socket = |name| {
                Ok(moves::client(
                    ledger.member(name)?.registration.socket.clone(),
                ))
            };
            Ok((socket(from)?, socket(to)?))
        })
    }

    /// The API client of VM `name`.
    pub fn vm_client(&self, name: &str) -> Result<ApiClient, Refusal> {
        let ledger = self.ledger();
        Ok(moves::client(
            ledger.member(name)?.registration.socket.clone(),
        ))
    }

    /// Who gives what for VM `name` to grow by `size` (nobody while the free budget has it).
    pub fn donors_for(&self, name: &str, size: u64) -> Result<Vec<(String, u64)>, Refusal> {
        let ledger = self.ledger();
        let short = size.saturating_sub(ledger.free());
        if short == 0 {
            return Ok(Vec::new());
        }
        let cost = |m: &Member| process::resident(m.registration.pid);
        Ok(ledger.donors_for(name, short, cost)?)
    }

    /// Reserves `size` bytes for VM `name`'s hot-add, from what is promised to it first.
    pub fn reserve(&self, name: &str, size: u64) -> Result<(), Refusal> {
        self.apply(|ledger| ledger.reserve(name, size))
    }

    /// Gives back `size` bytes that VM `name` reserved.
    pub fn cancel(&self, name: &str, size: u64) {
        self.keep(|ledger| ledger.cancel(name, size));
    }

    /// What the budget has free.
    pub fn free(&self) -> u64 {
        self.ledger().free()
    }

    /// What VM `from` has released in its move so far.
    pub fn given(&self, from: &str) -> u64 {
        self.ledger().given(from)
    }

    /// Promises back to VM `from` what its move's receiver could not take.
    pub fn reverse_move(&self, from: &str) {
        self.keep(|ledger| ledger.reverse_move(from));
    }

    /// Ends VM `from`'s move to VM `to`.
    pub fn end_move(&self, from: &str, to: &str) {
        self.keep(|ledger| {
            ledger.end_move(from, to);
            Ok(())
        });
    }

    /// [`Pool::apply`] for steps no client waits on: a failure is logged.
    fn keep(&self, change: impl FnOnce(&mut Ledger) -> Result<(), LedgerError>) {
        if let Err(e) = self.apply(change) {
            log::error!("{e}");
        }
    }

    /// Releases everything held by VMs whose process has ended; returns their names.
    pub fn sweep(&self) -> Vec<String> {
        let mut ledger = self.ledger();
        let gone: Vec<String> = ledger
            .members()
            .filter(|(_, m)| !process::is_running(m.registration.pid, m.started))
            .map(|(name, _)| name.clone())
            .collect();
        if gone.is_empty() {
            return gone;
        }
        let mut ended = Vec::new();
        for name in &gone {
            if let Ok(member) = ledger.unregister(name) {
                log::info!(
                    "{name} (pid {}) ended: {} MiB back in the pool",
                    member.registration.pid,
                    member.held() >> 20
                );
                ended.push((name, member.held()));
            }
        }
        if let Err(e) = self.store.save(&ledger) {
            log::error!("{e}");
        }
        drop(ledger);
        for (vm, size) in ended {
            self.tell(Change {
                vm,
                what: PoolChange::Ended,
                size,
                to: None,
                message: None,
            });
        }
        gone
    }
}

/// One VM as `GET /pool` shows it.
fn view(member: &Member) -> PoolVmView {
    let r = &member.registration;
    PoolVmView {
        name: r.name.clone(),
        socket: r.socket.display().to_string(),
        pid: r.pid,
        boot: r.boot,
        plugged: member.plugged,
        reserved: member.reserved,
        promised: member.promised,
        min: r.min,
        max: r.max,
        priority: r.priority,
    }
}

/// Why a request failed, as its answer says.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    BadRequest(String),
    /// A VM in a move refused or failed.
    #[error(transparent)]
    Move(#[from] MoveError),
}

type Answer = Result<StatusCode, Refusal>;

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = match &self {
            Refusal::Ledger(LedgerError::Short { .. } | LedgerError::NoDonors { .. }) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            Refusal::Ledger(LedgerError::Unknown(_)) => StatusCode::NOT_FOUND,
            Refusal::Ledger(LedgerError::Underflow { .. } | LedgerError::Moving(_)) => {
                StatusCode::CONFLICT
            }
            Refusal::Move(_) => StatusCode::CONFLICT,
            Refusal::Ledger(_) | Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = serde_json::json!({ "error": self.to_string() });
        (status, Json(body)).into_response()
    }
}

pub fn router(pool: Arc<Pool>) -> Router {
    Router::new()
        .route("/pool", get(show))
        .route("/metrics", get(metrics))
        .route("/pool/events", get(events))
        .route("/pool/vms", post(register))
        .route(
            "/pool/vms/{name}",
            axum::routing::delete(unregister).put(set_ram),
        )
        .route("/pool/vms/{name}/reserve", put(reserve))
        .route("/pool/vms/{name}/commit", put(commit))
        .route("/pool/vms/{name}/cancel", put(cancel))
        .route("/pool/vms/{name}/release", put(release))
        .route("/pool/move", put(move_memory))
        .with_state(pool)
}

impl Pool {
    /// What `GET /pool` shows.
    pub fn view(&self) -> PoolView {
        let ledger = self.ledger();
        PoolView {
            budget: ledger.budget(),
            held: ledger.held(),
            free: ledger.free(),
            vms: ledger.members().map(|(_, m)| view(m)).collect(),
        }
    }
}

async fn show(State(pool): State<Arc<Pool>>) -> Json<PoolView> {
    Json(pool.view())
}

async fn metrics(State(pool): State<Arc<Pool>>) -> impl IntoResponse {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    (
        [(axum::http::header::CONTENT_TYPE, content_type)],
        crate::metrics::render(&pool.view()),
    )
}

async fn register(State(pool): State<Arc<Pool>>, Json(vm): Json<Registration>) -> Answer {
    let Some(started) = process::start_time(vm.pid) else {
        return Err(Refusal::BadRequest(format!(
            "{}: no process {} on this host",
            vm.name, vm.pid
        )));
    };
    let (name, size) = (vm.name.clone(), vm.boot + vm.plugged);
    let answer = pool.change_told(&name, PoolChange::Registered, size, |ledger| {
        ledger.register(vm, started)
    });
    if answer.is_ok() {
        log::info!("{name} registered");
    }
    answer
}

async fn unregister(State(pool): State<Arc<Pool>>, UrlPath(name): UrlPath<String>) -> Answer {
    let held = pool.ledger().member(&name).map_or(0, Member::held);
    pool.change_told(&name, PoolChange::Left, held, |ledger| {
        ledger.unregister(&name).map(drop)
    })
}

/// A hot-add's reservation; what the free budget lacks is taken from VMs of lower priority
/// ([`moves::reserve_taking`]) before it is refused.
async fn reserve(
    State(pool): State<Arc<Pool>>,
    UrlPath(name): UrlPath<String>,
    Json(SizeRequest { size }): Json<SizeRequest>,
) -> Answer {
    let refusal = match pool.apply(|ledger| ledger.reserve(&name, size)) {
        Err(Refusal::Ledger(short @ LedgerError::Short { .. })) => short,
        answer => return pool.told(&name, PoolChange::Reserved, size, answer),
    };
    let (taking, vm) = (pool.clone(), name.clone());
    let answer =
        tokio::task::spawn_blocking(move || moves::reserve_taking(&taking, &vm, size, refusal))
            .await
            .map_err(|e| Refusal::BadRequest(format!("the reservation did not finish: {e}")))
            .and_then(|answer| answer);
    pool.told(&name, PoolChange::Reserved, size, answer)
}

async fn commit(
    State(pool): State<Arc<Pool>>,
    UrlPath(name): UrlPath<String>,
    Json(SizeRequest { size }): Json<SizeRequest>,
) -> Answer {
    pool.change_told(&name, PoolChange::Committed, size, |ledger| {
        ledger.commit(&name, size)
    })
}

async fn cancel(
    State(pool): State<Arc<Pool>>,
    UrlPath(name): UrlPath<String>,
    Json(SizeRequest { size }): Json<SizeRequest>,
) -> Answer {
    pool.change_told(&name, PoolChange::Cancelled, size, |ledger| {
        ledger.cancel(&name, size)
    })
}

async fn release(
    State(pool): State<Arc<Pool>>,
    UrlPath(name): UrlPath<String>,
    Json(SizeRequest { size }): Json<SizeRequest>,
) -> Answer {
    pool.change_told(&name, PoolChange::Released, size, |ledger| {
        ledger.release(&name, size)
    })
}

async fn events(State(pool): State<Arc<Pool>>) -> impl IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        pool.events.subscribe(),
    )
}

async fn set_ram(
    State(pool): State<Arc<Pool>>,
    UrlPath(name): UrlPath<String>,
    Json(request): Json<DesiredRam>,
) -> Result<Json<Resized>, Refusal> {
    let resized = tokio::task::spawn_blocking(move || moves::set_ram(&pool, &name, &request))
        .await
        .map_err(|e| Refusal::BadRequest(format!("the resize did not finish: {e}")))?;
    if let Err(e) = &resized {
        log::info!("resize refused: {e}");
    }
    resized.map(Json)
}

async fn move_memory(
    State(pool): State<Arc<Pool>>,
    Json(request): Json<MoveRequest>,
) -> Result<Json<MoveReport>, Refusal> {
    let moved = tokio::task::spawn_blocking(move || moves::run(&pool, &request))
        .await
        .map_err(|e| Refusal::BadRequest(format!("the move did not finish: {e}")))?;
    if let Err(e) = &moved {
        log::info!("move refused: {e}");
    }
    moved.map(Json)
}

/// Serves `pool` on `socket` (a new socket file, mode 0600) until SIGTERM or SIGINT, sweeping
/// for ended VMs meanwhile.
pub async fn serve(pool: Arc<Pool>, socket: &Path) -> std::io::Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    log::info!("pool listening on {}", socket.display());
    let sweeper = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            loop {
                every.tick().await;
                pool.sweep();
            }
        })
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stopping = pool.clone();
    let served = axum::serve(listener, router(pool))
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            stopping.events.stop();
        })
        .await;
    sweeper.abort();
    let _ = std::fs::remove_file(socket);
    served
}
