//! Moves: one VM shrinks and another grows by the same size, as one operation. The donor
//! shrinks first (a waited `vm.resize` on its own API); what its Tidal then releases is
//! promised to the receiver alone, which grows next. A donor that refuses changes nothing; a
//! receiver that fails gets nothing, and the donor is grown back by what it gave.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidal_api::pool::{DesiredRam, MoveReport, MoveRequest, PoolChange, Resized, Taken};
use tidal_api::{ApiClient, ClientError, ResizeRequest, MAX_TIMEOUT_SECS};

use crate::events::Change;
use crate::server::{Pool, Refusal};

const MIB: u64 = 1 << 20;

/// How long a VM's resize may take: its Tidal bounds each DIMM's wait (at most
/// [`MAX_TIMEOUT_SECS`]), the pool the whole call, which may be a shrink by two DIMMs.
const RESIZE_TIMEOUT: Duration = Duration::from_secs(2 * MAX_TIMEOUT_SECS + 60);

/// How long the pool waits, after the donor's answer, for its Tidal to release what it gave.
const RELEASE_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error("{vm}: {error}")]
    Vm { vm: String, error: ClientError },
    #[error("{vm} did not shrink by {} MiB: {error}; nothing moved", .size / MIB)]
    Donor {
        vm: String,
        size: u64,
        error: ClientError,
    },
    #[error(
        "{vm} shrank by {} MiB but released only {} MiB of it within {:?}; nothing moved to {to}",
        .size / MIB, .released / MIB, RELEASE_WAIT
    )]
    NotReleased {
        vm: String,
        to: String,
        size: u64,
        released: u64,
    },
    #[error("{vm} did not reach {} MiB: {error}{}", .ram / MIB, moved_before(.taken))]
    Grow {
        vm: String,
        ram: u64,
        error: Box<Refusal>,
        taken: Vec<Taken>,
    },
    #[error("{vm} did not grow by {} MiB: {error}; {back}", .size / MIB)]
    Receiver {
        vm: String,
        size: u64,
        error: ClientError,
        back: String,
    },
}

/// Runs `request` on `pool`'s VMs; blocking (it waits for their guests).
pub fn run(pool: &Arc<Pool>, request: &MoveRequest) -> Result<MoveReport, Refusal> {
    let started = Instant::now();
    let MoveRequest {
        from,
        to,
        size,
        timeout_secs,
    } = request;
    let size = *size;
    let (donor, receiver) = pool.start_move(from, to, size)?;
    let moved = shift(pool, (from, &donor), (to, &receiver), size, *timeout_secs);
    pool.end_move(from, to);
    let (what, message) = match &moved {
        Ok(_) => (PoolChange::Moved, None),
        Err(e) => (PoolChange::MoveFailed, Some(e.to_string())),
    };
    pool.tell(Change {
        vm: from,
        what,
        size,
        to: Some(to),
        message,
    });
    let (from_ram, to_ram) = moved?;
    log::info!(
        "moved {} MiB from {from} to {to} in {} ms",
        size / MIB,
        started.elapsed().as_millis()
    );
    Ok(MoveReport {
        from: from.clone(),
        to: to.clone(),
        size,
        from_ram,
        to_ram,
        millis: started.elapsed().as_millis().try_into().unwrap_or(u64::MAX),
    })
}

/// What moved before a grow failed, as its error says it.
fn moved_before(taken: &[Taken]) -> String {
    let moved: Vec<String> = taken
        .iter()
        .map(|t| format!("{} MiB from {}", t.size / MIB, t.from))
        .collect();
    if moved.is_empty() {
        String::new()
    } else {
        format!(" (before that, {} moved to it)", moved.join(" and "))
    }
}

