//! Memory hotplug on the host side: DIMMs carved from the hotplug region, backed by host
//! memory, mapped through KVM slots into the guest memory map, announced to the guest through
//! the memory-hotplug controller and the GED, and taken back when the guest ejects them.
//! This is what the API's memory calls end up in.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use kvm_ioctls::VmFd;
use tidal_api::{
    AddMemoryRequest, ApiError, DimmInfo, DimmState, ErrorKind, MemoryInfo, OstStatus,
    ResizeRequest, VmApi, VmInfo,
};
use tidal_devices::ged::Ged;
use tidal_devices::memory_hotplug::{
    Dimm, EjectHandler, MemoryHotplugController, SlotState, SlotView,
};
use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};
use vm_memory::{
    GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap, GuestRegionMmap,
};

use crate::layout::MEMORY_BLOCK_SIZE;
use crate::memory::{delete_kvm_slot, set_kvm_slot};
use crate::size::format_size;

/// How long a hot-add waits for the guest's `_OST`.
pub const HOTPLUG_TIMEOUT: Duration = Duration::from_secs(60);

/// The part of guest physical space DIMMs are carved from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotplugRegion {
    pub base: u64,
    pub size: u64,
}

/// Host memory behind the DIMMs: the region's allocator, the KVM slots and the guest memory
/// map. Shared by the API thread (plugging) and the vCPU thread that handles an eject.
struct DimmMemory {
    vm: Arc<VmFd>,
    memory: GuestMemoryAtomic<GuestMemoryMmap>,
    allocator: AddressAllocator,
    /// DIMM slot `n` uses KVM slot `first_kvm_slot + n`.
    first_kvm_slot: u32,
}

impl DimmMemory {
    /// Reserves `size` bytes of the region, block aligned.
    fn allocate(&mut self, size: u64) -> Option<u64> {
        self.allocator
            .allocate(size, MEMORY_BLOCK_SIZE, AllocPolicy::FirstMatch)
            .ok()
            .map(|range| range.start())
    }

    fn free(&mut self, base: u64, size: u64) {
        let freed = RangeInclusive::new(base, base + size - 1)
            .and_then(|range| self.allocator.free(&range));
        if let Err(e) = freed {
            log::error!("cannot return {base:#x}+{size:#x} to the hotplug allocator: {e}");
        }
    }

    /// Maps fresh host memory at `base` for DIMM slot `slot`: mmap, KVM slot, guest memory map.
    fn map(&mut self, slot: u32, base: u64, size: u64) -> Result<(), String> {
        let len = usize::try_from(size).map_err(|e| e.to_string())?;
        let region = Arc::new(
            GuestRegionMmap::from_range(GuestAddress(base), len, None)
                .map_err(|e| format!("cannot map {} of host memory: {e}", format_size(size)))?,
        );
        set_kvm_slot(&self.vm, self.first_kvm_slot + slot, &region).map_err(|e| e.to_string())?;
        let guard = self
            .memory
            .lock()
            .map_err(|_| "guest memory map lock poisoned")?;
        match self.memory.memory().insert_region(region) {
            Ok(map) => {
                guard.replace(map);
                Ok(())
            }
            Err(e) => {
                drop(guard);
                // Undo the KVM slot before the mapping behind it goes away.
                let _ = delete_kvm_slot(&self.vm, self.first_kvm_slot + slot, base);
                Err(format!("cannot add the DIMM to the guest memory map: {e}"))
            }
        }
    }

    /// Takes a DIMM's memory away: the KVM slot first, so no vCPU can reach it, then the map
    /// entry; the host memory is unmapped when the last reference to the region is dropped.
    fn unmap(&mut self, slot: u32, base: u64, size: u64) -> Result<(), String> {
        delete_kvm_slot(&self.vm, self.first_kvm_slot + slot, base).map_err(|e| e.to_string())?;
        let guard = self
            .memory
            .lock()
            .map_err(|_| "guest memory map lock poisoned")?;
        let (map, region) = self
            .memory
            .memory()
            .remove_region(GuestAddress(base), size)
            .map_err(|e| format!("DIMM at {base:#x} is not in the guest memory map: {e}"))?;
        guard.replace(map);
        drop(region);
        self.free(base, size);
        Ok(())
    }
}

