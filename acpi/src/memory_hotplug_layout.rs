//! The memory-hotplug controller's register block (docs/design.md, "Memory-hotplug registers"):
//! the one definition that the AML here and the controller that implements it (`tidal-devices`)
//! are both built from. Offsets are in bytes from the block's start; the status and control bits
//! are bit numbers, since AML fields are laid out in bits.

/// Length of the register block.
pub const REGISTERS_LEN: u64 = 0x18;
/// Every register is this many bytes wide, and aligned to it: the only valid access.
pub const REGISTER_WIDTH: u64 = 4;

/// Read: the selected DIMM's base, low 32 bits. Write: [`SELECTOR`].
pub const BASE_LO: u64 = 0x00;
/// Read: the base, high 32 bits. Write: [`OST_EVENT`].
pub const BASE_HI: u64 = 0x04;
/// Read: the length, low 32 bits. Write: [`OST_STATUS`].
pub const LEN_LO: u64 = 0x08;
/// Read: the length, high 32 bits.
pub const LEN_HI: u64 = 0x0c;
/// Read: the proximity domain.
pub const NODE: u64 = 0x10;
/// Read: the selected slot's [`status`] bits. Write: [`CONTROL`].
pub const STATUS: u64 = 0x14;

/// Write: the slot selector.
pub const SELECTOR: u64 = BASE_LO;
/// Write: the `_OST` event.
pub const OST_EVENT: u64 = BASE_HI;
/// Write: the `_OST` status, which completes the `_OST`.
pub const OST_STATUS: u64 = LEN_LO;
/// Write: [`control`] bits for the selected slot.
pub const CONTROL: u64 = STATUS;

/// Bit numbers of [`STATUS`].
pub mod status {
    /// The slot holds a DIMM.
    pub const ENABLED: u32 = 0;
    /// The guest has not been told of the DIMM's insertion yet.
    pub const INSERT_PENDING: u32 = 1;
    /// The guest has not been told of the host's removal request yet.
    pub const REMOVE_PENDING: u32 = 2;
}

/// Bit numbers of [`CONTROL`].
pub mod control {
    /// Clears the insert-pending bit.
    pub const CLEAR_INSERT: u32 = 1;
    /// Clears the remove-pending bit.
    pub const CLEAR_REMOVE: u32 = 2;
    /// The guest's `_EJ0`.
    pub const EJECT: u32 = 3;
}
