//! Resizing: what takes the VM (or one NUMA node) to a total, decided under the operation lock
//! from everything in flight, and the waits for the guest's answers (docs/design.md,
//! "Resizing").

use std::cmp::Ordering;
use std::time::Duration;

use tidal_devices::memory_hotplug::{Dimm, MemoryHotplugController, SlotState};

use super::error::{HotplugError, Request};
use super::{dimm_id, MemoryHotplug};
use crate::layout::MEMORY_BLOCK_SIZE;
use crate::resize_plan::{plan_shrink, Removable, Shrink};

/// The states whose DIMMs count towards where the VM is going: an insertion the guest has not
/// answered yet will be memory, a failed one is mapped and removable; a removal will not be.
pub(crate) const TARGET_STATES: [SlotState; 3] =
    [SlotState::Inserting, SlotState::Added, SlotState::Failed];

/// A DIMM the guest has still to answer for: an insertion or a removal.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    pub slot: u32,
    pub dimm: Dimm,
    pub state: SlotState,
}

impl MemoryHotplug {
    /// Grows or shrinks node `scope` (the whole VM: `None`) to `desired` bytes. Decided and set
    /// going under the operation lock, so that a retry or a twin request finds the work in
    /// flight and adds none; with `wait`, answers once the guest has answered for every DIMM
    /// in flight, else once it has been told. A waited shrink the guest refuses outright (it
    /// removed none of the DIMMs) takes back the DIMM it plugged to keep its overshoot, so the
    /// VM is as it was; a timeout leaves everything in flight, for a retry to land.
    pub(super) fn resize_memory(
        &self,
        scope: Option<u32>,
        desired: u64,
        timeout: Duration,
        force: bool,
        wait: bool,
    ) -> Result<(), HotplugError> {
        self.check_reachable(scope, desired)?;
        let Steered {
            in_flight,
            replacement,
        } = {
            let _operation = self.lock_operation(timeout)?;
            self.steer(scope, desired, timeout, force)?
        };
        if !wait {
            return Ok(());
        }
        let mut removed = 0;
        let mut first_error = None;
        for pending in in_flight {
            match self.wait_for(pending, timeout) {
                Ok(()) => removed += usize::from(pending.state == SlotState::Removing),
                Err(e) => {
                    let refused = e.is_refusal();
                    first_error.get_or_insert(e);
                    if !refused {
                        break;
                    }
                }
            }
        }
        match (first_error, replacement) {
            (None, _) => Ok(()),
            (Some(e), Some(replacement)) if e.is_refusal() && removed == 0 => {
                Err(self.take_back(replacement, e, timeout))
            }
            (Some(e), _) => Err(e),
        }
    }

    /// Ejects `replacement`, the DIMM a shrink plugged to keep its overshoot, after the guest
    /// refused the shrink's removals (`refusal`); the error says whether the VM is as it was.
    fn take_back(
        &self,
        replacement: Pending,
        refusal: HotplugError,
        timeout: Duration,
    ) -> HotplugError {
        let id = dimm_id(replacement.slot);
        let taken_back = self
            .request_removals(&[replacement.slot])
            .and_then(|removing| {
                self.notify_guest();
                removing
                    .into_iter()
                    .try_for_each(|pending| self.wait_for(pending, timeout))
            });
        let undone = match taken_back {
            Ok(()) => format!(
                "{id}, plugged to keep what the removal overshot, was taken back: the VM is as \
                 it was"
            ),
            Err(e) => format!(
                "{id}, plugged to keep what the removal overshot, stays (taking it back: {e})"
            ),
        };
        HotplugError::RolledBack {
            source: Box::new(refusal),
            undone,
        }
    }

