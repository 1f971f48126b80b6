//! Memory hotplug on the host side: DIMMs carved from the hotplug region, backed by host
//! memory, mapped through KVM slots into the guest memory map, announced to the guest through
//! the memory-hotplug controller and the GED, and taken back when the guest ejects them.
//! This is what the API's memory calls end up in.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use tidal_api::MAX_TIMEOUT_SECS;
use tidal_devices::ged::Ged;
use tidal_devices::memory_hotplug::{
    Dimm, EjectError, EjectHandler, MemoryHotplugController, SlotListener, SlotState, SlotView,
};
use vm_memory::{
    GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryRegion,
    GuestRegionCollectionError,
};
use vmm_sys_util::eventfd::EventFd;

use crate::layout::MEMORY_BLOCK_SIZE;
use crate::memory::backend::MemoryBackend;
use crate::memory::dimm_space::{DimmSpace, HotplugRegion};
use crate::memory::host::HostMemory;
use crate::memory::kvm_slot::{KvmSlot, KvmSlotError};
use crate::memory::ram::{GuestMemory, RamError, RamRegion};
use crate::numa::BootDimm;
use crate::pool_link::PoolLink;
use tidal_api::size::format_size;

mod error;
mod resize;

pub use error::HotplugError;
use resize::Pending;
pub(crate) use resize::TARGET_STATES;

/// A DIMM the guest ejected: out of the guest memory map, but still in its KVM slot until
/// [`DimmMemory::retire`] deletes the slot and unmaps the memory, on a thread other than the
/// vCPU's that handled the eject.
struct Ejected {
    slot: u32,
    dimm: Dimm,
    /// `None` when the DIMM had no KVM slot left to delete.
    kvm_slot: Option<KvmSlot>,
    /// The guest memory map's reference, let go once the KVM slot is deleted.
    region: Arc<RamRegion>,
    /// The host memory pool counts the DIMM as plugged, and hears when the host has it back.
    pooled: bool,
}

/// Host memory behind the DIMMs: the region's allocator, the KVM slots and the guest memory
/// map. Shared by the API thread (plugging), the vCPU thread that handles an eject, and the
/// main thread, which retires what was ejected.
struct DimmMemory {
    vm: Arc<VmFd>,
    memory: GuestMemoryAtomic<GuestMemory>,
    /// Each NUMA node's share of the hotplug region (`None`: nothing can be added to it).
    spaces: Vec<Option<DimmSpace>>,
    /// DIMM slot `n` uses KVM slot `first_kvm_slot + n`.
    first_kvm_slot: u32,
    /// The KVM slot of each DIMM slot that maps memory.
    kvm_slots: BTreeMap<u32, KvmSlot>,
    /// DIMMs ejected and not yet retired.
    ejected: Vec<Ejected>,
    /// The host memory pool this VM is in (`--pool`).
    pool: Option<Arc<PoolLink>>,
}

impl DimmMemory {
    /// Reserves `size` bytes of `node`'s share of the region, block aligned (after retiring
    /// what was ejected, whose ranges are then free again).
    fn allocate(&mut self, node: u32, size: u64) -> Option<u64> {
        self.retire();
        self.space(node)?.allocate(size)
    }

    /// Gives a DIMM's range back to its node's share of the region; boot memory (of a
    /// hotpluggable node) was never taken from it.
    fn free(&mut self, node: u32, base: u64, size: u64) {
        let freed = match self.space(node) {
            Some(space) if space.holds(base) => space.free(base, size).map_err(|e| e.to_string()),
            _ => return,
        };
        if let Err(e) = freed {
            log::error!("cannot return {base:#x}+{size:#x} to the hotplug allocator: {e}");
        }
    }

    /// Bytes of the DIMM at `base` that are resident on the host.
    fn resident(&self, base: u64) -> Option<u64> {
        let memory = self.memory.memory();
        let region = memory.find_region(GuestAddress(base))?;
        region
            .resident()
            .inspect_err(|e| log::debug!("cannot tell how much of {base:#x} is resident: {e}"))
            .ok()
    }

    fn space(&mut self, node: u32) -> Option<&mut DimmSpace> {
        self.spaces.get_mut(usize::try_from(node).ok()?)?.as_mut()
    }

