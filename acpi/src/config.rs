//! What the VMM tells this crate about the machine. Plain data, decided before any table is
//! built, so `build_tables` is the single place where a machine description becomes ACPI.

/// Everything the ACPI tables describe. Optional parts are absent by default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs. vCPU `i` has local APIC id `i` and ACPI processor UID `i`.
    pub cpus: u32,
    /// The legacy serial ports (COM1, then COM2), each described in the DSDT as a `PNP0501`
    /// device named `COMn`.
    pub serials: Vec<LegacySerial>,
    /// The FADT's hardware-reduced sleep and reset registers (I/O ports, one byte each).
    pub power: PowerRegisters,
    /// The single I/O APIC.
    pub ioapic: IoApic,
    /// Physical address of the local APICs (normally 0xFEE0_0000).
    pub lapic_address: u32,
    /// The Generic Event Device that signals memory hotplug and the power button.
    pub ged: Option<Ged>,
    /// The memory-hotplug controller and its DIMM slots.
    pub memory_hotplug: Option<MemoryHotplug>,
    /// NUMA topology: emits an SRAT (and a SLIT when distances are given).
    pub numa: Option<NumaConfig>,
    /// The pvpanic device the guest kernel reports a panic to.
    pub pvpanic: Option<PvPanic>,
}

/// A 16550 UART on the legacy I/O bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegacySerial {
    /// First of its 8 I/O ports (0x3F8 for COM1).
    pub io_port: u16,
    /// Its interrupt as a GSI (ISA IRQ 4 for COM1; ISA IRQs map 1:1 to GSIs).
    pub irq: u32,
}

/// I/O ports of the hardware-reduced ACPI power registers, each 8 bits wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PowerRegisters {
    /// Sleep control register: the guest writes `(SLP_TYP << 2) | 0x20` to enter a sleep state;
    /// for power-off SLP_TYP is [`S5_SLEEP_TYPE`](crate::S5_SLEEP_TYPE).
    pub sleep_control_port: u16,
    /// Sleep status register: the guest writes 0x80 (WAK_STS) to clear it before sleeping, then
    /// polls it for WAK_STS.
    pub sleep_status_port: u16,
    /// Reset register: the guest writes `reset_value` here to reboot.
    pub reset_port: u16,
    /// The value that requests a reset.
    pub reset_value: u8,
}

/// The I/O APIC as the MADT describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoApic {
    /// Its I/O APIC id.
    pub id: u8,
    /// Physical address of its register window (normally 0xFEC0_0000).
    pub address: u32,
    /// The first GSI it serves (0 for the only I/O APIC).
    pub gsi_base: u32,
}

/// An ACPI Generic Event Device (`ACPI0013`) with one edge-triggered interrupt and a 32-bit
/// read-to-clear event register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ged {
    /// Guest physical address of the 4-byte event register. Bits: [`GED_MEMORY_HOTPLUG`],
    /// [`GED_POWER_BUTTON`]. Read with one 4-byte access.
    ///
    /// [`GED_MEMORY_HOTPLUG`]: crate::GED_MEMORY_HOTPLUG
    /// [`GED_POWER_BUTTON`]: crate::GED_POWER_BUTTON
    pub mmio_base: u64,
    /// The GSI it raises (edge, active high).
    pub irq: u32,
}

/// The memory-hotplug controller: one register block (docs/design.md, "Memory-hotplug
/// registers") and `slots` DIMM slot devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryHotplug {
    /// Guest physical address of the [`REGISTERS_LEN`]-byte register block, accessed only with
    /// 4-byte reads and writes.
    ///
    /// [`REGISTERS_LEN`]: crate::memory_hotplug_layout::REGISTERS_LEN
    pub mmio_base: u64,
    /// Number of DIMM slots, 1 to [`MAX_MEMORY_SLOTS`](crate::MAX_MEMORY_SLOTS).
    pub slots: u32,
}

/// QEMU's pvpanic device (`QEMU0001`): a one-byte event register in the 32-bit address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PvPanic {
    /// Guest physical address of the [`PVPANIC_REGISTER_LEN`]-byte register.
    ///
    /// [`PVPANIC_REGISTER_LEN`]: crate::PVPANIC_REGISTER_LEN
    pub mmio_base: u32,
}

/// The guest's NUMA nodes, for the SRAT and SLIT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumaConfig {
    /// The nodes. Every vCPU should be in one, and together their memory ranges should cover
    /// all RAM in the e820 map, or Linux ignores the SRAT.
    pub nodes: Vec<NumaNode>,
    /// Optional SLIT: `distances[i][j]` is the relative distance from proximity domain `i` to
    /// `j` (10 to itself, 11..=254 to others). When given, the nodes' proximity domains must be
    /// exactly `0..nodes.len()`, since the SLIT is indexed by proximity domain.
    pub distances: Option<Vec<Vec<u8>>>,
}

impl NumaConfig {
    /// One node, proximity domain 0, holding every vCPU and all of `memory`: what a VM with
    /// hotpluggable memory but no NUMA topology describes.
    pub fn single_node(cpus: u32, memory: Vec<MemoryRange>) -> Self {
        NumaConfig {
            nodes: vec![NumaNode {
                proximity_domain: 0,
                apic_ids: (0..cpus).collect(),
                memory,
            }],
            distances: None,
        }
    }
}

/// One NUMA node (proximity domain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NumaNode {
    /// Its proximity domain, as `_PXM` and the memory-hotplug controller report it.
    pub proximity_domain: u32,
    /// Local APIC ids of the vCPUs in this node.
    pub apic_ids: Vec<u32>,
    /// Its memory: boot RAM ranges and its share of the hotplug region.
    pub memory: Vec<MemoryRange>,
}

/// A guest physical memory range in a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRange {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
    /// Marks the range hot-pluggable in the SRAT: set it for the hotplug region, and for boot
    /// RAM that `movable_node` should place in ZONE_MOVABLE.
    pub hotpluggable: bool,
}
