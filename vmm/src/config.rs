//! The command line, parsed and checked into plain structs before anything touches KVM:
//! `VmConfig` is everything `Vm::new` needs.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use thiserror::Error;

use crate::contain::UserIds;

use crate::layout::{MAX_GUEST_PHYSICAL, MEMORY_BLOCK_SIZE, PAGE_SIZE};
use crate::memory::backend::{BackendError, MemoryBackend, BACKEND_KEYS};
use crate::memory::guest::GuestMemoryLayout;
use crate::numa::{
    check_boot_pages, check_nodes, parse_node, split_boot_ranges, NodeConfig, NumaError,
};
use crate::options::{KeyValues, OptionError};
use crate::pool_link::PoolOptions;
use tidal_api::size::{format_size, parse_size};
use tidal_api::{ConsoleInfo, CpusConfigInfo, MemoryConfigInfo, PayloadInfo, VmConfigInfo};

/// vCPUs are numbered by 8-bit xAPIC ids in the MADT; 255 is the broadcast id.
pub const MAX_VCPUS: u8 = 254;
/// Below this a distribution kernel cannot boot.
pub const MIN_MEMORY: u64 = 64 << 20;
/// Larger guests are not supported (yet): the boot page tables and tests stop here.
pub const MAX_MEMORY: u64 = 1 << 40;
/// DIMM slots when `--memory` gives hotplug_size but no slots.
pub const DEFAULT_SLOTS: u32 = 32;
/// The ACPI tables describe at most this many slots.
pub const MAX_SLOTS: u32 = 256;
/// Linux picks 128 MiB memory blocks only while boot memory ends below 64 GiB.
const MAX_BOOT_END_FOR_HOTPLUG: u64 = 64 << 30;
/// Guest memory when neither --memory nor --numa says.
const DEFAULT_MEMORY: &str = "size=512M";
/// The kernel command line when the user gives none.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=acpi panic=1";

const LONG_ABOUT: &str = "\
Tidal boots Linux on KVM with ACPI tables it generates: a bzImage through the 64-bit boot
protocol, or an uncompressed ELF vmlinux through its PVH entry point (faster: no
decompression in the guest).

Kernel command line: without --cmdline the guest gets
  \"console=ttyS0 reboot=acpi panic=1\"
(console on the serial port, reboot through the ACPI reset register, reboot one second after
a panic, which ends Tidal). With --cmdline, your line is used as it is. Either way Tidal then
appends what the machine needs, unless the line already sets that parameter:
  pci=off   Tidal has no PCI bus; without it the kernel spends seconds probing for one.
  memhp_default_state=online_movable   (with hotplug_size) the guest onlines hot-added
            memory by itself, into ZONE_MOVABLE, so it can be removed again.

Exit: the process ends with code 0 when the guest powers off (`poweroff`) and also when it
resets (`reboot`): Tidal does not restart guests. Errors end it with code 1 and one line on
stderr. A thread stopped by its seccomp filter ends it with code 159 (128 + SIGSYS) and one
line on stderr naming the thread and the system call.";

