//! An uncompressed ELF `vmlinux` through PVH (the x86 boot protocol of Xen's PVH guests, which
//! Linux also follows on KVM): linux-loader places the kernel's segments at their physical
//! addresses and finds the 32-bit entry point in its XEN_ELFNOTE_PHYS32_ENTRY note; the
//! `hvm_start_info` carries the command line, the initramfs as the first module, the memory map
//! (the same e820 entries a bzImage gets) and the RSDP address.

use std::fs::File;

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend};

use super::{load_initramfs, load_kernel, write_cmdline, BootEntry, BootError, BootSpec};
use crate::layout::{CMDLINE_START, PVH_INFO_END, PVH_INFO_START};

/// `hvm_start_info.magic` (Xen's XEN_HVM_START_MAGIC_VALUE).
const START_INFO_MAGIC: u32 = 0x336e_c578;
/// Version 1 has the RSDP and memory map fields.
const START_INFO_VERSION: u32 = 1;
/// Linux's COMMAND_LINE_SIZE on x86, with the NUL; PVH has no header that says otherwise.
const CMDLINE_MAX: usize = 2048;
/// Where the module list and the memory map go, after the start info in the PVH area.
const MODLIST_START: u64 = PVH_INFO_START + 0x40;
const MEMMAP_START: u64 = PVH_INFO_START + 0x80;

