//! The boot state: flat segments in a GDT and, for the 64-bit boot protocol, an identity-mapped
//! first GiB, long mode on, `rsi` pointing at the zero page, or for PVH, 32-bit protected mode
//! and `ebx` pointing at the start info; the MSRs, FPU and LAPIC a freshly reset CPU would have.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::boot::BootEntry;
use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    ZERO_PAGE_START,
};

#[derive(Debug, Error)]
pub enum RegsError {
    #[error("cannot write boot page tables or GDT into guest memory: {0}")]
    GuestMemory(vm_memory::GuestMemoryError),
    #[error("KVM rejected vCPU {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM accepted only {set} of {wanted} boot MSRs")]
    PartialMsrs { set: usize, wanted: usize },
    #[error("cannot build the MSR list: {0}")]
    MsrList(String),
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// GDT entries: null, 64-bit code, data, TSS (flags in the kernel's GDT_ENTRY format).
const GDT: [(u16, u32, u32); 4] = [
    (0, 0, 0),
    (0xa09b, 0, 0xfffff),
    (0xc093, 0, 0xfffff),
    (0x808b, 0, 0xfffff),
];
const CODE_SELECTOR: usize = 1;
const DATA_SELECTOR: usize = 2;
const TSS_SELECTOR: usize = 3;

fn gdt_entry((flags, base, limit): (u16, u32, u32)) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    ((base & 0xff00_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
        | ((limit & 0x000f_0000) << 32)
        | ((flags & 0xf0ff) << 40)
}

/// The KVM segment a GDT entry describes, for loading it directly into the segment registers.
fn segment(index: usize) -> kvm_segment {
    let (flags, base, limit) = GDT[index];
    let flag = |shift: u16, bits: u16| u8::try_from((flags >> shift) & bits).unwrap_or(0);
    kvm_segment {
        base: u64::from(base),
        limit: if flag(15, 1) == 1 {
            (limit << 12) | 0xfff
        } else {
            limit
        },
        selector: u16::try_from(index * 8).unwrap_or(0),
        type_: flag(0, 0xf),
        present: flag(7, 1),
        dpl: flag(5, 0x3),
        db: flag(14, 1),
        s: flag(4, 1),
        l: flag(13, 1),
        g: flag(15, 1),
        avl: flag(12, 1),
        unusable: if flag(7, 1) == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// Writes the GDT, an empty IDT and identity page tables for the first GiB (2 MiB pages).
pub fn write_boot_page_tables_and_gdt<M: GuestMemoryBackend>(mem: &M) -> Result<(), RegsError> {
    for (i, entry) in GDT.iter().enumerate() {
        mem.write_obj(
            gdt_entry(*entry),
            GuestAddress(BOOT_GDT_START + 8 * i as u64),
        )
        .map_err(RegsError::GuestMemory)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(RegsError::GuestMemory)?;

    const PRESENT_WRITABLE: u64 = 0x3;
    const HUGE_PAGE: u64 = 0x80;
    mem.write_obj(PDPTE_START | PRESENT_WRITABLE, GuestAddress(PML4_START))
        .map_err(RegsError::GuestMemory)?;
    mem.write_obj(PDE_START | PRESENT_WRITABLE, GuestAddress(PDPTE_START))
        .map_err(RegsError::GuestMemory)?;
    for i in 0..512u64 {
        mem.write_obj(
            (i << 21) | PRESENT_WRITABLE | HUGE_PAGE,
            GuestAddress(PDE_START + i * 8),
        )
        .map_err(RegsError::GuestMemory)?;
    }
    Ok(())
}

/// The boot processor's state for `entry`: flat segments from our GDT; for the 64-bit boot
/// protocol long mode with paging and `rsi` at the zero page, for PVH 32-bit protected mode
/// without paging and `ebx` at the start info.
pub fn setup_boot_registers(vcpu: &VcpuFd, entry: BootEntry) -> Result<(), RegsError> {
    let reset = vcpu.get_sregs().map_err(kvm("special registers"))?;
    let (sregs, regs) = boot_registers(reset, entry);
    vcpu.set_sregs(&sregs).map_err(kvm("special registers"))?;
    vcpu.set_regs(&regs).map_err(kvm("registers"))
}

/// [`setup_boot_registers`]'s registers, from the reset state in `sregs`.
fn boot_registers(mut sregs: kvm_sregs, entry: BootEntry) -> (kvm_sregs, kvm_regs) {
    let data = segment(DATA_SELECTOR);
    let mut code = segment(CODE_SELECTOR);
    let regs = match entry {
        BootEntry::Linux64 { entry } => {
            sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
            kvm_regs {
                rflags: 0x2,
                rip: entry.0,
                rsp: BOOT_STACK_POINTER,
                rbp: BOOT_STACK_POINTER,
                rsi: ZERO_PAGE_START,
                ..Default::default()
            }
        }
        BootEntry::Pvh { entry, start_info } => {
            // The same flat code segment, as 32-bit code; the kernel loads its own GDT first.
            code.l = 0;
            code.db = 1;
            sregs.cr0 = (sregs.cr0 & !X86_CR0_PG) | X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 &= !X86_CR4_PAE;
            sregs.efer &= !(EFER_LME | EFER_LMA);
            kvm_regs {
                rflags: 0x2,
                rip: entry.0,
                rbx: start_info.0,
                ..Default::default()
            }
        }
    };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(TSS_SELECTOR);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = u16::try_from(GDT.len() * 8 - 1).unwrap_or(u16::MAX);
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    (sregs, regs)
}

/// x87 and SSE control words as after FNINIT / reset.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("FPU state"))
}

mod msr {
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    /// MISC_ENABLE: fast string operations.
    pub const MISC_ENABLE_FAST_STRING: u64 = 1;
    /// MTRRdefType: MTRRs enabled, default type write-back.
    pub const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;
}

/// The MSRs Linux expects a BIOS to have left in a known state.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries: Vec<kvm_msr_entry> = [
        (msr::IA32_SYSENTER_CS, 0),
        (msr::IA32_SYSENTER_ESP, 0),
        (msr::IA32_SYSENTER_EIP, 0),
        (msr::STAR, 0),
        (msr::CSTAR, 0),
        (msr::KERNEL_GS_BASE, 0),
        (msr::SYSCALL_MASK, 0),
        (msr::LSTAR, 0),
        (msr::IA32_TSC, 0),
        (msr::IA32_MISC_ENABLE, msr::MISC_ENABLE_FAST_STRING),
        (msr::MTRR_DEF_TYPE, msr::MTRR_ENABLE_WRITEBACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|e| RegsError::MsrList(format!("{e:?}")))?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("MSRs"))?;
    if set != entries.len() {
        return Err(RegsError::PartialMsrs {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

/// LINT0 as ExtINT and LINT1 as NMI, as the MADT's LAPIC NMI entry says.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), RegsError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const DELIVERY_MODE_EXTINT: u32 = 0x7;
    const DELIVERY_MODE_NMI: u32 = 0x4;
    let mut lapic = vcpu.get_lapic().map_err(kvm("LAPIC state"))?;
    for (offset, mode) in [
        (APIC_LVT0, DELIVERY_MODE_EXTINT),
        (APIC_LVT1, DELIVERY_MODE_NMI),
    ] {
        let reg = &mut lapic.regs[offset..offset + 4];
        let mut bytes = [0u8; 4];
        for (b, r) in bytes.iter_mut().zip(reg.iter()) {
            *b = r.to_ne_bytes()[0];
        }
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (r, b) in reg.iter_mut().zip(value.to_le_bytes()) {
            *r = i8::from_ne_bytes([b]);
        }
    }
    vcpu.set_lapic(&lapic).map_err(kvm("LAPIC state"))
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestMemoryMmap;

    use super::*;

    #[test]
    fn gdt_entries_match_the_kernel_encoding() {
        assert_eq!(gdt_entry(GDT[0]), 0);
        assert_eq!(gdt_entry(GDT[1]), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(GDT[2]), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(GDT[3]), 0x008f_8b00_0000_ffff);
    }

    #[test]
    fn code_segment_is_long_mode() {
        let cs = segment(CODE_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.present, cs.selector), (1, 0, 1, 8));
        assert_eq!(cs.limit, 0xffff_ffff);
        let tss = segment(TSS_SELECTOR);
        assert_eq!((tss.type_, tss.s), (0xb, 0));
    }

    #[test]
    fn a_pvh_entry_starts_in_32_bit_protected_mode_without_paging() {
        let reset = kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        };
        let entry = BootEntry::Pvh {
            entry: GuestAddress(0x100_0040),
            start_info: GuestAddress(0x6000),
        };
        let (sregs, regs) = boot_registers(reset, entry);
        assert_eq!((regs.rip, regs.rbx, regs.rflags), (0x100_0040, 0x6000, 2));
        assert_eq!(sregs.cr0 & (X86_CR0_PE | X86_CR0_PG), X86_CR0_PE);
        assert_eq!((sregs.cr4 & X86_CR4_PAE, sregs.efer), (0, 0));
        assert_eq!((sregs.cs.l, sregs.cs.db, sregs.cs.g), (0, 1, 1));
        assert_eq!((sregs.cs.base, sregs.cs.limit), (0, 0xffff_ffff));
        assert_eq!((sregs.ds.db, sregs.ss.limit), (1, 0xffff_ffff));

        let (sregs, regs) = boot_registers(
            reset,
            BootEntry::Linux64 {
                entry: GuestAddress(0x100_0200),
            },
        );
        assert_eq!((regs.rip, regs.rsi), (0x100_0200, ZERO_PAGE_START));
        assert_eq!(sregs.cr0 & X86_CR0_PG, X86_CR0_PG);
        assert_eq!(sregs.efer & EFER_LMA, EFER_LMA);
        assert_eq!((sregs.cs.l, sregs.cr3), (1, PML4_START));
    }

    #[test]
    fn page_tables_map_the_first_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_boot_page_tables_and_gdt(&mem).unwrap();
        let pde: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(pde, (511 << 21) | 0x83);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
    }
}