/// Handles the guest's `_EJ0` on the vCPU thread.
struct Ejector(Arc<Mutex<DimmMemory>>);

impl EjectHandler for Ejector {
    fn eject(&mut self, slot: u32, dimm: Dimm) -> Result<(), String> {
        let mut memory = self.0.lock().map_err(|_| "DIMM memory lock poisoned")?;
        memory.unmap(slot, dimm.base, dimm.size)?;
        log::info!(
            "memory slot {slot}: {} returned to the host",
            format_size(dimm.size)
        );
        Ok(())
    }
}

/// Everything the VM exposes about its memory, and the hotplug operations.
pub struct MemoryHotplug {
    region: Option<HotplugRegion>,
    boot_ram: u64,
    cpus: u32,
    dimms: Arc<Mutex<DimmMemory>>,
    controller: Arc<Mutex<MemoryHotplugController>>,
    changed: Arc<Condvar>,
    ged: Arc<Ged>,
    /// Held for the whole of one hotplug operation: a second one gets 409 instead of waiting.
    operation: Mutex<()>,
}

/// What `Vm::new` hands over to build the hotplug side.
pub struct HotplugParts {
    pub vm: Arc<VmFd>,
    pub memory: GuestMemoryAtomic<GuestMemoryMmap>,
    pub first_kvm_slot: u32,
    pub region: Option<HotplugRegion>,
    pub boot_ram: u64,
    pub cpus: u32,
    pub controller: Arc<Mutex<MemoryHotplugController>>,
    pub changed: Arc<Condvar>,
    pub ged: Arc<Ged>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the hotplug region allocator: {0}")]
pub struct HotplugSetupError(vm_allocator::Error);

fn api_error(kind: ErrorKind, message: impl Into<String>) -> ApiError {
    ApiError::new(kind, message)
}

fn dimm_id(slot: u32) -> String {
    format!("dimm{slot}")
}

impl MemoryHotplug {
    pub fn new(parts: HotplugParts) -> Result<Self, HotplugSetupError> {
        // Without a region the allocator spans nothing usable; every add is refused earlier.
        let (base, size) = parts
            .region
            .map_or((0, MEMORY_BLOCK_SIZE), |r| (r.base, r.size));
        let allocator = AddressAllocator::new(base, size).map_err(HotplugSetupError)?;
        let dimms = Arc::new(Mutex::new(DimmMemory {
            vm: parts.vm,
            memory: parts.memory,
            allocator,
            first_kvm_slot: parts.first_kvm_slot,
        }));
        if let Ok(mut controller) = parts.controller.lock() {
            controller.set_eject_handler(Box::new(Ejector(dimms.clone())));
        }
        Ok(Self {
            region: parts.region,
            boot_ram: parts.boot_ram,
            cpus: parts.cpus,
            dimms,
            controller: parts.controller,
            changed: parts.changed,
            ged: parts.ged,
            operation: Mutex::new(()),
        })
    }

    fn controller(&self) -> Result<MutexGuard<'_, MemoryHotplugController>, ApiError> {
        self.controller
            .lock()
            .map_err(|_| api_error(ErrorKind::Internal, "hotplug controller lock poisoned"))
    }

    /// Every occupied slot.
    fn slots(&self) -> Vec<(u32, SlotView)> {
        let Ok(controller) = self.controller.lock() else {
            return Vec::new();
        };
        (0..controller.slot_count())
            .filter_map(|slot| controller.slot(slot).map(|view| (slot, view)))
            .filter(|(_, view)| view.dimm.is_some())
            .collect()
    }

