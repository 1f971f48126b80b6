//! x86_64 vCPU state for a Linux boot: CPUID with our topology, and the registers, MSRs, page
//! tables and LAPIC wiring the 64-bit boot protocol expects.

pub mod cpuid;
pub mod regs;

pub use cpuid::{build_cpuid, Topology};
pub use regs::{
    setup_boot_registers, setup_fpu, setup_lapic, setup_msrs, write_boot_page_tables_and_gdt,
};