    /// Sets going what takes node `scope` to `desired` bytes and returns every DIMM of it the
    /// guest has still to answer for. What is in flight is asked again first (an insertion
    /// announced again, a removal requested again) and counts as done.
    fn steer(
        &self,
        scope: Option<u32>,
        desired: u64,
        timeout: Duration,
        force: bool,
    ) -> Result<Steered, HotplugError> {
        let mut in_flight = self.ask_again(scope)?;
        let mut replacement = None;
        let target = self.boot_ram(scope) + self.bytes_in(scope, &TARGET_STATES);
        match desired.cmp(&target) {
            Ordering::Equal => {}
            Ordering::Greater => {
                let size = desired - target;
                let node = scope.unwrap_or_else(|| self.node_to_grow(size));
                in_flight.extend(self.grow(size, node, force)?);
            }
            Ordering::Less => {
                let shrink = self.shrink(scope, target - desired, timeout, force)?;
                in_flight.extend(shrink.in_flight);
                replacement = shrink.replacement;
            }
        }
        if !in_flight.is_empty() {
            self.notify_guest();
        }
        Ok(Steered {
            in_flight,
            replacement,
        })
    }

    /// Announces again every insertion of node `scope` the guest has not answered and asks
    /// again for every removal; returns them.
    fn ask_again(&self, scope: Option<u32>) -> Result<Vec<Pending>, HotplugError> {
        let mut controller = self.controller()?;
        let mut in_flight = Vec::new();
        for (slot, dimm, state) in in_scope(&controller, scope) {
            match state {
                SlotState::Inserting => controller.announce_again(slot),
                SlotState::Removing => request_removal(&mut controller, slot)?,
                _ => continue,
            }
            in_flight.push(Pending { slot, dimm, state });
        }
        Ok(in_flight)
    }

    /// Asks the guest to give back `amount` bytes of node `scope`: the DIMMs cheapest to
    /// remove that add up to it or, when no set does, a set adding up to more, with the excess
    /// plugged back as a new DIMM. That one goes in first when the region has room for it
    /// beside the set (the guest then has it to migrate into; it is then the `replacement`),
    /// else once the set is gone.
    fn shrink(
        &self,
        scope: Option<u32>,
        amount: u64,
        timeout: Duration,
        force: bool,
    ) -> Result<Steered, HotplugError> {
        let removable = self.removable(scope)?;
        let (remove, excess) = match plan_shrink(&removable, amount, MEMORY_BLOCK_SIZE) {
            Some(Shrink::Exact(remove)) => (remove, 0),
            Some(Shrink::Replace { remove, plug }) => (remove, plug),
            None => return Err(HotplugError::Unplanned),
        };
        if excess == 0 {
            return self.request_removals(&remove).map(Steered::removals);
        }
        let node = scope.unwrap_or_else(|| self.node_to_grow(excess));
        if self.room_for(node, excess) {
            let replacement = self.plug(excess, node, force)?;
            self.notify_guest();
            self.wait_for(replacement, timeout).map_err(|e| {
                e.after(format!(
                    "nothing was removed: {} was plugged to keep what the removal overshoots",
                    dimm_id(replacement.slot)
                ))
            })?;
            return Ok(Steered {
                in_flight: self.request_removals(&remove)?,
                replacement: Some(replacement),
            });
        }
        let removing = self.request_removals(&remove)?;
        self.notify_guest();
        for pending in removing {
            self.wait_for(pending, timeout)?;
        }
        let replacement = self.plug(excess, node, force).map_err(|e| {
            e.after(
                "the VM has given back more than asked, and what it overshot could not be \
                 plugged back"
                    .to_owned(),
            )
        })?;
        Ok(Steered::removals(vec![replacement]))
    }

    /// The DIMMs of node `scope` a shrink may take, newest first, with their resident memory.
    fn removable(&self, scope: Option<u32>) -> Result<Vec<Removable>, HotplugError> {
        let order = self
            .plug_order
            .lock()
            .map_err(|_| HotplugError::Poisoned("plug order"))?
            .clone();
        let candidates: Vec<(u32, Dimm)> = {
            let controller = self.controller()?;
            let held = in_scope(&controller, scope);
            order
                .iter()
                .rev()
                .filter_map(|&slot| {
                    held.iter()
                        .find(|&&(s, _, state)| s == slot && TARGET_STATES.contains(&state))
                        .map(|&(_, dimm, _)| (slot, dimm))
                })
                .collect()
        };
        // Not under the controller lock: an eject takes the DIMM lock while holding it.
        let dimms = self
            .dimms
            .lock()
            .map_err(|_| HotplugError::Poisoned("DIMM memory"))?;
        Ok(candidates
            .into_iter()
            .map(|(slot, dimm)| Removable {
                slot,
                size: dimm.size,
                resident: dimms.resident(dimm.base).unwrap_or(dimm.size),
            })
            .collect())
    }