    /// Bytes in DIMMs the guest has accepted and still holds.
    fn hotplugged(&self) -> u64 {
        self.slots()
            .iter()
            .filter(|(_, view)| matches!(view.state, SlotState::Added | SlotState::Removing))
            .filter_map(|(_, view)| view.dimm.map(|d| d.size))
            .sum()
    }

    /// Bytes of the region not used by any DIMM.
    fn region_free(&self, region: HotplugRegion) -> u64 {
        let used: u64 = self
            .slots()
            .iter()
            .filter_map(|(_, view)| view.dimm.map(|d| d.size))
            .sum();
        region.size.saturating_sub(used)
    }

    fn begin_operation(&self) -> Result<MutexGuard<'_, ()>, ApiError> {
        match self.operation.try_lock() {
            Ok(guard) => Ok(guard),
            Err(TryLockError::WouldBlock) => Err(api_error(
                ErrorKind::Conflict,
                "another memory hotplug operation is in progress; try again when it is done",
            )),
            Err(TryLockError::Poisoned(_)) => Err(api_error(
                ErrorKind::Internal,
                "hotplug operation lock poisoned",
            )),
        }
    }

    fn check_size(&self, size: u64) -> Result<HotplugRegion, ApiError> {
        let region = self.region.ok_or_else(|| {
            api_error(
                ErrorKind::BadRequest,
                "this VM has no hotplug region: start it with --memory size=...,hotplug_size=SIZE",
            )
        })?;
        if size == 0 || !size.is_multiple_of(MEMORY_BLOCK_SIZE) {
            return Err(api_error(
                ErrorKind::BadRequest,
                format!(
                    "size {size} is not a positive multiple of the {} memory block size",
                    format_size(MEMORY_BLOCK_SIZE)
                ),
            ));
        }
        Ok(region)
    }

    /// Plugs one DIMM of `size` bytes into node `node` and waits for the guest's answer.
    fn add(&self, size: u64, node: u32) -> Result<DimmInfo, ApiError> {
        let region = self.check_size(size)?;
        if node != 0 {
            return Err(api_error(
                ErrorKind::BadRequest,
                format!("node {node} does not exist: this VM has one NUMA node, 0"),
            ));
        }
        let _operation = self.begin_operation()?;
        let slot = self.controller()?.free_slot().ok_or_else(|| {
            api_error(
                ErrorKind::BadRequest,
                "every DIMM slot is in use: remove a DIMM or start the VM with more slots",
            )
        })?;
        let base = {
            let mut dimms = self
                .dimms
                .lock()
                .map_err(|_| api_error(ErrorKind::Internal, "DIMM memory lock poisoned"))?;
            let base = dimms.allocate(size).ok_or_else(|| {
                api_error(
                    ErrorKind::BadRequest,
                    format!(
                        "{} requested but the hotplug region has {} free (in one piece: maybe less)",
                        format_size(size),
                        format_size(self.region_free(region))
                    ),
                )
            })?;
            if let Err(e) = dimms.map(slot, base, size) {
                dimms.free(base, size);
                return Err(api_error(ErrorKind::Internal, e));
            }
            base
        };
        let dimm = Dimm { base, size, node };
        self.controller()?
            .plug(slot, dimm)
            .map_err(|e| api_error(ErrorKind::Internal, e.to_string()))?;
        if let Err(e) = self.ged.notify(tidal_acpi::GED_MEMORY_HOTPLUG) {
            log::error!("cannot interrupt the guest for {}: {e}", dimm_id(slot));
        }
        self.wait_for_insertion(slot)
    }

    /// Waits until the guest answers the insertion of `slot`, or the timeout passes.
    fn wait_for_insertion(&self, slot: u32) -> Result<DimmInfo, ApiError> {
        let controller = self.controller()?;
        let (controller, _) = self
            .changed
            .wait_timeout_while(controller, HOTPLUG_TIMEOUT, |c| {
                c.slot(slot)
                    .is_some_and(|v| v.state == SlotState::Inserting)
            })
            .map_err(|_| api_error(ErrorKind::Internal, "hotplug controller lock poisoned"))?;
        let view = controller
            .slot(slot)
            .ok_or_else(|| api_error(ErrorKind::Internal, "slot vanished"))?;
        drop(controller);
        let info = dimm_info(slot, view)
            .ok_or_else(|| api_error(ErrorKind::Internal, format!("{} vanished", dimm_id(slot))))?;
        match view.state {
            SlotState::Added => Ok(info),
            SlotState::Inserting => Err(api_error(
                ErrorKind::Timeout,
                format!(
                    "the guest did not answer the insertion of {} within {} s; it stays plugged \
                     (state inserting): does the guest kernel support ACPI memory hotplug?",
                    info.id,
                    HOTPLUG_TIMEOUT.as_secs()
                ),
            )),
            _ => Err(api_error(
                ErrorKind::GuestRefused,
                format!(
                    "the guest refused {}: {}",
                    info.id,
                    ost_meaning(view.last_ost.map_or(0, |o| o.status))
                ),
            )),
        }
    }
}