    /// Puts a DIMM's host memory (see [`dimm_memory`]) in slot `slot`: its KVM slot, then the
    /// guest memory map. On an error neither stays.
    fn install(&mut self, slot: u32, region: Arc<RamRegion>) -> Result<(), MapError> {
        let base = region.start_addr().0;
        self.retire();
        if self.kvm_slots.contains_key(&slot) || self.ejected.iter().any(|e| e.slot == slot) {
            return Err(MapError::SlotMapped(slot));
        }
        let kvm_slot = KvmSlot::new(self.vm.clone(), self.first_kvm_slot + slot, region.clone())?;
        let guard = self
            .memory
            .lock()
            .map_err(|_| MapError::Poisoned("guest memory map"))?;
        // An error drops `kvm_slot`, which deletes the slot before the mapping can go.
        let map = self
            .memory
            .memory()
            .insert_region(region)
            .map_err(|source| MapError::GuestMap {
                action: "add",
                base,
                source,
            })?;
        guard.replace(map);
        self.kvm_slots.insert(slot, kvm_slot);
        Ok(())
    }

    /// Takes a DIMM out of the guest memory map, for [`DimmMemory::retire`] to delete its KVM
    /// slot and unmap it (and tell the pool, when it is `pooled`). A DIMM that is not in the
    /// map keeps its slot.
    fn detach(&mut self, slot: u32, dimm: Dimm, pooled: bool) -> Result<(), MapError> {
        let guard = self
            .memory
            .lock()
            .map_err(|_| MapError::Poisoned("guest memory map"))?;
        let (map, region) = self
            .memory
            .memory()
            .remove_region(GuestAddress(dimm.base), dimm.size)
            .map_err(|source| MapError::GuestMap {
                action: "remove",
                base: dimm.base,
                source,
            })?;
        guard.replace(map);
        self.ejected.push(Ejected {
            slot,
            dimm,
            kvm_slot: self.kvm_slots.remove(&slot),
            region,
            pooled,
        });
        Ok(())
    }

    /// Gives the host back the memory of every ejected DIMM: the KVM slot first, so no vCPU can
    /// reach it, then the mapping (the last reference to the region unmaps it) and the range.
    /// A DIMM whose KVM slot cannot be deleted stays mapped, for the next try.
    fn retire(&mut self) {
        for ejected in std::mem::take(&mut self.ejected) {
            let Ejected {
                slot,
                dimm,
                kvm_slot,
                region,
                pooled,
            } = ejected;
            let started = Instant::now();
            if let Some(kvm_slot) = kvm_slot {
                match kvm_slot.delete() {
                    Ok(mapped) => drop(mapped),
                    Err((kvm_slot, e)) => {
                        log::error!("memory slot {slot}: {e}; its memory stays mapped");
                        self.ejected.push(Ejected {
                            slot,
                            dimm,
                            kvm_slot: Some(kvm_slot),
                            region,
                            pooled,
                        });
                        continue;
                    }
                }
            }
            let slot_deleted = started.elapsed();
            drop(region);
            // The VMM's share of an eject, for profiling removals (docs/benchmarks.md).
            log::debug!(
                "memory slot {slot}: KVM slot deleted in {slot_deleted:?}, host memory unmapped \
                 in {:?}",
                started.elapsed() - slot_deleted
            );
            self.free(dimm.node, dimm.base, dimm.size);
            log::info!(
                "memory slot {slot}: {} returned to the host",
                format_size(dimm.size)
            );
            if let Some(pool) = self.pool.as_ref().filter(|_| pooled) {
                pool.release(dimm.size);
            }
        }
    }

    /// Takes away at once the memory of a DIMM the guest never had ([`DimmMemory::detach`],
    /// then [`DimmMemory::retire`]): the pool never counted it as plugged.
    fn unmap(&mut self, slot: u32, dimm: Dimm) -> Result<(), MapError> {
        self.detach(slot, dimm, false)?;
        self.retire();
        Ok(())
    }
}

/// Fresh host memory from `backend` for `dimm`. Made without holding the DIMM lock: with
/// `prefault` it takes as long as allocating all of it, and a guest's eject takes that lock.
fn dimm_memory(dimm: Dimm, backend: &MemoryBackend) -> Result<Arc<RamRegion>, MapError> {
    let len = usize::try_from(dimm.size).map_err(|_| MapError::TooLarge(dimm.size))?;
    RamRegion::new(GuestAddress(dimm.base), len, backend)
        .map(Arc::new)
        .map_err(|source| MapError::Host {
            size: dimm.size,
            source,
        })
}