#[derive(Debug, Parser)]
#[command(name = "tidal", version, about = "A KVM VMM for elastic guest memory", long_about = LONG_ABOUT)]
pub struct Cli {
    /// Linux kernel: a bzImage, or an ELF vmlinux with a PVH entry point.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initramfs to load beside the kernel.
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line (see above for what Tidal adds).
    #[arg(long, value_name = "LINE")]
    pub cmdline: Option<String>,
    /// Number of vCPUs (1 to 254).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub cpus: u32,
    /// Guest memory: size=SIZE[,hotplug_size=SIZE][,slots=N][,BACKEND] (default size=512M).
    /// Sizes take K, M, G or T suffixes (powers of 1024) or plain bytes. hotplug_size reserves
    /// a region above boot RAM that DIMMs of 128M multiples can be hot-added into, in at most
    /// `slots` DIMMs (default 32, at most 256). BACKEND is the host memory behind boot memory
    /// and DIMMs alike (default: private anonymous memory): shared=on (a memfd mapped shared),
    /// hugepages=on[,hugepage_size=2M|1G] (from the host's pool of that size, whose
    /// nr_hugepages is under /sys/kernel/mm/hugepages), prefault=on (allocated when mapped, not when first used),
    /// host_node=N (only from host NUMA node N). With --numa, size and hotplug_size are the
    /// nodes' sums and may be left out, and each node has its own BACKEND.
    #[arg(long, value_name = "size=SIZE[,hotplug_size=SIZE][,slots=N][,BACKEND]")]
    pub memory: Option<String>,
    /// A guest NUMA node, once per node (at most 8), ids 0, 1, ... in order: its vCPUs (every
    /// vCPU in one node), its boot memory and its share of the hotplug region (128M multiples),
    /// and its distances to other nodes (default 20; 10 to itself). hotpluggable=on (not node 0)
    /// makes its boot memory removable and adds movable_node to the kernel command line. The
    /// node's memory backend (for its boot memory and its DIMMs) takes the keys --memory
    /// describes.
    #[arg(
        long,
        value_name = "id=N,cpus=LIST,memory=SIZE[,hotplug_size=SIZE][,distance=[NODE@D,...]][,hotpluggable=on][,BACKEND]"
    )]
    pub numa: Vec<String>,
    /// Guest console: stdio (guest output on stdout, stdin to the guest), file=PATH (the file
    /// takes at most max=SIZE, default 1G), or off.
    #[arg(
        long,
        default_value = "stdio",
        value_name = "stdio|file=PATH[,max=SIZE]|off"
    )]
    pub serial: String,
    /// A second serial port, COM2 (the guest's ttyS1), in --serial's terms; stdio only when
    /// --serial is not. Off by default: the guest then has no COM2.
    #[arg(
        long,
        default_value = "off",
        value_name = "stdio|file=PATH[,max=SIZE]|off"
    )]
    pub serial2: String,
    /// Seconds a memory hotplug operation waits for the guest's answer by default.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub hotplug_timeout: u64,
    /// Serve the REST API (and tidalctl) on this Unix socket, created owner-only (0600).
    #[arg(long, value_name = "PATH")]
    pub api_socket: Option<PathBuf>,
    /// Join the host memory pool (tidal-pool) on this socket: the boot RAM is counted against
    /// its budget, and every hot-add first takes a reservation from it. name defaults to the
    /// API socket's file name (else tidal-PID), min to the boot RAM, max to boot RAM plus the
    /// hotplug region, priority to 0.
    #[arg(
        long,
        value_name = "socket=PATH[,name=NAME][,min=SIZE][,max=SIZE][,priority=N]"
    )]
    pub pool: Option<String>,
    /// Write the generated ACPI tables as DIR/<SIGNATURE>.dat and exit without booting.
    #[arg(long, value_name = "DIR")]
    pub dump_acpi: Option<PathBuf>,
    /// Log level: error, warn, info, debug or trace (RUST_LOG overrides it).
    #[arg(long, default_value = "warn", value_name = "LEVEL")]
    pub log_level: log::LevelFilter,
    /// Seccomp filters: each thread may make only the system calls its job needs. A thread
    /// that makes another ends Tidal with exit code 159 and one line on stderr naming it.
    #[arg(long, value_enum, default_value_t = SeccompMode::On, value_name = "on|off")]
    pub seccomp: SeccompMode,
    /// Once set up (KVM, memory, files, the API socket, which it hands to this user), run as
    /// this unprivileged user and group, numeric, in an empty read-only root of a mount
    /// namespace of its own. Needs root to start; the API socket's directory must let the user
    /// remove the socket at the end.
    #[arg(long, value_name = "UID:GID")]
    pub user: Option<UserIds>,
}

