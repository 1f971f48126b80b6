//! Loading Linux: the bzImage (linux-loader), the initramfs, the command line and the zero page
//! (boot_params with the e820 map and the RSDP address) for the 64-bit boot protocol.

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::KernelLoader;
use thiserror::Error;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile};

use crate::layout::{CMDLINE_START, HIMEM_START, PAGE_SIZE, ZERO_PAGE_START};
use crate::memory::guest::GuestMemoryLayout;

#[derive(Debug, Error)]
pub enum BootError {
    #[error("cannot open {what} {path}: {source}")]
    Open {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot load kernel {path}: {source}")]
    Kernel {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("kernel {0} uses a boot protocol older than 2.12, which Tidal does not support")]
    OldBootProtocol(PathBuf),
    #[error("initramfs {path} ({size} bytes) does not fit below {limit:#x}")]
    InitramfsTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("cannot load initramfs {path}: {reason}")]
    Initramfs { path: PathBuf, reason: String },
    #[error("kernel command line rejected: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("kernel command line is {len} bytes; this kernel takes at most {max}")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("cannot write boot data into guest memory: {0}")]
    Write(String),
    #[error("more e820 entries than the zero page holds")]
    TooManyE820Entries,
}

/// What the vCPU setup needs from the loaded kernel.
pub struct BootInfo {
    /// The 64-bit entry point.
    pub entry: GuestAddress,
}

/// Where the loaded kernel came from and what goes into the zero page.
pub struct BootSpec<'a> {
    pub kernel: &'a Path,
    pub initramfs: Option<&'a Path>,
    pub cmdline: &'a str,
    pub layout: &'a GuestMemoryLayout,
    /// The initramfs goes below this: the end of the boot RAM below 4 GiB that stays (boot
    /// memory that can be removed, that of hotpluggable NUMA nodes, must not hold it).
    pub initramfs_ceiling: u64,
    pub rsdp: GuestAddress,
}

/// The 64-bit entry point is 0x200 past the protected-mode code (boot protocol 2.12+).
const ENTRY_64_OFFSET: u64 = 0x200;
const MIN_BOOT_PROTOCOL: u16 = 0x020c;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// loadflags bit: the kernel was loaded high (at 1 MiB).
const LOADED_HIGH: u8 = 0x01;

pub fn load<M: GuestMemoryBackend>(mem: &M, spec: &BootSpec) -> Result<BootInfo, BootError> {
    let mut kernel = open(spec.kernel, "kernel")?;
    let loaded = BzImage::load(mem, None, &mut kernel, Some(GuestAddress(HIMEM_START))).map_err(
        |source| BootError::Kernel {
            path: spec.kernel.to_path_buf(),
            source,
        },
    )?;
    let Some(mut header) = loaded.setup_header else {
        return Err(BootError::OldBootProtocol(spec.kernel.to_path_buf()));
    };
    if header.version < MIN_BOOT_PROTOCOL {
        return Err(BootError::OldBootProtocol(spec.kernel.to_path_buf()));
    }

    let max_cmdline = usize::try_from(header.cmdline_size).unwrap_or(usize::MAX);
    let cmdline = build_cmdline(spec.cmdline, max_cmdline)?;
    let cmdline_bytes = cmdline.as_cstring().map_err(BootError::Cmdline)?;
    mem.write_slice(
        cmdline_bytes.as_bytes_with_nul(),
        GuestAddress(CMDLINE_START),
    )
    .map_err(|e| BootError::Write(e.to_string()))?;

    header.type_of_loader = KERNEL_LOADER_OTHER;
    header.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    header.loadflags |= LOADED_HIGH;
    header.cmd_line_ptr = low32(CMDLINE_START);
    header.cmdline_size = u32::try_from(cmdline_bytes.as_bytes().len()).unwrap_or(u32::MAX);
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

    Ok(BootInfo {
        entry: loaded
            .kernel_load
            .checked_add(ENTRY_64_OFFSET)
            .ok_or(BootError::Write("kernel entry overflows".into()))?,
    })
}

fn open(path: &Path, what: &'static str) -> Result<File, BootError> {
    File::open(path).map_err(|source| BootError::Open {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Boot structures all live in the first MiB, so their addresses fit the 32-bit fields.
fn low32(addr: u64) -> u32 {
    u32::try_from(addr).unwrap_or(u32::MAX)
}

fn build_cmdline(line: &str, max: usize) -> Result<Cmdline, BootError> {
    // The kernel's limit counts the terminating NUL.
    if line.len() >= max {
        return Err(BootError::CmdlineTooLong {
            len: line.len(),
            max: max.saturating_sub(1),
        });
    }
    let mut cmdline = Cmdline::new(max).map_err(BootError::Cmdline)?;
    if !line.is_empty() {
        cmdline.insert_str(line).map_err(BootError::Cmdline)?;
    }
    Ok(cmdline)
}

/// Puts the initramfs as high as the kernel allows in low RAM, page aligned, above the kernel.
fn load_initramfs<M: GuestMemoryBackend>(
    mem: &M,
    path: &Path,
    limit: u64,
    kernel_end: u64,
) -> Result<(u64, u64), BootError> {
    let mut file = open(path, "initramfs")?;
    let size = file
        .metadata()
        .map_err(|source| BootError::Open {
            what: "initramfs",
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let addr = limit
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|&a| a >= kernel_end)
        .ok_or_else(|| BootError::InitramfsTooLarge {
            path: path.to_path_buf(),
            size,
            limit,
        })?;
    let len = usize::try_from(size).map_err(|e| BootError::Initramfs {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut slice = mem
        .get_slice(GuestAddress(addr), len)
        .map_err(|e| BootError::Initramfs {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    file.read_exact_volatile(&mut slice)
        .map_err(|e| BootError::Initramfs {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok((addr, size))
}

fn set_e820(params: &mut boot_params, layout: &GuestMemoryLayout) -> Result<(), BootError> {
    let map = layout.e820();
    if map.len() > params.e820_table.len() {
        return Err(BootError::TooManyE820Entries);
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind as u32,
        };
    }
    params.e820_entries = u8::try_from(map.len()).map_err(|_| BootError::TooManyE820Entries)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestMemoryMmap;

    use super::*;

    #[test]
    fn cmdline_limits() {
        assert!(build_cmdline("console=ttyS0", 2048).is_ok());
        assert!(matches!(
            build_cmdline(&"x".repeat(2048), 2048),
            Err(BootError::CmdlineTooLong {
                len: 2048,
                max: 2047
            })
        ));
    }

    #[test]
    fn e820_goes_into_the_zero_page() {
        let mut params = boot_params::default();
        set_e820(&mut params, &GuestMemoryLayout::new(5 << 30)).unwrap();
        assert_eq!(params.e820_entries, 4);
        let entry = params.e820_table[3];
        let (addr, size) = (entry.addr, entry.size);
        assert_eq!((addr, size), (1 << 32, 2 << 30));
    }

    #[test]
    fn rejects_non_kernel() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let layout = GuestMemoryLayout::new(64 << 20);
        let spec = BootSpec {
            kernel: Path::new("/proc/self/exe"),
            initramfs: None,
            cmdline: "",
            layout: &layout,
            initramfs_ceiling: layout.low_ram_end(),
            rsdp: GuestAddress(0xe0000),
        };
        assert!(matches!(load(&mem, &spec), Err(BootError::Kernel { .. })));
    }
}
