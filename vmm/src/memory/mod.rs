//! Guest memory and the host memory behind it: the boot memory map ([`guest`]), the host
//! mappings of guest RAM ([`ram`]) and what backs them ([`backend`]), what the host has left to
//! give ([`host`]), the hotplug region and its allocator ([`dimm_space`]), and the KVM slots
//! that let the guest reach a mapping ([`kvm_slot`]). Memory hotplug (`crate::hotplug`) builds
//! on these; nothing here knows of DIMMs' states or of the guest's answers.

pub mod backend;
pub mod dimm_space;
pub mod guest;
pub mod host;
pub mod kvm_slot;
pub mod ram;
