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
use tidal_api::pool::{PoolView, PoolVmView, SizeRequest};

use crate::ledger::{Ledger, LedgerError, Member, Registration};
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
    fn change(&self, change: impl FnOnce(&mut Ledger) -> Result<(), LedgerError>) -> Answer {
        let mut ledger = self.ledger();
        let mut changed = ledger.clone();
        change(&mut changed)?;
        self.store.save(&changed)?;
        *ledger = changed;
        Ok(StatusCode::NO_CONTENT)
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
        min: r.min,
        max: r.max,
        priority: r.priority,
    }
}

/// Why a request failed, as its answer says.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    BadRequest(String),
}

type Answer = Result<StatusCode, Refusal>;

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = match &self {
            Refusal::Ledger(LedgerError::Short { .. }) => StatusCode::INSUFFICIENT_STORAGE,
            Refusal::Ledger(LedgerError::Unknown(_)) => StatusCode::NOT_FOUND,
            Refusal::Ledger(LedgerError::Underflow { .. }) => StatusCode::CONFLICT,
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
        .route("/pool/vms", post(register))
        .route("/pool/vms/{name}", axum::routing::delete(unregister))
        .route("/pool/vms/{name}/reserve", put(reserve))
        .route("/pool/vms/{name}/commit", put(commit))
        .route("/pool/vms/{name}/cancel", put(cancel))
        .route("/pool/vms/{name}/release", put(release))
        .with_state(pool)
}

async fn show(State(pool): State<Arc<Pool>>) -> Json<PoolView> {
    let ledger = pool.ledger();
    Json(PoolView {
        budget: ledger.budget(),
        held: ledger.held(),
        free: ledger.free(),
        vms: ledger.members().map(|(_, m)| view(m)).collect(),
    })
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
