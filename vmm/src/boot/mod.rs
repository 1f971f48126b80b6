//! Loading Linux: the kernel, the initramfs and the command line, and what tells the kernel
//! where they are and what memory it has (the e820 map) and where the ACPI tables start. Two
//! formats, told apart by their first bytes: a bzImage, started through the 64-bit boot protocol
//! with a zero page ([`linux64`]), and an uncompressed ELF `vmlinux` with a PVH entry point,
//! started in 32-bit protected mode with an `hvm_start_info` ([`pvh`]), which spares the guest
//! decompressing itself.

mod linux64;
mod pvh;

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::{KernelLoader, KernelLoaderResult};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, ReadVolatile};

use crate::layout::{CMDLINE_START, HIMEM_START, PAGE_SIZE};
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
    #[error(
        "kernel {0} is an ELF file without a PVH entry point (a XEN_ELFNOTE_PHYS32_ENTRY note): \
         Tidal boots an ELF vmlinux only through PVH (CONFIG_PVH=y), or a bzImage"
    )]
    NoPvhEntry(PathBuf),
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
    #[error("more e820 entries than the {0} holds")]
    TooManyE820Entries(&'static str),
}

/// How the boot processor starts the loaded kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// The 64-bit Linux boot protocol: long mode with the first GiB identity mapped, `rsi`
    /// pointing at the zero page.
    Linux64 { entry: GuestAddress },
    /// PVH: 32-bit protected mode without paging, `ebx` pointing at the `hvm_start_info`.
    Pvh {
        entry: GuestAddress,
        start_info: GuestAddress,
    },
}

impl fmt::Display for BootEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Linux64 { .. } => f.write_str("bzImage, 64-bit boot protocol"),
            Self::Pvh { .. } => f.write_str("ELF vmlinux, PVH"),
        }
    }
}

/// What the vCPU setup needs from the loaded kernel.
pub struct BootInfo {
    pub entry: BootEntry,
}

/// Where the loaded kernel came from and what the kernel is told.
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

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";

/// Loads the kernel named in `spec`, whichever of the two formats it is in.
pub fn load<M: GuestMemoryBackend>(mem: &M, spec: &BootSpec) -> Result<BootInfo, BootError> {
    let mut kernel = open(spec.kernel, "kernel")?;
    let mut magic = [0u8; 4];
    let is_elf = kernel.read_exact(&mut magic).is_ok() && magic == ELF_MAGIC;
    let entry = if is_elf {
        pvh::load(mem, spec, &mut kernel)?
    } else {
        linux64::load(mem, spec, &mut kernel)?
    };
    Ok(BootInfo { entry })
}

/// Loads `kernel` into `mem` with linux-loader's loader `L` (the kernel goes no lower than
/// [`HIMEM_START`]).
fn load_kernel<L: KernelLoader, M: GuestMemoryBackend>(
    mem: &M,
    spec: &BootSpec,
    kernel: &mut File,
) -> Result<KernelLoaderResult, BootError> {
    L::load(mem, None, kernel, Some(GuestAddress(HIMEM_START))).map_err(|source| {
        BootError::Kernel {
            path: spec.kernel.to_path_buf(),
            source,
        }
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

/// Writes the command line (at most `max` bytes with its NUL) to [`CMDLINE_START`]; returns
/// its length without the NUL.
fn write_cmdline<M: GuestMemoryBackend>(mem: &M, line: &str, max: usize) -> Result<u32, BootError> {
    let cmdline = build_cmdline(line, max)?;
    let bytes = cmdline.as_cstring().map_err(BootError::Cmdline)?;
    mem.write_slice(bytes.as_bytes_with_nul(), GuestAddress(CMDLINE_START))
        .map_err(|e| BootError::Write(e.to_string()))?;
    Ok(u32::try_from(bytes.as_bytes().len()).unwrap_or(u32::MAX))
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

/// Puts the initramfs as high as it may go below `limit`, page aligned, above the kernel;
/// returns its address and size.
fn load_initramfs<M: GuestMemoryBackend>(
    mem: &M,
    path: &Path,
    limit: u64,
    kernel_end: u64,
) -> Result<(u64, u64), BootError> {
    let mut file = open(path, "initramfs")?;
    let failed = |reason: String| BootError::Initramfs {
        path: path.to_path_buf(),
        reason,
    };
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
    let len = usize::try_from(size).map_err(|e| failed(e.to_string()))?;
    let mut slice = mem
        .get_slice(GuestAddress(addr), len)
        .map_err(|e| failed(e.to_string()))?;
    file.read_exact_volatile(&mut slice)
        .map_err(|e| failed(e.to_string()))?;
    Ok((addr, size))
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
    fn rejects_non_kernel() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let layout = GuestMemoryLayout::new(64 << 20);
        let spec = BootSpec {
            kernel: Path::new("/dev/null"),
            initramfs: None,
            cmdline: "",
            layout: &layout,
            initramfs_ceiling: layout.low_ram_end(),
            rsdp: GuestAddress(0xe0000),
        };
        assert!(matches!(load(&mem, &spec), Err(BootError::Kernel { .. })));
    }
}