/// What an `_OST` status code means (ACPI spec, `_OST` status codes).
pub fn ost_meaning(status: u32) -> String {
    let meaning = match status {
        0x00 => "success",
        0x01 => "non-specific failure",
        0x02 => "unrecognized notify code",
        0x80 => "device ejection not supported by OSPM",
        0x81 => "device in use by application",
        0x82 => "device busy",
        0x83 => "ejection dependency is busy or not supported",
        0x84 => "ejection is in progress",
        _ => "unknown status",
    };
    format!("_OST status {status:#x} ({meaning})")
}

fn dimm_info(slot: u32, view: SlotView) -> Option<DimmInfo> {
    let dimm = view.dimm?;
    let state = match view.state {
        SlotState::Empty => return None,
        SlotState::Inserting => DimmState::Inserting,
        SlotState::Added => DimmState::Added,
        SlotState::Failed => DimmState::Failed,
        SlotState::Removing => DimmState::Removing,
    };
    Some(DimmInfo {
        id: dimm_id(slot),
        slot,
        node: dimm.node,
        base: dimm.base,
        size: dimm.size,
        state,
        last_ost: view.last_ost.map(|o| OstStatus {
            event: o.event,
            status: o.status,
        }),
    })
}

impl VmApi for MemoryHotplug {
    fn info(&self) -> VmInfo {
        let hotplugged = self.hotplugged();
        VmInfo {
            state: "Running".into(),
            memory_actual_size: self.boot_ram + hotplugged,
            memory: MemoryInfo {
                boot: self.boot_ram,
                hotplugged,
                hotplug_size: self.region.map_or(0, |r| r.size),
                slots: self.controller.lock().map_or(0, |c| c.slot_count()),
                block_size: MEMORY_BLOCK_SIZE,
            },
            cpus: self.cpus,
        }
    }

    fn memory(&self) -> Vec<DimmInfo> {
        self.slots()
            .into_iter()
            .filter_map(|(slot, view)| dimm_info(slot, view))
            .collect()
    }

    fn resize(&self, request: ResizeRequest) -> Result<(), ApiError> {
        let current = self.boot_ram + self.hotplugged();
        let desired = request.desired_ram;
        if desired == current {
            return Ok(());
        }
        if desired < current {
            return Err(api_error(
                ErrorKind::BadRequest,
                format!(
                    "desired_ram {} is below the current {}: shrinking is not supported yet",
                    format_size(desired),
                    format_size(current)
                ),
            ));
        }
        self.add(desired - current, 0).map(|_| ())
    }

    fn add_memory(&self, request: AddMemoryRequest) -> Result<DimmInfo, ApiError> {
        self.add(request.size, request.node)
    }
}
