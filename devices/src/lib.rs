//! Tidal's emulated devices. They know nothing of KVM or HTTP: each one is a register block that
//! the VMM puts on a bus, plus the signals (interrupts, exit requests) it raises.

pub mod exit;
pub mod ged;
pub mod i8042;
pub mod interrupt;
pub mod memory_hotplug;
pub mod power;
pub mod serial;

pub use exit::{ExitReason, ExitSignal};
pub use interrupt::EventFdTrigger;