    /// Asks the guest to eject each of `slots`.
    pub(super) fn request_removals(&self, slots: &[u32]) -> Result<Vec<Pending>, HotplugError> {
        let mut controller = self.controller()?;
        let mut removing = Vec::new();
        for &slot in slots {
            let dimm = controller.slot(slot).and_then(|view| view.dimm);
            request_removal(&mut controller, slot)?;
            if let Some(dimm) = dimm {
                removing.push(Pending {
                    slot,
                    dimm,
                    state: SlotState::Removing,
                });
            }
        }
        Ok(removing)
    }

    /// Waits until the guest has answered for `pending` (or the DIMM has left the state for
    /// another reason), at most `timeout` and only until the VM starts stopping. An insertion
    /// the guest failed and a removal it refused are errors; the DIMM stays mapped and usable.
    pub(super) fn wait_for(&self, pending: Pending, timeout: Duration) -> Result<(), HotplugError> {
        let Pending { slot, dimm, state } = pending;
        let unanswered = |c: &MemoryHotplugController| {
            c.slot(slot)
                .is_some_and(|v| v.dimm == Some(dimm) && v.state == state)
        };
        let controller = self.controller()?;
        let (controller, _) = self
            .changed
            .wait_timeout_while(controller, timeout, |c| {
                self.stopping.get().is_none() && unanswered(c)
            })
            .map_err(|_| HotplugError::Poisoned("hotplug controller"))?;
        let still = unanswered(&controller);
        let now = controller.slot(slot).filter(|v| v.dimm == Some(dimm));
        drop(controller);
        let id = dimm_id(slot);
        let status = now.and_then(|v| v.last_ost).map(|o| o.status);
        let request = if state == SlotState::Inserting {
            Request::Insertion
        } else {
            Request::Removal
        };
        match (request, now.map(|v| v.state)) {
            _ if still => Err(match self.stopping.get() {
                Some(why) => HotplugError::StoppedWaiting {
                    why: why.clone(),
                    id,
                },
                None => HotplugError::Timeout {
                    id,
                    request,
                    waited: timeout,
                },
            }),
            (Request::Insertion, Some(SlotState::Failed)) => Err(HotplugError::GuestRefused {
                id,
                request,
                status: status.unwrap_or(0),
            }),
            (Request::Removal, Some(SlotState::Added)) => Err(HotplugError::GuestRefused {
                id,
                request,
                status: status.unwrap_or(0x01),
            }),
            // The host has the memory back when the answer says the DIMM is gone.
            (Request::Removal, _) => {
                self.retire_ejected();
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// What a resize set going: the DIMMs the guest has still to answer for, and the DIMM a shrink
/// plugged first to keep what its removals overshoot.
struct Steered {
    in_flight: Vec<Pending>,
    replacement: Option<Pending>,
}

impl Steered {
    fn removals(in_flight: Vec<Pending>) -> Self {
        Self {
            in_flight,
            replacement: None,
        }
    }
}

/// Every DIMM of node `scope` (all nodes: `None`), with its slot and state.
fn in_scope(
    controller: &MemoryHotplugController,
    scope: Option<u32>,
) -> Vec<(u32, Dimm, SlotState)> {
    (0..controller.slot_count())
        .filter_map(|slot| {
            let view = controller.slot(slot)?;
            let dimm = view.dimm?;
            scope
                .is_none_or(|node| dimm.node == node)
                .then_some((slot, dimm, view.state))
        })
        .collect()
}

fn request_removal(
    controller: &mut MemoryHotplugController,
    slot: u32,
) -> Result<(), HotplugError> {
    controller
        .request_removal(slot)
        .map_err(|source| HotplugError::NotRemovable {
            id: dimm_id(slot),
            source,
        })
}