/// Why a DIMM's memory could not be mapped or taken away.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("cannot map {} of host memory: {source}", format_size(*.size))]
    Host { size: u64, source: RamError },
    #[error("{} does not fit this host's address space", format_size(*.0))]
    TooLarge(u64),
    #[error(transparent)]
    KvmSlot(#[from] KvmSlotError),
    #[error("cannot {action} the DIMM at {base:#x} in the guest memory map: {source}")]
    GuestMap {
        action: &'static str,
        base: u64,
        source: GuestRegionCollectionError,
    },
    #[error("memory slot {0} already maps a DIMM")]
    SlotMapped(u32),
    #[error("{0} lock poisoned")]
    Poisoned(&'static str),
}

impl MapError {
    /// Whether the host lacked the memory (a 507 for the request that needed it).
    fn is_host_shortage(&self) -> bool {
        matches!(self, Self::Host { source, .. } if source.is_host_shortage())
    }
}

/// Handles the guest's `_EJ0` on the vCPU thread: detaches the DIMM and wakes the main thread,
/// which retires it ([`MemoryHotplug::retire_ejected`]): a vCPU never changes KVM's memory
/// slots nor waits for a large unmap.
struct Ejector {
    dimms: Arc<Mutex<DimmMemory>>,
    retire: EventFd,
}

impl EjectHandler for Ejector {
    fn eject(&mut self, slot: u32, dimm: Dimm) -> Result<(), EjectError> {
        self.dimms
            .lock()
            .map_err(|_| MapError::Poisoned("DIMM memory"))?
            .detach(slot, dimm, true)?;
        if let Err(e) = self.retire.write(1) {
            // The next hotplug operation retires it instead.
            log::error!(
                "cannot wake the main thread to unmap {}: {e}",
                dimm_id(slot)
            );
        }
        Ok(())
    }
}

/// Everything the VM exposes about its memory, and the hotplug operations.
pub struct MemoryHotplug {
    /// Each NUMA node's share of the hotplug region, by node id.
    regions: Vec<Option<HotplugRegion>>,
    /// Each NUMA node's boot RAM, by node id.
    node_boot: Vec<u64>,
    /// Each NUMA node's memory backend, which its DIMMs are mapped with.
    backends: Vec<MemoryBackend>,
    /// What the host has left to give.
    host: HostMemory,
    dimms: Arc<Mutex<DimmMemory>>,
    /// Written when the guest ejected a DIMM, for the main thread to retire it.
    retire: EventFd,
    controller: Arc<Mutex<MemoryHotplugController>>,
    changed: Arc<Condvar>,
    ged: Arc<Ged>,
    /// Held while an operation decides and sets going what it does (see `lock_operation`).
    operation: Mutex<()>,
    /// Slots in the order their DIMMs were plugged, oldest first: a shrink's plan prefers the
    /// newest among sets that cost the same.
    plug_order: Mutex<Vec<u32>>,
    timeout: Duration,
    /// Why the VM is stopping, once it is: waits for the guest end, and no operation starts.
    stopping: OnceLock<String>,
    /// The host memory pool, which grants each hot-add first (`--pool`).
    pool: Option<Arc<PoolLink>>,
}

/// What `Vm::new` hands over to build the hotplug side.
pub struct HotplugParts {
    pub vm: Arc<VmFd>,
    pub memory: GuestMemoryAtomic<GuestMemory>,
    pub first_kvm_slot: u32,
    /// Each NUMA node's share of the hotplug region, by node id.
    pub regions: Vec<Option<HotplugRegion>>,
    /// Each NUMA node's boot RAM, by node id.
    pub node_boot: Vec<u64>,
    /// Each NUMA node's memory backend, by node id.
    pub backends: Vec<MemoryBackend>,
    /// What the host has left to give, checked before each DIMM is added.
    pub host: HostMemory,
    pub controller: Arc<Mutex<MemoryHotplugController>>,
    pub changed: Arc<Condvar>,
    pub ged: Arc<Ged>,
    /// How long to wait for the guest's answer by default.
    pub timeout: Duration,
    /// The host memory pool this VM joined (`--pool`).
    pub pool: Option<Arc<PoolLink>>,
}

#[derive(Debug, thiserror::Error)]
pub enum HotplugSetupError {
    #[error("cannot set up the hotplug region allocator: {0}")]
    Allocator(vm_allocator::Error),
    #[error("cannot map node {node}'s boot memory at {base:#x} as a DIMM: {source}")]
    BootMemory {
        node: u32,
        base: u64,
        source: HotplugError,
    },
    #[error("cannot create the event that wakes the main thread after an eject: {0}")]
    RetireEvent(std::io::Error),
}

pub(crate) fn dimm_id(slot: u32) -> String {
    format!("dimm{slot}")
}

impl MemoryHotplug {
    pub fn new(parts: HotplugParts) -> Result<Self, HotplugSetupError> {
        let spaces = parts
            .regions
            .iter()
            .map(|region| {
                region
                    .map(|r| DimmSpace::new(r.base, r.size))
                    .transpose()
                    .map_err(HotplugSetupError::Allocator)
            })
            .collect::<Result<_, _>>()?;
        let dimms = Arc::new(Mutex::new(DimmMemory {
            vm: parts.vm,
            memory: parts.memory,
            spaces,
            first_kvm_slot: parts.first_kvm_slot,
            kvm_slots: BTreeMap::new(),
            ejected: Vec::new(),
            pool: parts.pool.clone(),
        }));
        let retire = EventFd::new(libc::EFD_NONBLOCK).map_err(HotplugSetupError::RetireEvent)?;
        let ejector = Ejector {
            dimms: dimms.clone(),
            retire: retire.try_clone().map_err(HotplugSetupError::RetireEvent)?,
        };
        if let Ok(mut controller) = parts.controller.lock() {
            controller.set_eject_handler(Box::new(ejector));
        }
        Ok(Self {
            regions: parts.regions,
            node_boot: parts.node_boot,
            backends: parts.backends,
            host: parts.host,
            dimms,
            retire,
            controller: parts.controller,
            changed: parts.changed,
            ged: parts.ged,
            operation: Mutex::new(()),
            plug_order: Mutex::new(Vec::new()),
            timeout: parts.timeout,
            stopping: OnceLock::new(),
            pool: parts.pool,
        })
    }

    /// Maps boot memory that can be removed (the ranges of hotpluggable NUMA nodes) as DIMMs
    /// the guest has from boot: in the lowest free slots, already added, never announced; the
    /// guest finds them present when it scans its memory devices, and they go like any DIMM.
    pub fn plug_boot_memory(&self, dimms: &[BootDimm]) -> Result<(), HotplugSetupError> {
        for &BootDimm { node, base, size } in dimms {
            self.plug_at_boot(Dimm { base, size, node })
                .map_err(|source| HotplugSetupError::BootMemory { node, base, source })?;
        }
        Ok(())
    }

    fn plug_at_boot(&self, dimm: Dimm) -> Result<(), HotplugError> {
        let mut controller = self.controller()?;
        let slot = controller.free_slot().ok_or(HotplugError::NoFreeSlot)?;
        let region = dimm_memory(dimm, &self.backend(dimm.node))?;
        self.dimms
            .lock()
            .map_err(|_| HotplugError::Poisoned("DIMM memory"))?
            .install(slot, region)?;
        controller
            .plug_at_boot(slot, dimm)
            .map_err(HotplugError::Slot)?;
        if let Ok(mut order) = self.plug_order.lock() {
            order.push(slot);
        }
        Ok(())
    }

    /// The VM is stopping because `why` (the guest will not answer any more): operations
    /// waiting for the guest fail at once with that reason, and new ones are refused.
    pub fn stop(&self, why: &str) {
        // Set under the controller lock, which a wait holds while it tests its condition, so
        // no waiter can test it just before and then sleep through the wake-up.
        let controller = self
            .controller
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let _ = self.stopping.set(why.to_owned());
        drop(controller);
        self.changed.notify_all();
    }

    fn controller(&self) -> Result<MutexGuard<'_, MemoryHotplugController>, HotplugError> {
        self.controller
            .lock()
            .map_err(|_| HotplugError::Poisoned("hotplug controller"))
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

    /// Boot RAM of node `scope`, or of the whole VM (`None`).
    pub(crate) fn boot_ram(&self, scope: Option<u32>) -> u64 {
        match scope {
            None => self.node_boot.iter().sum(),
            Some(node) => usize::try_from(node)
                .ok()
                .and_then(|node| self.node_boot.get(node))
                .copied()
                .unwrap_or(0),
        }
    }

    /// Bytes in DIMMs the guest has accepted and still holds: of node `scope`, or all (`None`).
    pub(crate) fn hotplugged(&self, scope: Option<u32>) -> u64 {
        self.bytes_in(scope, &[SlotState::Added, SlotState::Removing])
    }

    /// Bytes in DIMMs of node `scope` (or all, `None`) in one of `states`.
    pub(crate) fn bytes_in(&self, scope: Option<u32>, states: &[SlotState]) -> u64 {
        self.slots()
            .iter()
            .filter(|(_, view)| states.contains(&view.state))
            .filter_map(|(_, view)| view.dimm)
            .filter(|dimm| scope.is_none_or(|node| dimm.node == node))
            .map(|dimm| dimm.size)
            .sum()
    }

    /// Bytes of `node`'s share of the region not used by any DIMM.
    fn region_free(&self, node: u32, region: HotplugRegion) -> u64 {
        let used: u64 = self
            .slots()
            .iter()
            .filter_map(|(_, view)| view.dimm.filter(|d| d.node == node).map(|d| d.size))
            .sum();
        region.size.saturating_sub(used)
    }

    /// `node`'s share of the hotplug region, or why memory cannot be added to it.
    fn node_region(&self, node: u32) -> Result<HotplugRegion, HotplugError> {
        if self.regions.iter().all(Option::is_none) {
            return Err(HotplugError::NoRegion);
        }
        let share = usize::try_from(node)
            .ok()
            .and_then(|index| self.regions.get(index))
            .ok_or_else(|| self.no_such_node(node))?;
        share.ok_or(HotplugError::NoShare(node))
    }

    /// The backend of `node`'s memory (a node that exists: the default for one that does not).
    pub(crate) fn backend(&self, node: u32) -> MemoryBackend {
        let backend = usize::try_from(node)
            .ok()
            .and_then(|n| self.backends.get(n));
        backend.copied().unwrap_or_default()
    }

    fn no_such_node(&self, node: u32) -> HotplugError {
        HotplugError::NoSuchNode {
            node,
            nodes: self.node_boot.len(),
        }
    }

    /// Refuses to add `size` bytes to `node` that the host does not have available (when it
    /// can tell): free memory, or free huge pages in the pool that backs the node.
    fn check_host_memory(&self, size: u64, node: u32) -> Result<(), HotplugError> {
        let shortage = |message: String| Err(HotplugError::HostShort(message));
        if let Some(page) = self.backend(node).huge_pages {
            let needed = size / page.bytes();
            return match self.host.free_huge_pages(page) {
                Some(free) if free < needed => shortage(format!(
                    "the host's pool of {} huge pages has {free} free, fewer than the {needed} \
                     that {} needs: raise {}/nr_hugepages",
                    format_size(page.bytes()),
                    format_size(size),
                    page.sysfs_path()
                )),
                _ => Ok(()),
            };
        }
        match self.host.available() {
            Some(available) if available < size => shortage(format!(
                "the host has {} of memory available, less than the {} asked for: the VM \
                 could be killed once the guest uses it; set force to add it anyway",
                format_size(available),
                format_size(size)
            )),
            _ => Ok(()),
        }
    }

    /// Refuses a total that node `scope` (the whole VM: `None`) can never have: not its boot
    /// RAM plus whole memory blocks, or above its boot RAM plus its share of the hotplug
    /// region. The error names the nearest totals it can have.
    fn check_reachable(&self, scope: Option<u32>, desired: u64) -> Result<(), HotplugError> {
        let region = match scope {
            None => self.regions.iter().flatten().map(|r| r.size).sum(),
            Some(node) => usize::try_from(node)
                .ok()
                .and_then(|node| self.regions.get(node).copied().flatten())
                .map_or(0, |r| r.size),
        };
        let most = self.boot_ram(scope) + region;
        let whose = scope.map_or("the VM".to_owned(), |node| format!("node {node}"));
        if desired > most {
            if region == 0 {
                self.node_region(scope.unwrap_or(0))?;
            }
            return Err(HotplugError::Invalid(format!(
                "desired_ram {} is more than {whose} can have: at most {} (boot RAM plus \
                     the hotplug region)",
                format_size(desired),
                format_size(most)
            )));
        }
        let boot = self.boot_ram(scope);
        if desired < boot {
            let whose = scope.map_or("the boot memory".to_owned(), |node| {
                format!("node {node}'s boot memory")
            });
            return Err(HotplugError::Invalid(format!(
                "desired_ram {} is below {whose} ({}), which is never removed",
                format_size(desired),
                format_size(boot)
            )));
        }
        // DIMMs come in whole blocks on top of boot RAM (which need not be whole blocks).
        let over = desired.saturating_sub(boot) % MEMORY_BLOCK_SIZE;
        if over != 0 {
            let below = desired - over;
            return Err(HotplugError::Invalid(format!(
                "desired_ram {} is not boot RAM ({}) plus whole {} memory blocks: the \
                     nearest totals are {} and {}",
                format_size(desired),
                format_size(boot),
                format_size(MEMORY_BLOCK_SIZE),
                format_size(below),
                format_size(below + MEMORY_BLOCK_SIZE)
            )));
        }
        Ok(())
    }

    /// The node a resize grows: the first whose share has `size` bytes free, else the first
    /// with a share at all (whose error then says what is free).
    fn node_to_grow(&self, size: u64) -> u32 {
        let nodes = (0u32..).zip(&self.regions);
        let with_share = nodes.filter_map(|(node, region)| region.map(|r| (node, r)));
        let mut first = None;
        for (node, region) in with_share {
            first.get_or_insert(node);
            if self.region_free(node, region) >= size {
                return node;
            }
        }
        first.unwrap_or(0)
    }

    /// A request's timeout, or the VM's default.
    pub(crate) fn timeout_for(&self, secs: Option<u64>) -> Result<Duration, HotplugError> {
        match secs {
            None => Ok(self.timeout),
            Some(secs) if !(1..=MAX_TIMEOUT_SECS).contains(&secs) => Err(HotplugError::Invalid(
                format!("timeout_secs must be from 1 to {MAX_TIMEOUT_SECS}, not {secs}"),
            )),
            Some(secs) => Ok(Duration::from_secs(secs)),
        }
    }

    /// The operation lock, waited for at most `patience`: it is held while an operation
    /// decides and sets going what it does, and while a shrink waits for the DIMM that keeps
    /// what it overshoots. Refused once the VM is stopping.
    fn lock_operation(&self, patience: Duration) -> Result<MutexGuard<'_, ()>, HotplugError> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(why) = self.stopping.get() {
                return Err(HotplugError::Stopping(why.clone()));
            }
            match self.operation.try_lock() {
                Ok(guard) => return Ok(guard),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TryLockError::WouldBlock) => return Err(HotplugError::Busy(patience)),
                Err(TryLockError::Poisoned(_)) => {
                    return Err(HotplugError::Poisoned("hotplug operation"))
                }
            }
        }
    }

    /// `node`'s share of the region, if `size` is a size DIMMs can have.
    fn check_size(&self, size: u64, node: u32) -> Result<HotplugRegion, HotplugError> {
        let region = self.node_region(node)?;
        if size == 0 || !size.is_multiple_of(MEMORY_BLOCK_SIZE) {
            return Err(HotplugError::Invalid(format!(
                "size {size} is not a positive multiple of the {} memory block size",
                format_size(MEMORY_BLOCK_SIZE)
            )));
        }
        self.backend(node)
            .check_size(&format!("a DIMM for node {node}:"), size)
            .map_err(|e| HotplugError::Invalid(e.to_string()))?;
        Ok(region)
    }

    /// Plugs one DIMM of `size` bytes into node `node`, for the guest's next scan (see
    /// [`MemoryHotplug::notify_guest`]). Unless `force`, refuses when the host has less memory
    /// available than `size`; in a host memory pool, refuses (even with `force`) what the
    /// pool's budget does not grant.
    fn plug(&self, size: u64, node: u32, force: bool) -> Result<Pending, HotplugError> {
        let region = self.check_size(size, node)?;
        if !force {
            self.check_host_memory(size, node)?;
        }
        let Some(pool) = &self.pool else {
            return self.map_dimm(size, node, region);
        };
        pool.reserve(size).map_err(HotplugError::Pool)?;
        let plugged = self.map_dimm(size, node, region);
        match &plugged {
            Ok(_) => pool.commit(size),
            Err(_) => pool.cancel(size),
        }
        plugged
    }

    /// Maps a DIMM of `size` bytes in node `node`'s share of the hotplug region (`region`) and
    /// puts it in a free slot; nothing of it stays behind when that fails.
    fn map_dimm(
        &self,
        size: u64,
        node: u32,
        region: HotplugRegion,
    ) -> Result<Pending, HotplugError> {
        let slot = self
            .controller()?
            .free_slot()
            .ok_or(HotplugError::NoFreeSlot)?;
        let base = {
            let mut dimms = self
                .dimms
                .lock()
                .map_err(|_| HotplugError::Poisoned("DIMM memory"))?;
            let Some(base) = dimms.allocate(node, size) else {
                // The message reads the controller: not while holding `dimms`, which an eject
                // on a vCPU thread takes while holding the controller.
                drop(dimms);
                return Err(HotplugError::RegionFull {
                    size,
                    share: if self.regions.len() > 1 {
                        format!("node {node}'s share of the hotplug region")
                    } else {
                        "the hotplug region".to_owned()
                    },
                    free: self.region_free(node, region),
                });
            };
            base
        };
        let dimm = Dimm { base, size, node };
        let installed = dimm_memory(dimm, &self.backend(node)).and_then(|region| {
            self.dimms
                .lock()
                .map_err(|_| MapError::Poisoned("DIMM memory"))?
                .install(slot, region)
        });
        if let Err(e) = installed {
            if let Ok(mut dimms) = self.dimms.lock() {
                dimms.free(node, base, size);
            }
            return Err(e.into());
        }
        let plugged = self.controller()?.plug(slot, dimm);
        if let Err(e) = plugged {
            // Undo the mapping: nothing of this DIMM stays behind.
            if let Ok(mut dimms) = self.dimms.lock() {
                if let Err(undo) = dimms.unmap(slot, dimm) {
                    log::error!("cannot undo the mapping of {}: {undo}", dimm_id(slot));
                }
            }
            return Err(HotplugError::Slot(e));
        }
        if let Ok(mut order) = self.plug_order.lock() {
            order.retain(|&s| s != slot);
            order.push(slot);
        }
        Ok(Pending {
            slot,
            dimm,
            state: SlotState::Inserting,
        })
    }

    /// Plugs `size` bytes into node `node`: one DIMM when a free piece of its share holds
    /// them, else one DIMM in each of the largest pieces (DIMMs come and go anywhere in the
    /// region, which leaves it in pieces). Checks the slots and the host for all of it first.
    fn grow(&self, size: u64, node: u32, force: bool) -> Result<Vec<Pending>, HotplugError> {
        let pieces = match self.dimms.lock() {
            Ok(mut dimms) => {
                dimms.retire();
                dimms.space(node).map(|s| s.pieces(size))
            }
            Err(_) => None,
        };
        let Some(pieces) = pieces.filter(|p| p.len() > 1 && p.iter().sum::<u64>() == size) else {
            // One piece, or not enough room: `plug` makes the DIMM or says why not.
            return self.plug(size, node, force).map(|pending| vec![pending]);
        };
        let free_slots = self.controller()?.free_slots();
        if free_slots < pieces.len() {
            return Err(HotplugError::SlotsShort {
                size,
                pieces: pieces.len(),
                free: free_slots,
            });
        }
        if !force {
            self.check_host_memory(size, node)?;
        }
        let mut plugged = Vec::new();
        for piece in pieces {
            match self.plug(piece, node, true) {
                Ok(pending) => plugged.push(pending),
                Err(e) if !plugged.is_empty() => {
                    // What is plugged stays, for the guest to take.
                    self.notify_guest();
                    return Err(e.after(format!(
                        "plugged {} of the {} asked for",
                        format_size(plugged.iter().map(|p| p.dimm.size).sum()),
                        format_size(size)
                    )));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(plugged)
    }

    /// Whether a DIMM of `size` bytes would find a slot and a piece of `node`'s share of the
    /// region now.
    fn room_for(&self, node: u32, size: u64) -> bool {
        if self.controller().map_or(true, |c| c.free_slot().is_none()) {
            return false;
        }
        let Ok(mut dimms) = self.dimms.lock() else {
            return false;
        };
        let base = dimms.allocate(node, size);
        base.inspect(|&base| dimms.free(node, base, size)).is_some()
    }

    /// The event the main thread waits on to call [`MemoryHotplug::retire_ejected`].
    pub fn retire_event(&self) -> &EventFd {
        &self.retire
    }

    /// Deletes the KVM slots of the DIMMs the guest ejected and unmaps their memory.
    pub fn retire_ejected(&self) {
        let _ = self.retire.read();
        match self.dimms.lock() {
            Ok(mut dimms) => dimms.retire(),
            Err(_) => log::error!("cannot retire ejected DIMMs: the DIMM memory lock is poisoned"),
        }
    }

    /// Interrupts the guest so that it scans the memory devices and finds what changed.
    fn notify_guest(&self) {
        if let Err(e) = self.ged.notify(tidal_acpi::GED_MEMORY_HOTPLUG) {
            log::error!("cannot interrupt the guest for a memory hotplug change: {e}");
        }
    }
}

/// The operations and figures the API's face (`control::VmHandle`) offers.
impl MemoryHotplug {
    /// Tells `listener` of every slot change, on the thread that made it.
    pub(crate) fn set_listener(&self, listener: Box<dyn SlotListener>) {
        if let Ok(mut controller) = self.controller.lock() {
            controller.set_listener(listener);
        }
    }

    /// Grows or shrinks node `scope` (the whole VM: `None`) to `desired` bytes
    /// ([`MemoryHotplug::resize_memory`]), waiting `timeout_secs` (the default: `None`).
    pub(crate) fn resize(
        &self,
        scope: Option<u32>,
        desired: u64,
        timeout_secs: Option<u64>,
        force: bool,
        wait: bool,
    ) -> Result<(), HotplugError> {
        let timeout = self.timeout_for(timeout_secs)?;
        self.resize_memory(scope, desired, timeout, force, wait)
    }

    /// Plugs one DIMM of `size` bytes into `node` and waits for the guest to take it.
    pub(crate) fn add(
        &self,
        size: u64,
        node: u32,
        force: bool,
    ) -> Result<(u32, SlotView), HotplugError> {
        let pending = {
            let _operation = self.lock_operation(self.timeout)?;
            let pending = self.plug(size, node, force)?;
            self.notify_guest();
            pending
        };
        self.wait_for(pending, self.timeout)?;
        let view = self.controller()?.slot(pending.slot);
        let view = view.ok_or_else(|| HotplugError::Vanished(dimm_id(pending.slot)))?;
        Ok((pending.slot, view))
    }

    /// Asks the guest to eject DIMM `id` and waits until it has, `timeout_secs` at most.
    pub(crate) fn remove(&self, id: &str, timeout_secs: Option<u64>) -> Result<(), HotplugError> {
        let timeout = self.timeout_for(timeout_secs)?;
        let removing = {
            let _operation = self.lock_operation(timeout)?;
            let slot = self.slot_of(id)?;
            let removing = self.request_removals(&[slot])?;
            self.notify_guest();
            removing
        };
        for pending in removing {
            self.wait_for(pending, timeout)?;
        }
        Ok(())
    }

    /// The node `zone` names (Cloud Hypervisor's memory zones are Tidal's NUMA nodes).
    pub(crate) fn zone_node(&self, zone: &tidal_api::ZoneId) -> Result<u32, HotplugError> {
        let nodes = self.node_boot.len();
        match zone.node() {
            Some(node) if usize::try_from(node).is_ok_and(|n| n < nodes) => Ok(node),
            Some(node) => Err(self.no_such_node(node)),
            None => Err(HotplugError::NoSuchZone {
                zone: zone.to_string(),
                nodes,
            }),
        }
    }

    /// Every DIMM, by slot.
    pub(crate) fn dimms(&self) -> Vec<(u32, SlotView)> {
        self.slots()
    }

    /// Every DIMM and where it is in its life, in one line: logged when the VM ends by a reset
    /// or a failure, so that a crash in the middle of a hot-remove can be told from any other.
    pub fn describe_dimms(&self) -> String {
        if self.controller.is_poisoned() {
            return "unknown (a thread panicked holding the controller)".to_owned();
        }
        let described: Vec<String> = self
            .slots()
            .into_iter()
            .filter_map(|(slot, view)| {
                let dimm = view.dimm?;
                let ost = view.last_ost.map_or_else(String::new, |ost| {
                    format!(
                        ", last _OST event {:#x} status {:#x}",
                        ost.event, ost.status
                    )
                });
                Some(format!(
                    "{} ({} at {:#x}, node {}) {}{ost}",
                    dimm_id(slot),
                    format_size(dimm.size),
                    dimm.base,
                    dimm.node,
                    format!("{:?}", view.state).to_lowercase(),
                ))
            })
            .collect();
        if described.is_empty() {
            "none".to_owned()
        } else {
            described.join("; ")
        }
    }

    /// Each node's share of the hotplug region, by node id.
    pub(crate) fn shares(&self) -> &[Option<HotplugRegion>] {
        &self.regions
    }

    pub(crate) fn slot_count(&self) -> u32 {
        self.controller.lock().map_or(0, |c| c.slot_count())
    }

    /// Whether the VM is stopping (see [`MemoryHotplug::stop`]).
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.get().is_some()
    }

    /// The slot of DIMM `id` ("dimmN").
    fn slot_of(&self, id: &str) -> Result<u32, HotplugError> {
        let not_found = || HotplugError::NoSuchDimm(id.to_owned());
        let slot: u32 = id
            .strip_prefix("dimm")
            .and_then(|n| n.parse().ok())
            .ok_or_else(not_found)?;
        match self.controller()?.slot(slot) {
            Some(view) if view.dimm.is_some() => Ok(slot),
            _ => Err(not_found()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ost_codes_have_meanings() {
        assert_eq!(ost_meaning(0x82), "_OST status 0x82 (device busy)");
        assert_eq!(ost_meaning(0x99), "_OST status 0x99 (unknown status)");
    }
}
