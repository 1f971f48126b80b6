//! Moves: one VM shrinks and another grows by the same size, as one operation. The donor
//! shrinks first (a waited `vm.resize` on its own API); what its Tidal then releases is
//! promised to the receiver alone, which grows next. A donor that refuses changes nothing; a
//! receiver that fails gets nothing, and the donor is grown back by what it gave.
//!
//! A donor whose DIMMs do not add up to the size shrinks by the fewest bytes of whole DIMMs
//! above it. Its Tidal plugs the excess back first when the free budget holds it; when not, the
//! pool has it remove the whole DIMMs, keeps the excess aside for it alone, and grows it back
//! by that once the receiver has its share: the budget is never exceeded on the way.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tidal_api::pool::{DesiredRam, MoveReport, MoveRequest, PoolChange, Resized, Taken};
use tidal_api::{ApiClient, ClientError, DimmState, ResizeRequest, MAX_TIMEOUT_SECS};

use crate::events::Change;
use crate::ledger::{LedgerError, BLOCK};
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
    #[error(
        "{vm} gave {} MiB for {to} but did not take back the {} MiB its whole DIMMs gave \
         beyond that: {error}",
        .size / MIB, .keep / MIB
    )]
    TakeBack {
        vm: String,
        to: String,
        size: u64,
        keep: u64,
        error: ClientError,
    },
    #[error("{vm} did not grow by {} MiB: {error}", .size / MIB)]
    Receiver {
        vm: String,
        size: u64,
        error: String,
    },
    /// A move that failed after its donor shrank, and what growing the donor back did.
    #[error("{failed}; {back}")]
    Undone {
        failed: Box<MoveError>,
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
    let moved = moving(
        pool,
        (from, to),
        size,
        *timeout_secs,
        |receiver, donor_ram| {
            let receiver_ram = ram(receiver).map_err(|e| e.to_string())?;
            resize(receiver, receiver_ram + size, *timeout_secs).map_err(|e| e.to_string())?;
            Ok((donor_ram - size, receiver_ram + size))
        },
    );
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

/// What donor `from` must give beyond `size` and take back (see the module's doc): 0 when its
/// DIMMs add up to `size`, or the free budget holds the DIMM its Tidal plugs back first.
fn kept_back(pool: &Arc<Pool>, from: &str, size: u64) -> Result<u64, Refusal> {
    let donor_error = |error| MoveError::Donor {
        vm: from.to_owned(),
        size,
        error,
    };
    let dimms = pool.vm_client(from)?.memory().map_err(donor_error)?;
    let sizes: Vec<u64> = dimms
        .iter()
        .filter(|dimm| dimm.state == DimmState::Added)
        .map(|dimm| dimm.size)
        .collect();
    Ok(match excess(&sizes, size) {
        Some(excess) if excess > pool.free() => excess,
        _ => 0,
    })
}

/// How far the least that whole DIMMs of `sizes` add up to, of at least `size` bytes, lies
/// above `size`; `None` when they hold less. Sizes are whole memory blocks ([`BLOCK`]).
fn excess(sizes: &[u64], size: u64) -> Option<u64> {
    let blocks = |bytes: u64| usize::try_from(bytes.div_ceil(BLOCK)).ok();
    let total = blocks(sizes.iter().sum())?;
    // reachable[n]: whether some of the DIMMs add up to n blocks.
    let mut reachable = vec![false; total + 1];
    reachable[0] = true;
    for &dimm in sizes {
        let step = blocks(dimm)?;
        for sum in (step..=total).rev() {
            reachable[sum] |= reachable[sum - step];
        }
    }
    let least = (blocks(size)?..=total).find(|&sum| reachable[sum])?;
    (u64::try_from(least).ok()? * BLOCK).checked_sub(size)
}

/// A hot-add's reservation of `size` bytes for VM `name` that the free budget cannot hold
/// (`short`, the ledger's refusal): what it lacks is moved to it from VMs of lower priority
/// ([`Pool::donors_for`]), each donor shrinking and its memory reserved for `name` as it comes
/// back, then the rest is reserved from the free budget. When nobody can give, the answer is
/// `short` itself; when they cannot give enough together, a 507 and nobody is shrunk. A donor
/// that fails leaves the reservation refused (what earlier donors gave becomes free). Blocking.
pub fn reserve_taking(
    pool: &Arc<Pool>,
    name: &str,
    size: u64,
    short: LedgerError,
) -> Result<(), Refusal> {
    let donors = match pool.donors_for(name, size) {
        Err(Refusal::Ledger(LedgerError::NoDonors { can: 0, .. })) => return Err(short.into()),
        donors => donors?,
    };
    let mut reserved = 0;
    for (from, amount) in donors {
        let taken = moving(pool, (&from, name), amount, None, |_, _| {
            pool.reserve(name, amount).map_err(|e| e.to_string())
        });
        if let Err(e) = taken {
            pool.cancel(name, reserved);
            return Err(e);
        }
        log::info!("{name}'s hot-add took {} MiB from {from}", amount / MIB);
        reserved += amount;
    }
    pool.reserve(name, size - reserved).inspect_err(|_| {
        pool.cancel(name, reserved);
    })
}

/// One move of `size` bytes from `from` to `to`, from the ledger's start to its end, told as
/// an event: the donor gives ([`give`]), then `receive` takes it on the receiver's side (given
/// its API and the donor's RAM before); when either fails after the donor shrank, the donor is
/// grown back by what it gave.
fn moving<T>(
    pool: &Arc<Pool>,
    (from, to): (&str, &str),
    size: u64,
    timeout_secs: Option<u64>,
    receive: impl FnOnce(&ApiClient, u64) -> Result<T, String>,
) -> Result<T, Refusal> {
    // An unknown receiver is refused before the donor is asked anything.
    pool.vm_client(to)?;
    let keep = kept_back(pool, from, size)?;
    let (donor, receiver) = pool.start_move(from, to, size, keep)?;
    let moved =
        give(pool, (from, &donor), to, (size, keep), timeout_secs).and_then(|(donor_ram, gave)| {
            let failed = match gave.map(|()| receive(&receiver, donor_ram)) {
                Ok(Ok(moved)) => return Ok(moved),
                Ok(Err(error)) => MoveError::Receiver {
                    vm: to.to_owned(),
                    size,
                    error,
                },
                Err(error) => error,
            };
            pool.reverse_move(from);
            let back = match resize(&donor, donor_ram, timeout_secs) {
                Ok(()) => format!("the memory went back to {from}"),
                Err(e) => format!("giving it back to {from} failed too: {e}"),
            };
            Err(MoveError::Undone {
                failed: Box::new(failed),
                back,
            })
        });
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
    moved.map_err(Refusal::from)
}

/// The donor's part of a move: it shrinks by `size` (and `keep` more, which it then takes
/// back) and its Tidal's release is awaited. Returns its RAM before, and whether what came
/// after its shrink worked (when not, it has to be grown back); an error when it did not
/// shrink (nothing moved) or its memory did not come back in time.
fn give(
    pool: &Arc<Pool>,
    (from, donor): (&str, &ApiClient),
    to: &str,
    (size, keep): (u64, u64),
    timeout_secs: Option<u64>,
) -> Result<(u64, Result<(), MoveError>), MoveError> {
    let donor_error = |error| MoveError::Donor {
        vm: from.to_owned(),
        size,
        error,
    };
    let donor_ram = ram(donor).map_err(donor_error)?;
    resize(donor, donor_ram - size - keep, timeout_secs).map_err(donor_error)?;
    let deadline = Instant::now() + RELEASE_WAIT;
    while pool.given(from) < size + keep {
        if Instant::now() > deadline {
            return Err(MoveError::NotReleased {
                vm: from.to_owned(),
                to: to.to_owned(),
                size: size + keep,
                released: pool.given(from),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let taken_back = match keep {
        0 => Ok(()),
        _ => resize(donor, donor_ram - size, timeout_secs).map_err(|error| MoveError::TakeBack {
            vm: from.to_owned(),
            to: to.to_owned(),
            size,
            keep,
            error,
        }),
    };
    Ok((donor_ram, taken_back))
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

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_excess_is_what_the_fewest_bytes_of_whole_dimms_give_beyond_the_size() {
        assert_eq!(excess(&[GIB], GIB / 2), Some(GIB / 2));
        assert_eq!(excess(&[GIB, GIB / 2], GIB / 2), Some(0));
        assert_eq!(excess(&[GIB, 3 * GIB / 4], GIB / 2), Some(GIB / 4));
        assert_eq!(excess(&[GIB, GIB], 3 * GIB / 2), Some(GIB / 2));
        assert_eq!(excess(&[GIB], 2 * GIB), None);
        assert_eq!(excess(&[], BLOCK), None);
    }
}
