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
    DesiredRam, MoveReport, MoveRequest, PoolView, PoolVmView, Resized, SizeRequest,
};
use tidal_api::ApiClient;

use crate::ledger::{Ledger, LedgerError, Member, Registration};
use crate::moves::{self, MoveError};
use crate::process;
use crate::store::{Store, StoreError};

/// How often the pool looks for VMs whose process has ended.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub struct Pool {
    ledger: Mutex<Ledger>,
    store: Store,
}

impl Pool {
    pub fn new(ledger: Ledger, store: Store) -> Self {
        Self {
            ledger: Mutex::new(ledger),
            store,
        }
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

    /// Starts a move in the ledger; returns the clients of its donor's and receiver's APIs.
    pub fn start_move(
        &self,
        from: &str,
        to: &str,
        size: u64,
    ) -> Result<(ApiClient, ApiClient), Refusal> {
        self.apply(|ledger| {
            ledger.start_move(from, to, size)?;
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

    /// What VM `from`'s move has passed on to its receiver so far.
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
        for name in &gone {
            if let Ok(member) = ledger.unregister(name) {
                log::info!(
                    "{name} (pid {}) ended: {} MiB back in the pool",
                    member.registration.pid,
                    member.held() >> 20
                );
            }
        }
        if let Err(e) = self.store.save(&ledger) {
            log::error!("{e}");
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
    let name = vm.name.clone();
    let answer = pool.change(|ledger| ledger.register(vm, started));
    if answer.is_ok() {
        log::info!("{name} registered");
    }
    answer
}

async fn unregister(State(pool): State<Arc<Pool>>, UrlPath(name): UrlPath<String>) -> Answer {
    pool.change(|ledger| ledger.unregister(&name).map(drop))
}

async fn reserve(
    State(pool): State<Arc<Pool>>,
    UrlPath(name): UrlPath<String>,
    Json(request): Json<SizeRequest>,
) -> Answer {
    let answer = pool.change(|ledger| ledger.reserve(&name, request.size));
    if let Err(e) = &answer {
        log::info!("refused: {e}");
    }
    answer
}

async fn commit(
    State(pool): State<Arc<Pool>>,
    UrlPath(name): UrlPath<String>,
    Json(request): Json<SizeRequest>,
) -> Answer {
    pool.change(|ledger| ledger.commit(&name, request.size))
}

async fn cancel(
    State(pool): State<Arc<Pool>>,
    UrlPath(name): UrlPath<String>,
    Json(request): Json<SizeRequest>,
) -> Answer {
    pool.change(|ledger| ledger.cancel(&name, request.size))
}

async fn release(
    State(pool): State<Arc<Pool>>,
    UrlPath(name): UrlPath<String>,
    Json(request): Json<SizeRequest>,
) -> Answer {
    pool.change(|ledger| ledger.release(&name, request.size))
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
    let served = axum::serve(listener, router(pool))
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await;
    sweeper.abort();
    let _ = std::fs::remove_file(socket);
    served
}
