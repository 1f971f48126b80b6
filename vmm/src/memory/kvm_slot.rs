//! A KVM memory slot and the host mapping it lets the guest reach, as one value.
//!
//! KVM reads and writes a slot's host memory whenever a vCPU touches it, so that memory must stay
//! mapped until the slot is gone. [`KvmSlot`] owns a reference to the [`RamRegion`] it maps:
//! the region cannot be unmapped while the slot exists, and the slot is deleted before the
//! reference is let go. A slot whose deletion fails keeps its region mapped for the rest of the
//! process (leaked, never freed under the guest), so nothing here can unmap memory KVM still
//! maps.

use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryRegion;

use super::ram::RamRegion;

/// Why a KVM slot could not be set or deleted.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} KVM memory slot {slot} at {base:#x}: {source}")]
pub struct KvmSlotError {
    action: &'static str,
    slot: u32,
    base: u64,
    source: kvm_ioctls::Error,
}

/// KVM memory slot `slot`, mapping `region` into the guest at the region's address.
#[derive(Debug)]
pub struct KvmSlot {
    vm: Arc<VmFd>,
    slot: u32,
    region: Arc<RamRegion>,
    /// Set once KVM has deleted the slot.
    deleted: bool,
}

impl KvmSlot {
    /// Maps `region` into the guest through KVM memory slot `slot`.
    pub fn new(vm: Arc<VmFd>, slot: u32, region: Arc<RamRegion>) -> Result<Self, KvmSlotError> {
        let entry = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.host_address() as u64,
        };
        // SAFETY: the host range is a live mapping owned by `region`; `Self` holds a reference
        // to it until the slot is deleted (`delete`, `Drop`), and leaks it if that fails.
        unsafe { vm.set_user_memory_region(entry) }.map_err(|source| KvmSlotError {
            action: "set",
            slot,
            base: entry.guest_phys_addr,
            source,
        })?;
        Ok(Self {
            vm,
            slot,
            region,
            deleted: false,
        })
    }

    /// Takes the slot away from the guest and gives back the region it mapped: once this returns,
    /// no vCPU can reach that memory and the host may unmap it. A slot that KVM would not delete
    /// is handed back, still mapped.
    pub fn delete(mut self) -> Result<Arc<RamRegion>, (Self, KvmSlotError)> {
        match self.remove_from_kvm() {
            Ok(()) => {
                self.deleted = true;
                Ok(Arc::clone(&self.region))
            }
            Err(e) => Err((self, e)),
        }
    }

    /// The guest-physical address the slot maps.
    pub fn base(&self) -> u64 {
        self.region.start_addr().0
    }

    fn remove_from_kvm(&self) -> Result<(), KvmSlotError> {
        let base = self.base();
        let entry = kvm_userspace_memory_region {
            slot: self.slot,
            flags: 0,
            guest_phys_addr: base,
            memory_size: 0,
            userspace_addr: 0,
        };
        // SAFETY: a zero-sized region deletes the slot; KVM touches no host memory for it.
        unsafe { self.vm.set_user_memory_region(entry) }.map_err(|source| KvmSlotError {
            action: "delete",
            slot: self.slot,
            base,
            source,
        })
    }
}

impl Drop for KvmSlot {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        if let Err(e) = self.remove_from_kvm() {
            log::error!("{e}; its host memory stays mapped");
            std::mem::forget(Arc::clone(&self.region));
        }
    }
}