pub(super) fn load<M: GuestMemoryBackend>(
    mem: &M,
    spec: &BootSpec,
    kernel: &mut File,
) -> Result<BootEntry, BootError> {
    let loaded = load_kernel::<Elf, _>(mem, spec, kernel)?;
    let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
        return Err(BootError::NoPvhEntry(spec.kernel.to_path_buf()));
    };
    write_cmdline(mem, spec.cmdline, CMDLINE_MAX)?;

    let memmap: Vec<hvm_memmap_table_entry> = spec
        .layout
        .e820()
        .iter()
        .map(|entry| hvm_memmap_table_entry {
            addr: entry.addr,
            size: entry.size,
            type_: entry.kind as u32,
            reserved: 0,
        })
        .collect();
    let room = (PVH_INFO_END - MEMMAP_START) / size_of::<hvm_memmap_table_entry>() as u64;
    if memmap.len() as u64 > room {
        return Err(BootError::TooManyE820Entries("PVH memory map"));
    }
    let mut start_info = hvm_start_info {
        magic: START_INFO_MAGIC,
        version: START_INFO_VERSION,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: spec.rsdp.raw_value(),
        memmap_paddr: MEMMAP_START,
        memmap_entries: u32::try_from(memmap.len())
            .map_err(|_| BootError::TooManyE820Entries("PVH memory map"))?,
        ..Default::default()
    };
    let module = match spec.initramfs {
        Some(path) => {
            let (paddr, size) =
                load_initramfs(mem, path, spec.initramfs_ceiling, loaded.kernel_end)?;
            start_info.nr_modules = 1;
            start_info.modlist_paddr = MODLIST_START;
            Some(hvm_modlist_entry {
                paddr,
                size,
                ..Default::default()
            })
        }
        None => None,
    };

    let start = GuestAddress(PVH_INFO_START);
    let mut params = BootParams::new(&start_info, start);
    params.set_sections(&memmap, GuestAddress(MEMMAP_START));
    if let Some(module) = module {
        params.set_modules(&[module], GuestAddress(MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<M>(&params, mem)
        .map_err(|e| BootError::Write(e.to_string()))?;
    Ok(BootEntry::Pvh {
        entry,
        start_info: start,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::Path;

    use vm_memory::{Bytes, GuestMemoryMmap};

    use super::*;
    use crate::boot::{self, BootInfo};
    use crate::memory::guest::GuestMemoryLayout;

    const LOAD_ADDR: u64 = 0x100_0000;
    const PVH_ENTRY: u32 = 0x100_0040;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

    /// A minimal ELF64 executable: one loadable segment of `code` at 16 MiB and, with `pvh`,
    /// a note naming [`PVH_ENTRY`] as the PVH entry point.
    fn elf(code: &[u8], pvh: bool) -> Vec<u8> {
        const EHDR: u16 = 64;
        const PHDR: u16 = 56;
        let phnum: u16 = if pvh { 2 } else { 1 };
        let notes_at = usize::from(EHDR + PHDR * phnum);
        let mut note = Vec::new();
        note.extend(4u32.to_le_bytes()); // name size: "Xen\0"
        note.extend(4u32.to_le_bytes()); // descriptor size
        note.extend(XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
        note.extend(b"Xen\0");
        note.extend(PVH_ENTRY.to_le_bytes());
        let code_at = notes_at + if pvh { note.len() } else { 0 };

        let mut out = Vec::new();
        out.extend(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0"); // 64-bit, little endian
        out.extend(2u16.to_le_bytes()); // ET_EXEC
        out.extend(62u16.to_le_bytes()); // EM_X86_64
        out.extend(1u32.to_le_bytes());
        out.extend(LOAD_ADDR.to_le_bytes()); // e_entry
        out.extend(u64::from(EHDR).to_le_bytes()); // e_phoff
        out.extend(0u64.to_le_bytes()); // e_shoff
        out.extend(0u32.to_le_bytes()); // e_flags
        out.extend(EHDR.to_le_bytes());
        out.extend(PHDR.to_le_bytes());
        out.extend(phnum.to_le_bytes());
        out.extend([0u8; 6]); // no section headers
        let phdr = |out: &mut Vec<u8>, kind: u32, offset: usize, addr: u64, size: usize| {
            out.extend(kind.to_le_bytes());
            out.extend(5u32.to_le_bytes()); // read + execute
            out.extend((offset as u64).to_le_bytes());
            out.extend(addr.to_le_bytes()); // p_vaddr
            out.extend(addr.to_le_bytes()); // p_paddr
            out.extend((size as u64).to_le_bytes()); // p_filesz
            out.extend((size as u64 + 0x1000).to_le_bytes()); // p_memsz: a page of bss
            out.extend(8u64.to_le_bytes());
        };
        phdr(&mut out, 1, code_at, LOAD_ADDR, code.len()); // PT_LOAD
        if pvh {
            phdr(&mut out, 4, notes_at, 0, note.len()); // PT_NOTE
            out.extend(&note);
        }
        out.extend(code);
        out
    }

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        file
    }

    fn load_kernel(
        mem: &GuestMemoryMmap,
        layout: &GuestMemoryLayout,
        kernel: &Path,
        initramfs: Option<&Path>,
    ) -> Result<BootInfo, BootError> {
        boot::load(
            mem,
            &BootSpec {
                kernel,
                initramfs,
                cmdline: "console=ttyS0 quiet",
                layout,
                initramfs_ceiling: layout.low_ram_end(),
                rsdp: GuestAddress(0xe_0000),
            },
        )
    }

    #[test]
    fn a_pvh_kernel_gets_its_start_info() {
        let size = 256 << 20;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).unwrap();
        let layout = GuestMemoryLayout::new(size as u64);
        let kernel = file_with(&elf(b"\xf4kernel", true));
        let initramfs = file_with(&[0x5a; 5000]);
        let booted = load_kernel(&mem, &layout, kernel.path(), Some(initramfs.path())).unwrap();
        assert_eq!(
            booted.entry,
            BootEntry::Pvh {
                entry: GuestAddress(u64::from(PVH_ENTRY)),
                start_info: GuestAddress(PVH_INFO_START)
            }
        );
        let code: [u8; 7] = mem.read_obj(GuestAddress(LOAD_ADDR)).unwrap();
        assert_eq!(&code, b"\xf4kernel");

        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!((info.magic, info.version), (START_INFO_MAGIC, 1));
        assert_eq!(info.rsdp_paddr, 0xe_0000);
        let mut cmdline = [0u8; 20];
        mem.read_slice(&mut cmdline, GuestAddress(info.cmdline_paddr))
            .unwrap();
        assert_eq!(&cmdline, b"console=ttyS0 quiet\0");

        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!(module.size, 5000);
        assert_eq!(module.paddr % 4096, 0);
        assert!(module.paddr + module.size <= layout.low_ram_end());
        assert!(module.paddr >= LOAD_ADDR + 0x1000, "above the kernel's bss");
        let byte: u8 = mem.read_obj(GuestAddress(module.paddr + 4999)).unwrap();
        assert_eq!(byte, 0x5a);

        let e820 = layout.e820();
        assert_eq!(info.memmap_entries as usize, e820.len());
        for (i, want) in e820.iter().enumerate() {
            let at = info.memmap_paddr + (i * size_of::<hvm_memmap_table_entry>()) as u64;
            let got: hvm_memmap_table_entry = mem.read_obj(GuestAddress(at)).unwrap();
            assert_eq!(
                (got.addr, got.size, got.type_),
                (want.addr, want.size, want.kind as u32)
            );
        }
        assert!(info.memmap_paddr + e820.len() as u64 * 24 <= PVH_INFO_END);
    }

    #[test]
    fn an_elf_kernel_without_a_pvh_note_is_refused() {
        let size = 64 << 20;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).unwrap();
        let layout = GuestMemoryLayout::new(size as u64);
        let kernel = file_with(&elf(b"\xf4", false));
        let error = load_kernel(&mem, &layout, kernel.path(), None)
            .err()
            .expect("no PVH note");
        assert!(matches!(error, BootError::NoPvhEntry(_)), "{error}");
        assert!(error.to_string().contains("PVH"), "{error}");
    }
}
