//! The VM as the API sees it: [`VmHandle`] answers `VmApi` calls from the hotplug logic, the
//! VM's exit signal and what the VM was started with, turns slot changes into the API's
//! events, and the hotplug logic's errors into the API's (`From<HotplugError> for ApiError`).

use std::sync::Arc;

use tidal_api::{
    AddMemoryRequest, ApiError, DimmInfo, DimmState, EventJournal, HotplugEvent, MemoryInfo,
    NodeMemory, OstStatus, RemoveMemoryRequest, ResizeRequest, ResizeZoneRequest, Subscription,
    VmApi, VmConfigInfo, VmInfo, VmState,
};
use tidal_devices::memory_hotplug::{Ost, SlotEvent, SlotListener, SlotState, SlotView};
use tidal_devices::{ExitReason, ExitSignal};

use crate::hotplug::{dimm_id, HotplugError, MemoryHotplug, TARGET_STATES};
use crate::layout::MEMORY_BLOCK_SIZE;

/// What the API server calls into.
pub struct VmHandle {
    hotplug: Arc<MemoryHotplug>,
    /// What ends the VM: the main loop waits on it.
    exit: Arc<ExitSignal>,
    /// What the VM was started with, for `vm.info`.
    described: VmConfigInfo,
    events: Arc<EventJournal>,
}

impl VmHandle {
    pub fn new(
        hotplug: Arc<MemoryHotplug>,
        exit: Arc<ExitSignal>,
        described: VmConfigInfo,
    ) -> Self {
        let events = Arc::new(EventJournal::default());
        hotplug.set_listener(Box::new(HubListener(events.clone())));
        Self {
            hotplug,
            exit,
            described,
            events,
        }
    }
}

impl VmApi for VmHandle {
    fn info(&self) -> VmInfo {
        let memory = &self.hotplug;
        let boot = memory.boot_ram(None);
        let hotplugged = memory.hotplugged(None);
        let nodes = (0u32..)
            .zip(memory.shares())
            .map(|(id, share)| NodeMemory {
                id,
                boot: memory.boot_ram(Some(id)),
                hotplugged: memory.hotplugged(Some(id)),
                hotplug_size: share.map_or(0, |r| r.size),
                backend: memory.backend(id).into(),
            })
            .collect();
        let desired_ram = boot + memory.bytes_in(None, &TARGET_STATES);
        let mut config = self.described.clone();
        config.memory.size = desired_ram;
        VmInfo {
            state: if memory.is_stopping() {
                VmState::Shutdown
            } else {
                VmState::Running
            },
            memory_actual_size: boot + hotplugged,
            desired_ram,
            memory: MemoryInfo {
                boot,
                hotplugged,
                hotplug_size: memory.shares().iter().flatten().map(|r| r.size).sum(),
                slots: memory.slot_count(),
                block_size: MEMORY_BLOCK_SIZE,
                inserting: memory.bytes_in(None, &[SlotState::Inserting]),
                removing: memory.bytes_in(None, &[SlotState::Removing]),
                nodes,
            },
            cpus: config.cpus.boot_vcpus,
            config,
        }
    }

    fn memory(&self) -> Vec<DimmInfo> {
        let dimms = self.hotplug.dimms().into_iter();
        dimms
            .filter_map(|(slot, view)| dimm_info(slot, view))
            .collect()
    }

    /// Cloud Hypervisor's resize: memory to `desired_ram` (absent: as it is); `desired_vcpus`
    /// and `desired_balloon` only as what the VM has (its vCPU count, no balloon).
    fn resize(&self, request: ResizeRequest) -> Result<(), ApiError> {
        let cpus = self.described.cpus.boot_vcpus;
        if let Some(vcpus) = request.desired_vcpus.filter(|&vcpus| vcpus != cpus) {
            return Err(HotplugError::Invalid(format!(
                "vCPU hotplug is not supported: the VM has {cpus} vCPUs, not {vcpus}"
            ))
            .into());
        }
        if let Some(balloon) = request.desired_balloon.filter(|&balloon| balloon != 0) {
            return Err(HotplugError::Invalid(format!(
                "Tidal has no balloon device: desired_balloon must be 0, not {balloon}"
            ))
            .into());
        }
        let Some(desired) = request.desired_ram else {
            return Ok(());
        };
        let (timeout, force, wait) = (request.timeout_secs, request.force, request.wait);
        Ok(self.hotplug.resize(None, desired, timeout, force, wait)?)
    }

    fn resize_zone(&self, request: ResizeZoneRequest) -> Result<(), ApiError> {
        let node = self.hotplug.zone_node(&request.id)?;
        let (timeout, force, wait) = (request.timeout_secs, request.force, request.wait);
        let desired = request.desired_ram;
        Ok(self
            .hotplug
            .resize(Some(node), desired, timeout, force, wait)?)
    }

    fn add_memory(&self, request: AddMemoryRequest) -> Result<DimmInfo, ApiError> {
        let (slot, view) = self
            .hotplug
            .add(request.size, request.node, request.force)?;
        dimm_info(slot, view).ok_or_else(|| HotplugError::Vanished(dimm_id(slot)).into())
    }

    fn remove_memory(&self, request: RemoveMemoryRequest) -> Result<(), ApiError> {
        Ok(self.hotplug.remove(&request.id, request.timeout_secs)?)
    }

    fn subscribe(&self, since: Option<u64>) -> Subscription {
        self.events.subscribe(since)
    }

    fn shutdown(&self) {
        self.exit.request(ExitReason::Shutdown);
    }
}

/// Hands every slot change to the API's events journal (it is called with the controller
/// locked; publishing never waits for a reader).
struct HubListener(Arc<EventJournal>);

impl SlotListener for HubListener {
    fn slot_changed(&self, event: SlotEvent) {
        let Some(dimm) = event.dimm else {
            return;
        };
        let event = HotplugEvent {
            seq: 0,
            id: dimm_id(event.slot),
            slot: event.slot,
            node: dimm.node,
            base: dimm.base,
            size: dimm.size,
            old_state: api_state(event.old),
            new_state: api_state(event.new),
            ost: event.ost.map(api_ost),
            timestamp_us: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
        };
        self.0.publish(event);
    }
}

fn api_state(state: SlotState) -> DimmState {
    match state {
        SlotState::Empty => DimmState::Empty,
        SlotState::Inserting => DimmState::Inserting,
        SlotState::Added => DimmState::Added,
        SlotState::Failed => DimmState::Failed,
        SlotState::Removing => DimmState::Removing,
    }
}

fn api_ost(ost: Ost) -> OstStatus {
    OstStatus {
        event: ost.event,
        status: ost.status,
    }
}

fn dimm_info(slot: u32, view: SlotView) -> Option<DimmInfo> {
    let dimm = view.dimm?;
    Some(DimmInfo {
        id: dimm_id(slot),
        slot,
        node: dimm.node,
        base: dimm.base,
        size: dimm.size,
        state: api_state(view.state),
        last_ost: view.last_ost.map(api_ost),
    })
}
