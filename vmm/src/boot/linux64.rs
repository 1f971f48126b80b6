//! A bzImage through the 64-bit boot protocol: linux-loader places the protected-mode kernel at
//! 1 MiB, and the zero page (boot_params) carries the command line, the initramfs, the e820 map
//! and the RSDP address.

use std::fs::File;

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bzimage::BzImage;
use vm_memory::{Address, GuestAddress, GuestMemoryBackend};

use super::{load_initramfs, load_kernel, low32, write_cmdline, BootEntry, BootError, BootSpec};
use crate::layout::{CMDLINE_START, ZERO_PAGE_START};
use crate::memory::guest::GuestMemoryLayout;

/// The 64-bit entry point is 0x200 past the protected-mode code (boot protocol 2.12+).
const ENTRY_64_OFFSET: u64 = 0x200;
const MIN_BOOT_PROTOCOL: u16 = 0x020c;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// loadflags bit: the kernel was loaded high (at 1 MiB).
const LOADED_HIGH: u8 = 0x01;

pub(super) fn load<M: GuestMemoryBackend>(
    mem: &M,
    spec: &BootSpec,
    kernel: &mut File,
) -> Result<BootEntry, BootError> {
    let loaded = load_kernel::<BzImage, _>(mem, spec, kernel)?;
    let Some(mut header) = loaded.setup_header else {
        return Err(BootError::OldBootProtocol(spec.kernel.to_path_buf()));
    };
    if header.version < MIN_BOOT_PROTOCOL {
        return Err(BootError::OldBootProtocol(spec.kernel.to_path_buf()));
    }

    let max_cmdline = usize::try_from(header.cmdline_size).unwrap_or(usize::MAX);
    header.cmdline_size = write_cmdline(mem, spec.cmdline, max_cmdline)?;
    header.type_of_loader = KERNEL_LOADER_OTHER;
    header.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    header.loadflags |= LOADED_HIGH;
    header.cmd_line_ptr = low32(CMDLINE_START);
    if let Some(path) = spec.initramfs {
        let limit = spec
            .initramfs_ceiling
            .min(u64::from(header.initrd_addr_max) + 1);
        let (addr, size) = load_initramfs(mem, path, limit, loaded.kernel_end)?;
        header.ramdisk_image = low32(addr);
        header.ramdisk_size = u32::try_from(size).unwrap_or(u32::MAX);
    }

    let mut params = boot_params {
        hdr: header,
        acpi_rsdp_addr: spec.rsdp.raw_value(),
        ..Default::default()
    };
    set_e820(&mut params, spec.layout)?;
    LinuxBootConfigurator::write_bootparams::<M>(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|e| BootError::Write(e.to_string()))?;

    let entry = loaded
        .kernel_load
        .checked_add(ENTRY_64_OFFSET)
        .ok_or(BootError::Write("kernel entry overflows".into()))?;
    Ok(BootEntry::Linux64 { entry })
}

fn set_e820(params: &mut boot_params, layout: &GuestMemoryLayout) -> Result<(), BootError> {
    let too_many = || BootError::TooManyE820Entries("zero page");
    let map = layout.e820();
    if map.len() > params.e820_table.len() {
        return Err(too_many());
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind as u32,
        };
    }
    params.e820_entries = u8::try_from(map.len()).map_err(|_| too_many())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_goes_into_the_zero_page() {
        let mut params = boot_params::default();
        set_e820(&mut params, &GuestMemoryLayout::new(5 << 30)).unwrap();
        assert_eq!(params.e820_entries, 4);
        let entry = params.e820_table[3];
        let (addr, size) = (entry.addr, entry.size);
        assert_eq!((addr, size), (1 << 32, 2 << 30));
    }
}