/// Whether Tidal's threads run under their seccomp filters (`crate::seccomp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    On,
    Off,
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error(transparent)]
    Numa(#[from] NumaError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("--memory: {0} goes on each --numa node when there are nodes")]
    BackendBesideNodes(&'static str),
    #[error("--cpus must be between 1 and {MAX_VCPUS}, not {0}")]
    Cpus(u32),
    #[error("--memory: size {} is too small: at least {} is needed", format_size(*.0), format_size(MIN_MEMORY))]
    MemoryTooSmall(u64),
    #[error("--memory: size {} is too large: at most {} is supported", format_size(*.0), format_size(MAX_MEMORY))]
    MemoryTooLarge(u64),
    #[error("--memory: size {0} is not a multiple of 4 KiB")]
    MemoryUnaligned(u64),
    #[error("--memory: slots needs hotplug_size")]
    SlotsWithoutHotplug,
    #[error("--memory: hotplug_size {} is not a multiple of the {} memory block size", format_size(*.0), format_size(MEMORY_BLOCK_SIZE))]
    HotplugUnaligned(u64),
    #[error("--memory: hotplug_size {} is too large: guest memory must end below {}", format_size(*.0), format_size(MAX_GUEST_PHYSICAL))]
    HotplugTooLarge(u64),
    #[error("--memory: hotplug needs boot memory below 63G (the guest's memory block size changes above that); size {} is too large", format_size(*.0))]
    BootTooLargeForHotplug(u64),
    #[error("--memory: slots must be between 1 and {MAX_SLOTS}, not {0}")]
    Slots(u32),
    #[error(
        "--memory: slots {slots} is too few: the hotpluggable nodes' boot memory takes {needed}"
    )]
    SlotsForBootMemory { slots: u32, needed: u32 },
    #[error("--hotplug-timeout must be at least 1 second")]
    HotplugTimeout,
    #[error("{flag}: '{text}' is not stdio, off or file=PATH[,max=SIZE]")]
    Serial { flag: &'static str, text: String },
    #[error("{flag}: max={limit} is too small: a serial output file takes at least 4K")]
    SerialFileLimit { flag: &'static str, limit: u64 },
    #[error("--serial and --serial2 cannot both be stdio: Tidal has one stdin and one stdout")]
    TwoStdioSerials,
    #[error("--pool: name '{0}' is empty or has a '/'")]
    PoolName(String),
    #[error("--pool needs a hotplug region: give --memory hotplug_size=SIZE")]
    PoolWithoutHotplug,
    #[error(
        "--pool and --user cannot go together: the pool's socket is not in the user's empty root"
    )]
    PoolAsUser,
    #[error("cannot read {what} {path}: {source}")]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel {0} is neither a bzImage (no Linux boot header) nor an ELF vmlinux")]
    NotAKernel(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialMode {
    Stdio,
    /// Guest output to `path`, at most `limit` bytes of it.
    File {
        path: PathBuf,
        limit: u64,
    },
    Off,
}

/// How much guest output a `--serial file=` takes by default.
pub const SERIAL_FILE_LIMIT: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryConfig {
    /// Boot RAM in bytes.
    pub size: u64,
    /// Size of the hotplug region above boot RAM; 0 when memory cannot be hot-added.
    pub hotplug_size: u64,
    /// DIMM slots in the hotplug region (0 without one).
    pub slots: u32,
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
    pub cpus: u8,
    pub memory: MemoryConfig,
    /// The guest's NUMA nodes: one holding everything without --numa.
    pub nodes: Vec<NodeConfig>,
    pub serial: SerialMode,
    /// COM2, when not `Off`.
    pub serial2: SerialMode,
    pub api_socket: Option<PathBuf>,
    /// The host memory pool this VM joins.
    pub pool: Option<PoolOptions>,
    pub hotplug_timeout: Duration,
    pub seccomp: SeccompMode,
    /// Who Tidal becomes once set up (`crate::contain`).
    pub user: Option<UserIds>,
}

impl VmConfig {
    /// The configuration as `vm.info` reports it, in Cloud Hypervisor's shape; `memory.size`
    /// is the VM's size now, filled in when asked.
    pub fn describe(&self) -> VmConfigInfo {
        let backends = || self.nodes.iter().map(|node| node.backend);
        let path = |path: &Path| path.display().to_string();
        let (mode, file) = match &self.serial {
            SerialMode::Stdio => ("Tty", None),
            SerialMode::File { path: file, .. } => ("File", Some(path(file))),
            SerialMode::Off => ("Off", None),
        };
        VmConfigInfo {
            cpus: CpusConfigInfo {
                boot_vcpus: u32::from(self.cpus),
                max_vcpus: u32::from(self.cpus),
            },
            memory: MemoryConfigInfo {
                size: 0,
                hotplug_size: self.nodes.iter().map(|node| node.hotplug_size).sum(),
                hotplug_method: "Acpi".to_owned(),
                shared: backends().all(|backend| backend.shared),
                hugepages: backends().all(|backend| backend.huge_pages.is_some()),
            },
            payload: PayloadInfo {
                kernel: path(&self.kernel),
                initramfs: self.initramfs.as_deref().map(path),
                cmdline: self.cmdline.clone(),
            },
            serial: ConsoleInfo {
                mode: mode.to_owned(),
                file,
            },
            console: ConsoleInfo {
                mode: "Off".to_owned(),
                file: None,
            },
        }
    }
}

impl TryFrom<&Cli> for VmConfig {
    type Error = ConfigError;

    fn try_from(cli: &Cli) -> Result<Self, ConfigError> {
        let cpus = u8::try_from(cli.cpus)
            .ok()
            .filter(|n| (1..=MAX_VCPUS).contains(n))
            .ok_or(ConfigError::Cpus(cli.cpus))?;
        check_kernel(&cli.kernel)?;
        if let Some(initramfs) = &cli.initramfs {
            File::open(initramfs).map_err(|source| ConfigError::Unreadable {
                what: "initramfs",
                path: initramfs.clone(),
                source,
            })?;
        }
        let (memory, nodes) = if cli.numa.is_empty() {
            let (memory, backend) = parse_memory(cli.memory.as_deref().unwrap_or(DEFAULT_MEMORY))?;
            let node = NodeConfig {
                id: 0,
                cpus: (0..cpus).collect(),
                memory: memory.size,
                hotplug_size: memory.hotplug_size,
                distances: Default::default(),
                hotpluggable: false,
                backend,
            };
            (memory, vec![node])
        } else {
            let nodes = cli
                .numa
                .iter()
                .map(|text| parse_node(text))
                .collect::<Result<Vec<_>, _>>()?;
            check_nodes(&nodes, cpus)?;
            (numa_memory(cli.memory.as_deref(), &nodes)?, nodes)
        };
        if cli.hotplug_timeout == 0 {
            return Err(ConfigError::HotplugTimeout);
        }
        let serial = parse_serial("--serial", &cli.serial)?;
        let serial2 = parse_serial("--serial2", &cli.serial2)?;
        if serial == SerialMode::Stdio && serial2 == SerialMode::Stdio {
            return Err(ConfigError::TwoStdioSerials);
        }
        let pool = cli
            .pool
            .as_deref()
            .map(|text| parse_pool(text, cli.api_socket.as_deref()))
            .transpose()?;
        if pool.is_some() {
            if memory.slots == 0 {
                return Err(ConfigError::PoolWithoutHotplug);
            }
            if cli.user.is_some() {
                return Err(ConfigError::PoolAsUser);
            }
        }
        Ok(Self {
            kernel: cli.kernel.clone(),
            initramfs: cli.initramfs.clone(),
            cmdline: kernel_cmdline(
                cli.cmdline.as_deref(),
                memory.slots > 0,
                nodes.iter().any(|node| node.hotpluggable),
            ),
            cpus,
            memory,
            nodes,
            serial,
            serial2,
            api_socket: cli.api_socket.clone(),
            pool,
            hotplug_timeout: Duration::from_secs(cli.hotplug_timeout),
            seccomp: cli.seccomp,
            user: cli.user,
        })
    }
}

/// Parameters every machine needs, appended unless the line already sets the key.
const REQUIRED_PARAMS: [&str; 1] = ["pci=off"];
/// With a hotplug region the guest onlines new memory itself, as removable memory.
const HOTPLUG_PARAMS: [&str; 1] = ["memhp_default_state=online_movable"];
/// With hotpluggable boot memory the guest keeps that memory in ZONE_MOVABLE from boot, so
/// that it can be offlined and removed.
const MOVABLE_NODE_PARAMS: [&str; 1] = ["movable_node"];

/// The guest's command line: the user's or the default, plus what the machine needs. Added
/// parameters go before a `--`, since what follows it is for init, not the kernel.
pub fn kernel_cmdline(user: Option<&str>, hotplug: bool, movable_node: bool) -> String {
    let words: Vec<&str> = user.unwrap_or(DEFAULT_CMDLINE).split_whitespace().collect();
    let split = words.iter().position(|w| *w == "--").unwrap_or(words.len());
    let (kernel, init) = words.split_at(split);
    let mut kernel: Vec<String> = kernel.iter().map(|w| w.to_string()).collect();
    let hotplug_params = if hotplug { &HOTPLUG_PARAMS[..] } else { &[] };
    let movable_params = if movable_node {
        &MOVABLE_NODE_PARAMS[..]
    } else {
        &[]
    };
    let key = |word: &str| word.split('=').next().unwrap_or_default().to_owned();
    for param in REQUIRED_PARAMS
        .iter()
        .chain(hotplug_params)
        .chain(movable_params)
    {
        if !kernel.iter().any(|w| key(w) == key(param)) {
            kernel.push((*param).to_owned());
        }
    }
    kernel.extend(init.iter().map(|w| w.to_string()));
    kernel.join(" ")
}

/// The keys `--memory` takes, beside a memory backend's ([`BACKEND_KEYS`]).
const MEMORY_KEYS: [&str; 3] = ["size", "hotplug_size", "slots"];

/// `--memory` of a VM without `--numa` nodes: its sizes and the backend of its one node.
pub fn parse_memory(text: &str) -> Result<(MemoryConfig, MemoryBackend), ConfigError> {
    let kv = memory_options(text)?;
    let backend = MemoryBackend::parse(&kv, "--memory")?;
    let memory = memory_config(
        kv.required_size("size")?,
        kv.size("hotplug_size")?.unwrap_or(0),
        kv.number::<u32>("slots")?,
        0,
    )?;
    backend.check_size("--memory: size", memory.size)?;
    Ok((memory, backend))
}

fn memory_options(text: &str) -> Result<KeyValues, OptionError> {
    KeyValues::parse("memory", text, &[&MEMORY_KEYS[..], &BACKEND_KEYS].concat())
}

/// The memory of a VM with `--numa` nodes: their sums, which a `--memory` beside them may
/// repeat but not contradict; `--memory` alone gives the number of slots. Backends are the
/// nodes' own.
fn numa_memory(text: Option<&str>, nodes: &[NodeConfig]) -> Result<MemoryConfig, ConfigError> {
    let kv = memory_options(text.unwrap_or_default())?;
    if let Some(key) = BACKEND_KEYS.into_iter().find(|key| kv.get(key).is_some()) {
        return Err(ConfigError::BackendBesideNodes(key));
    }
    let size: u64 = nodes.iter().map(|n| n.memory).sum();
    let hotplug_size: u64 = nodes.iter().map(|n| n.hotplug_size).sum();
    for (key, nodes) in [("size", size), ("hotplug_size", hotplug_size)] {
        match kv.size(key)? {
            Some(memory) if memory != nodes => {
                return Err(NumaError::Disagrees { key, memory, nodes }.into())
            }
            _ => {}
        }
    }
    let layout = GuestMemoryLayout::new(size);
    check_boot_pages(&layout, nodes)?;
    let boot_dimms = split_boot_ranges(&layout, nodes).1.len();
    memory_config(
        size,
        hotplug_size,
        kv.number::<u32>("slots")?,
        u32::try_from(boot_dimms).unwrap_or(u32::MAX),
    )
}

/// Checks boot memory, the hotplug region and the slots together; `boot_dimms` slots go to
/// boot memory that can be removed (hotpluggable NUMA nodes).
fn memory_config(
    size: u64,
    hotplug_size: u64,
    slots: Option<u32>,
    boot_dimms: u32,
) -> Result<MemoryConfig, ConfigError> {
    if size < MIN_MEMORY {
        return Err(ConfigError::MemoryTooSmall(size));
    }
    if size > MAX_MEMORY {
        return Err(ConfigError::MemoryTooLarge(size));
    }
    if !size.is_multiple_of(PAGE_SIZE) {
        return Err(ConfigError::MemoryUnaligned(size));
    }
    if hotplug_size == 0 && boot_dimms == 0 {
        if slots.is_some() {
            return Err(ConfigError::SlotsWithoutHotplug);
        }
        return Ok(MemoryConfig {
            size,
            hotplug_size: 0,
            slots: 0,
        });
    }
    if !hotplug_size.is_multiple_of(MEMORY_BLOCK_SIZE) {
        return Err(ConfigError::HotplugUnaligned(hotplug_size));
    }
    let region_base = GuestMemoryLayout::new(size).hotplug_region_base();
    if region_base.saturating_add(hotplug_size) > MAX_GUEST_PHYSICAL {
        return Err(ConfigError::HotplugTooLarge(hotplug_size));
    }
    if region_base > MAX_BOOT_END_FOR_HOTPLUG {
        return Err(ConfigError::BootTooLargeForHotplug(size));
    }
    let slots = slots.unwrap_or(DEFAULT_SLOTS);
    if !(1..=MAX_SLOTS).contains(&slots) {
        return Err(ConfigError::Slots(slots));
    }
    if slots < boot_dimms {
        return Err(ConfigError::SlotsForBootMemory {
            slots,
            needed: boot_dimms,
        });
    }
    Ok(MemoryConfig {
        size,
        hotplug_size,
        slots,
    })
}

/// The keys `--pool` takes.
const POOL_KEYS: [&str; 5] = ["socket", "name", "min", "max", "priority"];

/// `--pool`'s `text`; the VM's name defaults to its API socket's file name (`api_socket`).
pub fn parse_pool(text: &str, api_socket: Option<&Path>) -> Result<PoolOptions, ConfigError> {
    let kv = KeyValues::parse("pool", text, &POOL_KEYS)?;
    let socket = kv
        .get("socket")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .ok_or(OptionError::Missing {
            flag: "pool",
            key: "socket",
        })?;
    let name = match kv.get("name") {
        Some(name) if name.is_empty() || name.contains('/') => {
            return Err(ConfigError::PoolName(name.to_owned()))
        }
        Some(name) => name.to_owned(),
        None => api_socket.and_then(Path::file_stem).map_or_else(
            || format!("tidal-{}", std::process::id()),
            |stem| stem.to_string_lossy().into_owned(),
        ),
    };
    Ok(PoolOptions {
        socket,
        name,
        min: kv.size("min")?,
        max: kv.size("max")?,
        priority: kv.number("priority")?.unwrap_or(0),
    })
}

/// `text`, the value of `flag` (`--serial` or `--serial2`).
pub fn parse_serial(flag: &'static str, text: &str) -> Result<SerialMode, ConfigError> {
    match text {
        "stdio" => Ok(SerialMode::Stdio),
        "off" => Ok(SerialMode::Off),
        _ => {
            let invalid = || ConfigError::Serial {
                flag,
                text: text.to_string(),
            };
            let file = text.strip_prefix("file=").ok_or_else(invalid)?;
            let (path, limit) = match file.rsplit_once(",max=") {
                Some((path, max)) => (path, parse_size(max).map_err(|_| invalid())?),
                None => (file, SERIAL_FILE_LIMIT),
            };
            if path.is_empty() {
                return Err(invalid());
            }
            if limit < crate::serial_output::MIN_FILE_LIMIT {
                return Err(ConfigError::SerialFileLimit { flag, limit });
            }
            Ok(SerialMode::File {
                path: PathBuf::from(path),
                limit,
            })
        }
    }
}

/// Refuses files that are neither a bzImage (the "HdrS" boot protocol magic) nor an ELF file,
/// before any KVM work is done; whether an ELF file has a PVH entry is for the loader to say.
fn check_kernel(path: &Path) -> Result<(), ConfigError> {
    const HEADER_MAGIC_OFFSET: u64 = 0x202;
    let unreadable = |source| ConfigError::Unreadable {
        what: "kernel",
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(unreadable)?;
    let mut read_at = |offset| {
        let mut magic = [0u8; 4];
        match file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_exact(&mut magic))
        {
            Ok(()) => Ok(Some(magic)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(unreadable(e)),
        }
    };
    if read_at(0)? == Some(*b"\x7fELF") || read_at(HEADER_MAGIC_OFFSET)? == Some(*b"HdrS") {
        Ok(())
    } else {
        Err(ConfigError::NotAKernel(path.to_path_buf()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("size=512M").unwrap().0.size, 512 << 20);
        assert!(matches!(
            parse_memory("size=0"),
            Err(ConfigError::MemoryTooSmall(0))
        ));
        assert!(matches!(
            parse_memory("size=2T"),
            Err(ConfigError::MemoryTooLarge(_))
        ));
        assert!(matches!(
            parse_memory("size=100000001"),
            Err(ConfigError::MemoryUnaligned(_))
        ));
        assert!(matches!(
            parse_memory("size=12Q"),
            Err(ConfigError::Option(_))
        ));
        assert!(matches!(parse_memory(""), Err(ConfigError::Option(_))));
    }

    #[test]
    fn hotplug_options() {
        let (memory, _) = parse_memory("size=1G,hotplug_size=16G").unwrap();
        assert_eq!(
            (memory.hotplug_size, memory.slots),
            (16 << 30, DEFAULT_SLOTS)
        );
        let (memory, _) = parse_memory("size=1G,hotplug_size=8G,slots=4").unwrap();
        assert_eq!(memory.slots, 4);
        assert_eq!(parse_memory("size=1G").unwrap().0.slots, 0);
        assert!(matches!(
            parse_memory("size=1G,slots=4"),
            Err(ConfigError::SlotsWithoutHotplug)
        ));
        assert!(matches!(
            parse_memory("size=1G,hotplug_size=100M"),
            Err(ConfigError::HotplugUnaligned(_))
        ));
        assert!(matches!(
            parse_memory("size=1G,hotplug_size=8G,slots=0"),
            Err(ConfigError::Slots(0))
        ));
        assert!(matches!(
            parse_memory("size=1G,hotplug_size=8G,slots=257"),
            Err(ConfigError::Slots(257))
        ));
        assert!(matches!(
            parse_memory("size=1G,hotplug_size=2T"),
            Err(ConfigError::HotplugTooLarge(_))
        ));
        assert!(matches!(
            parse_memory("size=100G,hotplug_size=1G"),
            Err(ConfigError::BootTooLargeForHotplug(_))
        ));
    }

    #[test]
    fn serial_modes() {
        assert_eq!(
            parse_serial("--serial", "stdio").unwrap(),
            SerialMode::Stdio
        );
        assert_eq!(parse_serial("--serial", "off").unwrap(), SerialMode::Off);
        assert_eq!(
            parse_serial("--serial", "file=/tmp/x").unwrap(),
            SerialMode::File {
                path: "/tmp/x".into(),
                limit: SERIAL_FILE_LIMIT
            }
        );
        assert_eq!(
            parse_serial("--serial", "file=/tmp/a,b,max=64M").unwrap(),
            SerialMode::File {
                path: "/tmp/a,b".into(),
                limit: 64 << 20
            }
        );
        assert!(parse_serial("--serial", "file=").is_err());
        assert!(parse_serial("--serial", "file=/tmp/x,max=0").is_err());
        assert!(parse_serial("--serial", "file=/tmp/x,max=lots").is_err());
        assert!(parse_serial("--serial", "tty").is_err());
        assert_eq!(
            parse_serial("--serial2", "tty").unwrap_err().to_string(),
            "--serial2: 'tty' is not stdio, off or file=PATH[,max=SIZE]"
        );
    }

    #[test]
    fn pool_options() {
        let api = Path::new("/run/vms/web-1.sock");
        let options = parse_pool("socket=/run/pool.sock", Some(api)).unwrap();
        assert_eq!(
            options,
            PoolOptions {
                socket: "/run/pool.sock".into(),
                name: "web-1".into(),
                min: None,
                max: None,
                priority: 0,
            }
        );
        let options = parse_pool("socket=/p.sock,name=db,min=1G,max=8G,priority=-2", None).unwrap();
        assert_eq!(
            (
                options.name.as_str(),
                options.min,
                options.max,
                options.priority
            ),
            ("db", Some(1 << 30), Some(8 << 30), -2)
        );
        assert!(parse_pool("socket=/p.sock", None)
            .unwrap()
            .name
            .starts_with("tidal-"));
        assert_eq!(
            parse_pool("name=db", None).unwrap_err().to_string(),
            "--pool: missing required key 'socket'"
        );
        assert_eq!(
            parse_pool("socket=/p,name=a/b", None)
                .unwrap_err()
                .to_string(),
            "--pool: name 'a/b' is empty or has a '/'"
        );
        assert!(parse_pool("socket=/p,size=1G", None).is_err());
        assert!(parse_pool("socket=/p,priority=high", None).is_err());
    }

    #[test]
    fn cmdline_default_and_user() {
        assert_eq!(
            kernel_cmdline(None, false, false),
            format!("{DEFAULT_CMDLINE} pci=off")
        );
        assert_eq!(
            kernel_cmdline(Some(" console=ttyS0 quiet "), false, false),
            "console=ttyS0 quiet pci=off"
        );
        assert_eq!(kernel_cmdline(Some(""), false, false), "pci=off");
        assert_eq!(
            kernel_cmdline(Some("quiet"), true, false),
            "quiet pci=off memhp_default_state=online_movable"
        );
        assert_eq!(
            kernel_cmdline(Some("memhp_default_state=online"), true, false),
            "memhp_default_state=online pci=off"
        );
    }

    #[test]
    fn cmdline_asks_for_movable_nodes_when_boot_memory_can_go() {
        assert_eq!(
            kernel_cmdline(Some("quiet"), true, true),
            "quiet pci=off memhp_default_state=online_movable movable_node"
        );
        assert_eq!(
            kernel_cmdline(Some("movable_node quiet"), true, true),
            "movable_node quiet pci=off memhp_default_state=online_movable"
        );
    }

    #[test]
    fn cmdline_keeps_the_users_choice() {
        assert_eq!(
            kernel_cmdline(Some("pci=noacpi quiet"), false, false),
            "pci=noacpi quiet"
        );
        // After "--" words belong to init, not the kernel.
        assert_eq!(
            kernel_cmdline(Some("quiet -- pci=1"), false, false),
            "quiet pci=off -- pci=1"
        );
    }

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("tidal").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn seccomp_is_on_unless_turned_off() {
        assert_eq!(cli(&["--kernel", "k"]).seccomp, SeccompMode::On);
        assert_eq!(
            cli(&["--kernel", "k", "--seccomp=off"]).seccomp,
            SeccompMode::Off
        );
        assert_eq!(
            cli(&["--kernel", "k", "--seccomp", "on"]).seccomp,
            SeccompMode::On
        );
        let args = ["tidal", "--kernel", "k", "--seccomp", "maybe"];
        assert!(Cli::try_parse_from(args).is_err());
    }

    #[test]
    fn numa_nodes_make_the_memory() {
        let nodes: Vec<_> = [
            "id=0,cpus=0,memory=1G,hotplug_size=2G",
            "id=1,cpus=1,memory=512M",
        ]
        .iter()
        .map(|text| parse_node(text).unwrap())
        .collect();
        let memory = numa_memory(None, &nodes).unwrap();
        assert_eq!(
            (memory.size, memory.hotplug_size, memory.slots),
            (1536 << 20, 2 << 30, DEFAULT_SLOTS)
        );
        let memory = numa_memory(Some("size=1536M,slots=4"), &nodes).unwrap();
        assert_eq!(memory.slots, 4);
        assert_eq!(
            numa_memory(Some("size=2G"), &nodes)
                .unwrap_err()
                .to_string(),
            "--memory size 2 GiB disagrees with the --numa nodes, which add up to 1536 MiB"
        );
        assert!(matches!(
            numa_memory(Some("hotplug_size=1G"), &nodes),
            Err(ConfigError::Numa(NumaError::Disagrees { .. }))
        ));
    }

    #[test]
    fn numa_needs_every_vcpu_in_a_node() {
        // The kernel is checked first: this one is a bzImage only as far as its header goes.
        let kernel = std::env::temp_dir().join(format!("tidal-numa-{}", std::process::id()));
        let mut image = vec![0u8; 0x210];
        image[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(&kernel, image).unwrap();
        let kernel_arg = kernel.to_str().unwrap();
        let two_nodes = [
            "--kernel",
            kernel_arg,
            "--cpus",
            "3",
            "--numa",
            "id=0,cpus=0,memory=1G",
            "--numa",
            "id=1,cpus=1,memory=1G",
        ];
        let err = VmConfig::try_from(&cli(&two_nodes)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--numa: vCPU 2 is in no node: every vCPU needs one"
        );
        let mut args = two_nodes.to_vec();
        args[3] = "2";
        let config = VmConfig::try_from(&cli(&args)).unwrap();
        assert_eq!(config.nodes.len(), 2);
        assert_eq!(config.memory.size, 2 << 30);
        std::fs::remove_file(kernel).unwrap();
    }

    #[test]
    fn rejects_bad_cpus_and_kernels() {
        let err =
            VmConfig::try_from(&cli(&["--kernel", "/nonexistent", "--cpus", "0"])).unwrap_err();
        assert!(matches!(err, ConfigError::Cpus(0)));
        let err =
            VmConfig::try_from(&cli(&["--kernel", "/nonexistent", "--cpus", "1000"])).unwrap_err();
        assert!(matches!(err, ConfigError::Cpus(1000)));
        let err = VmConfig::try_from(&cli(&["--kernel", "/nonexistent"])).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Unreadable { what: "kernel", .. }
        ));
        let not_a_kernel = std::env::temp_dir().join(format!("tidal-text-{}", std::process::id()));
        std::fs::write(&not_a_kernel, vec![b'x'; 0x300]).unwrap();
        let err = VmConfig::try_from(&cli(&["--kernel", not_a_kernel.to_str().unwrap()]));
        std::fs::remove_file(&not_a_kernel).unwrap();
        assert!(matches!(err, Err(ConfigError::NotAKernel(_))));
        let elf = VmConfig::try_from(&cli(&["--kernel", "/proc/self/exe"]));
        assert!(
            elf.is_ok(),
            "an ELF kernel is for the loader to judge: {elf:?}"
        );
    }
}