/// Resizes VM `name` to `request`'s RAM; what the free budget lacks is moved to it from VMs of
/// lower priority ([`crate::ledger::Ledger::donors_for`]), each in a move of its own; when they
/// cannot give enough, nobody is shrunk. Blocking.
pub fn set_ram(pool: &Arc<Pool>, name: &str, request: &DesiredRam) -> Result<Resized, Refusal> {
    let DesiredRam {
        desired_ram,
        timeout_secs,
    } = *request;
    let vm = pool.vm_client(name)?;
    let failed = |error: Refusal, taken: &[Taken]| MoveError::Grow {
        vm: name.to_owned(),
        ram: desired_ram,
        error: Box::new(error),
        taken: taken.to_vec(),
    };
    let vm_failed = |error| {
        failed(
            MoveError::Vm {
                vm: name.to_owned(),
                error,
            }
            .into(),
            &[],
        )
    };
    let now = ram(&vm).map_err(vm_failed)?;
    let donors = pool.donors_for(name, desired_ram.saturating_sub(now))?;
    let mut taken = Vec::new();
    for (from, size) in donors {
        let request = MoveRequest {
            from: from.clone(),
            to: name.to_owned(),
            size,
            timeout_secs,
        };
        run(pool, &request).map_err(|e| failed(e, &taken))?;
        taken.push(Taken { from, size });
    }
    resize(&vm, desired_ram, timeout_secs).map_err(|error| {
        let error = MoveError::Vm {
            vm: name.to_owned(),
            error,
        };
        failed(error.into(), &taken)
    })?;
    Ok(Resized {
        name: name.to_owned(),
        ram: desired_ram,
        taken,
    })
}

/// The move's VM calls, between the ledger's start and end: the donor shrinks, its release is
/// awaited, the receiver grows (or the donor grows back). Returns both VMs' RAM after it.
fn shift(
    pool: &Arc<Pool>,
    (from, donor): (&str, &ApiClient),
    (to, receiver): (&str, &ApiClient),
    size: u64,
    timeout_secs: Option<u64>,
) -> Result<(u64, u64), MoveError> {
    let resize_to = |vm, ram| resize(vm, ram, timeout_secs);
    let donor_error = |error| MoveError::Donor {
        vm: from.to_owned(),
        size,
        error,
    };
    let donor_ram = ram(donor).map_err(donor_error)?;
    let receiver_ram = ram(receiver).map_err(|error| MoveError::Receiver {
        vm: to.to_owned(),
        size,
        error,
        back: "nothing moved".to_owned(),
    })?;
    resize_to(donor, donor_ram - size).map_err(donor_error)?;
    let deadline = Instant::now() + RELEASE_WAIT;
    while pool.given(from) < size {
        if Instant::now() > deadline {
            return Err(MoveError::NotReleased {
                vm: from.to_owned(),
                to: to.to_owned(),
                size,
                released: pool.given(from),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match resize_to(receiver, receiver_ram + size) {
        Ok(()) => Ok((donor_ram - size, receiver_ram + size)),
        Err(error) => {
            pool.reverse_move(from);
            let back = match resize_to(donor, donor_ram) {
                Ok(()) => format!("the memory went back to {from}"),
                Err(e) => format!("giving it back to {from} failed too: {e}"),
            };
            Err(MoveError::Receiver {
                vm: to.to_owned(),
                size,
                error,
                back,
            })
        }
    }
}

/// A VM's API client for a move's calls.
pub fn client(socket: PathBuf) -> ApiClient {
    ApiClient::new(socket).with_timeout(RESIZE_TIMEOUT)
}

/// A VM's guest RAM now, as its Tidal says.
fn ram(vm: &ApiClient) -> Result<u64, ClientError> {
    vm.info().map(|info| info.memory_actual_size)
}

/// Resizes a VM to `ram` bytes and waits for its guest's answer to each DIMM.
fn resize(vm: &ApiClient, ram: u64, timeout_secs: Option<u64>) -> Result<(), ClientError> {
    vm.resize(&ResizeRequest {
        desired_ram: Some(ram),
        timeout_secs,
        wait: true,
        ..ResizeRequest::default()
    })
}
