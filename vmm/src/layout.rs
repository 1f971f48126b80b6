//! The guest physical address map (see docs/design.md): where boot structures, ACPI tables,
//! RAM and the device hole live. One place, so the loader, the e820 map and the ACPI tables agree.

/// GDT and IDT used for the 64-bit boot state.
pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH boot: the hvm_start_info, its module list and memory map (vmm/src/boot/pvh.rs).
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_INFO_END: u64 = 0x7000;
/// The Linux zero page (struct boot_params).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Top of the stack the kernel starts on; it switches to its own almost at once.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables covering the first GiB: PML4, PDPT, PD.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Start of the EBDA: RAM below it is usable, up to the ACPI area it is reserved.
pub const EBDA_START: u64 = 0x9_fc00;
/// ACPI tables; the RSDP at the start is also where legacy scanning looks.
pub const ACPI_START: u64 = 0xe_0000;
/// The last 64 KiB below 1 MiB are the "BIOS" area, which holds the reset-vector stub.
pub const ACPI_END: u64 = 0xf_0000;
/// Where the protected-mode kernel is loaded.
pub const HIMEM_START: u64 = 0x10_0000;

/// The 32-bit device hole: RAM stops here and resumes at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;
pub const IOAPIC_START: u32 = 0xfec0_0000;
pub const APIC_START: u32 = 0xfee0_0000;

/// x86 page size; guest RAM sizes are whole pages.
pub const PAGE_SIZE: u64 = 0x1000;

/// Devices in the hole: the Generic Event Device's register, the memory-hotplug block and the
/// pvpanic register (32 bits: the DSDT describes it with a 32-bit memory descriptor).
pub const GED_MMIO_START: u64 = 0xfeb0_0000;
pub const MEMORY_HOTPLUG_MMIO_START: u64 = 0xfeb0_1000;
pub const PVPANIC_MMIO_START: u32 = 0xfeb0_2000;
/// The GED's interrupt: a free ISA line, so GSI == IRQ.
pub const GED_IRQ: u32 = 5;

/// Linux's memory block size on x86_64 while boot memory ends below 64 GiB: every DIMM's base
/// and size are multiples of it, or the guest ignores part of the DIMM.
pub const MEMORY_BLOCK_SIZE: u64 = 128 << 20;
/// The hotplug region starts on a GiB boundary above boot RAM and never below 4 GiB.
pub const HOTPLUG_ALIGNMENT: u64 = 1 << 30;
/// Guest physical addresses stay below 1 TiB + 4 GiB: within every x86_64 CPU's physical
/// address width that KVM guests get, and what Tidal is tested with.
pub const MAX_GUEST_PHYSICAL: u64 = (1 << 40) + MMIO_HOLE_END;
