//! `tidal-pool`: the host memory pool's daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tidal_api::size::parse_size;
use tidal_api::ApiClient;
use tidal_pool::ledger::Ledger;
use tidal_pool::server::{serve, Pool};
use tidal_pool::store::Store;

#[derive(Debug, Parser)]
#[command(about = "Shares one host's memory among Tidal VMs without overcommitting it")]
struct Args {
    /// The pool's API socket.
    #[arg(long)]
    socket: PathBuf,
    /// Where the pool keeps its ledger across restarts.
    #[arg(long)]
    state_dir: PathBuf,
    /// The budget: host memory the VMs may hold together (default: the one kept in the state
    /// directory, else the host's MemTotal less --reserve).
    #[arg(long, value_parser = parse_size)]
    budget: Option<u64>,
    /// What the host keeps for itself when the budget is not given.
    #[arg(long, value_parser = parse_size, default_value = "512M")]
    reserve: u64,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidal-pool: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    std::fs::create_dir_all(&args.state_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.state_dir.display()))?;
    let store = Store::new(&args.state_dir);
    // A kept ledger keeps its budget unless one is given.
    let mut ledger = match (store.load().map_err(|e| e.to_string())?, args.budget) {
        (Some(mut ledger), Some(budget)) => {
            ledger.set_budget(budget).map_err(|e| e.to_string())?;
            ledger
        }
        (Some(ledger), None) => ledger,
        (None, Some(budget)) => Ledger::new(budget),
        (None, None) => Ledger::new(host_memory()?.saturating_sub(args.reserve)),
    };
    // A move the pool was in when it stopped ended with it.
    ledger.end_moves();
    reconcile(&mut ledger);
    store.save(&ledger).map_err(|e| e.to_string())?;
    log::info!(
        "budget {} MiB, {} MiB held",
        ledger.budget() >> 20,
        ledger.held() >> 20
    );
    let pool = Arc::new(Pool::new(ledger, store));
    // VMs that ended while the pool was down give back what they held.
    pool.sweep();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the pool's runtime: {e}"))?;
    runtime
        .block_on(serve(pool, &args.socket))
        .map_err(|e| format!("cannot serve {}: {e}", args.socket.display()))
}

/// How long a VM's Tidal may take to answer `vm.info` when the pool starts.
const INFO_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks each VM in a kept ledger what it has: a release or a refused hot-add while the pool
/// was down made the ledger stale, and the VMs are the truth. A VM that does not answer keeps
/// what the ledger says (one that has ended is released by the sweep).
fn reconcile(ledger: &mut Ledger) {
    let vms: Vec<(String, std::path::PathBuf)> = ledger
        .members()
        .map(|(name, m)| (name.clone(), m.registration.socket.clone()))
        .collect();
    for (name, socket) in vms {
        let info = ApiClient::new(&socket).with_timeout(INFO_TIMEOUT).info();
        match info.map(|info| ledger.reconcile(&name, info.memory_actual_size)) {
            Ok(Ok((had, has))) if had != has => log::info!(
                "{name}: {} MiB by its own account, not the {} MiB the ledger had",
                has >> 20,
                had >> 20
            ),
            Ok(_) => {}
            Err(e) => log::warn!("{name}: kept as the ledger has it: {e}"),
        }
    }
    if ledger.held() > ledger.budget() {
        log::warn!(
            "the VMs hold {} MiB, above the budget of {} MiB: nothing more is granted until \
             they give back",
            ledger.held() >> 20,
            ledger.budget() >> 20
        );
    }
}

/// The host's MemTotal, in bytes.
fn host_memory() -> Result<u64, String> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .map_err(|e| format!("cannot read /proc/meminfo: {e}"))?;
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| "/proc/meminfo has no MemTotal".to_owned())
}
