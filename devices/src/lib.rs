//! Tidal's emulated devices. They know nothing of KVM or HTTP: each one is a register block that
//! the VMM puts on a bus, plus the signals (interrupts, exit requests) it raises.

pub mod exit;
pub mod ged;
pub mod i8042;
pub mod interrupt;
pub mod memory_hotplug;
#[cfg(feature = "model")]
pub mod model;
pub mod power;
pub mod pvpanic;
pub mod repeats;
pub mod serial;

pub use exit::{ExitReason, ExitSignal};
pub use interrupt::EventFdTrigger;
