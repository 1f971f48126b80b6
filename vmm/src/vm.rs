//! A VM from a `VmConfig`: the KVM VM with its in-kernel irqchip, guest RAM, devices on the
//! port bus, ACPI tables, the loaded kernel and the vCPU threads; and the loop that waits for
//! the guest to power off, reset or panic, or for a signal that stops Tidal.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use thiserror::Error;
use tidal_acpi::memory_hotplug_layout::REGISTERS_LEN as HOTPLUG_REGISTERS_LEN;
use tidal_acpi::{
    AcpiConfig, AcpiTables, IoApic, LegacySerial, MemoryRange, NumaConfig, NumaNode, PowerRegisters,
};
use tidal_devices::ged::{Ged, GED_REGISTER_LEN};
use tidal_devices::i8042::{I8042, I8042_PORT, I8042_PORT_SIZE};
use tidal_devices::memory_hotplug::MemoryHotplugController;
use tidal_devices::power::{
    AcpiPower, POWER_PORT, POWER_PORT_SIZE, RESET_PORT, RESET_VALUE, SLEEP_CONTROL_PORT,
    SLEEP_STATUS_PORT,
};
use tidal_devices::pvpanic::{PvPanic, PVPANIC_REGISTER_LEN};
use tidal_devices::serial::{COM1_IRQ, COM1_PORT, COM2_IRQ, COM2_PORT, SERIAL_PORT_SIZE};
use tidal_devices::{EventFdTrigger, ExitReason, ExitSignal};
use vm_device::bus::{MmioAddress, MmioRange, PioAddress, PioRange};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vm_device::{DeviceMmio, DevicePio};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::signal::Killable;

use crate::boot::{self, BootEntry, BootError, BootInfo, BootSpec};
use crate::config::{SeccompMode, SerialMode, VmConfig};
use crate::console::{ConsoleError, SerialPort};
use crate::contain::{self, ContainError, UserIds};
use crate::control::VmHandle;
use crate::cpu::{self, Topology};
use crate::hotplug::{HotplugParts, MemoryHotplug};
use crate::layout::{
    ACPI_END, ACPI_START, APIC_START, GED_IRQ, GED_MMIO_START, IOAPIC_START,
    MEMORY_HOTPLUG_MMIO_START, PVPANIC_MMIO_START,
};
use crate::memory::dimm_space::HotplugRegion;
use crate::memory::guest::{GuestMemoryLayout, GuestRam, MemoryError};
use crate::memory::host::HostMemory;
use crate::memory::ram::GuestMemory;
use crate::numa;
use crate::pool_link::PoolLink;
use crate::reset_vector;
use crate::seccomp::{self, Filters, SeccompError};
use crate::serial_output;
use crate::signals::{SignalError, StopSignal, StopSignals};
use crate::vcpu::{self, VcpuContext, VcpuError};

#[derive(Debug, Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it?)")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM API version {0} is not the supported version 12")]
    KvmApiVersion(i32),
    #[error("{count} vCPUs requested, but this host's KVM supports at most {max}")]
    TooManyVcpus { count: u8, max: usize },
    #[error("KVM failed to {what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Console(#[from] ConsoleError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("vCPU {index} setup: {source}")]
    VcpuSetup {
        index: u8,
        source: cpu::regs::RegsError,
    },
    #[error("cannot build ACPI tables: {0}")]
    Acpi(#[from] tidal_acpi::AcpiError),
    #[error("cannot write ACPI table {signature} at {address:#x}: {reason}")]
    AcpiWrite {
        signature: String,
        address: u64,
        reason: String,
    },
    #[error("cannot create {what}: {source}")]
    Resource {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("cannot place device at {base:#x}: {source}")]
    MmioBus {
        base: u64,
        source: vm_device::bus::Error,
    },
    #[error(transparent)]
    HotplugSetup(#[from] crate::hotplug::HotplugSetupError),
    #[error(transparent)]
    Api(#[from] tidal_api::server::ServerError),
    #[error("cannot place device at port {port:#x}: {source}")]
    Bus {
        port: u16,
        source: vm_device::bus::Error,
    },
    #[error("event loop failed: {0:?}")]
    EventLoop(event_manager::Error),
    #[error("a vCPU failed; see the log above")]
    VcpuFailed,
    #[error(transparent)]
    Signals(#[from] SignalError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Pool(#[from] crate::pool_link::PoolError),
    #[error(transparent)]
    Contain(#[from] ContainError),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

// The AML and the devices agree on the registers they share, and the ACPI tables stay clear of
// the reset-vector stub: checked when Tidal is compiled.
const _: () = {
    assert!(tidal_acpi::S5_SLEEP_TYPE == tidal_devices::power::S5_SLEEP_TYPE);
    assert!(tidal_acpi::PVPANIC_REGISTER_LEN as u64 == PVPANIC_REGISTER_LEN);
    assert!(ACPI_END <= crate::reset_vector::RESET_VECTOR);
};

/// Where the TSS and identity map go: three pages just below the BIOS area, in the hole.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Each node's share of the hotplug region (`None` for a node without one).
pub fn hotplug_shares(config: &VmConfig) -> Vec<Option<HotplugRegion>> {
    let base = GuestMemoryLayout::new(config.memory.size).hotplug_region_base();
    numa::hotplug_shares(base, &config.nodes)
}

/// The SRAT's view of the machine: each node's vCPUs, boot RAM, and share of the hotplug
/// region as hotpluggable; the SLIT's distances when there is more than one node. `None` for a
/// machine with one node and nothing to hot-add, which needs neither table.
fn numa_config(config: &VmConfig) -> Option<NumaConfig> {
    let shares = hotplug_shares(config);
    if config.nodes.len() == 1 && shares.iter().all(Option::is_none) {
        return None;
    }
    let layout = GuestMemoryLayout::new(config.memory.size);
    let boot = numa::boot_ranges(&layout, &config.nodes);
    let nodes = config
        .nodes
        .iter()
        .zip(boot)
        .zip(&shares)
        .map(|((node, boot), share)| {
            let boot = boot.into_iter().map(|(base, size)| MemoryRange {
                base,
                size,
                hotpluggable: node.hotpluggable,
            });
            let share = share.map(|share| MemoryRange {
                base: share.base,
                size: share.size,
                hotpluggable: true,
            });
            NumaNode {
                proximity_domain: node.id,
                apic_ids: node.cpus.iter().copied().map(u32::from).collect(),
                memory: boot.chain(share).collect(),
            }
        })
        .collect();
    Some(NumaConfig {
        nodes,
        distances: (config.nodes.len() > 1).then(|| numa::distance_matrix(&config.nodes)),
    })
}

/// The ACPI tables for `config`: also what `--dump-acpi` writes.
pub fn acpi_tables(config: &VmConfig) -> Result<AcpiTables, tidal_acpi::AcpiError> {
    let hotplug = config.memory.slots > 0;
    let acpi = AcpiConfig {
        cpus: u32::from(config.cpus),
        serials: serial_ports(config)
            .map(|(io_port, irq, _, _)| LegacySerial { io_port, irq })
            .collect(),
        power: PowerRegisters {
            sleep_control_port: SLEEP_CONTROL_PORT,
            sleep_status_port: SLEEP_STATUS_PORT,
            reset_port: RESET_PORT,
            reset_value: RESET_VALUE,
        },
        ioapic: IoApic {
            id: config.cpus,
            address: IOAPIC_START,
            gsi_base: 0,
        },
        lapic_address: APIC_START,
        ged: Some(tidal_acpi::Ged {
            mmio_base: GED_MMIO_START,
            irq: GED_IRQ,
        }),
        memory_hotplug: hotplug.then_some(tidal_acpi::MemoryHotplug {
            mmio_base: MEMORY_HOTPLUG_MMIO_START,
            slots: config.memory.slots,
        }),
        numa: numa_config(config),
        pvpanic: Some(tidal_acpi::PvPanic {
            mmio_base: PVPANIC_MMIO_START,
        }),
    };
    tidal_acpi::build_tables(&acpi, ACPI_START, ACPI_END)
}

/// A VM ready to run: everything is set up, no vCPU has started.
pub struct Vm {
    _kvm: Kvm,
    vm: Arc<VmFd>,
    _ram: GuestRam,
    hotplug: Arc<MemoryHotplug>,
    /// What the API server calls into.
    control: Arc<VmHandle>,
    api_socket: Option<PathBuf>,
    io: Arc<IoManager>,
    exit: Arc<ExitSignal>,
    /// COM1, and COM2 when configured; their threads start when the VM runs.
    serials: Vec<SerialPort>,
    vcpus: Vec<VcpuFd>,
    seccomp: SeccompMode,
    user: Option<UserIds>,
    /// Made before `run` starts (and confines) any thread; read by its event loop.
    stop_signals: StopSignals,
    /// The host memory pool the VM joined (`--pool`); dropped last, when it leaves.
    pool: Option<Arc<PoolLink>>,
}

/// Why [`Vm::run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The VM ended: the guest powered off, reset or panicked, a vCPU failed, or the API asked
    /// for a shutdown.
    Ended(ExitReason),
    /// Tidal received a stop signal (SIGTERM, SIGINT, SIGHUP).
    Signal(StopSignal),
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::Ended(ExitReason::PowerOff) => write!(f, "the guest powered off"),
            VmExit::Ended(ExitReason::Reset) => write!(f, "the guest reset"),
            VmExit::Ended(ExitReason::Failed) => write!(f, "a vCPU failed"),
            VmExit::Ended(ExitReason::GuestPanicked) => write!(f, "the guest kernel panicked"),
            VmExit::Ended(ExitReason::Shutdown) => write!(f, "the API asked for a shutdown"),
            VmExit::Ended(ExitReason::InternalError) => write!(f, "Tidal hit an internal error"),
            VmExit::Signal(signal) => write!(f, "Tidal received {}", signal.name()),
        }
    }
}

impl Vm {
    /// Builds the VM in the order each part needs the ones before: the KVM VM, guest memory,
    /// what the guest boots from, the devices, memory hotplug, the vCPUs.
    pub fn new(config: &VmConfig) -> Result<Self, VmError> {
        // In a host memory pool, the boot RAM must fit in its budget before any is mapped.
        let pool = config
            .pool
            .as_ref()
            .map(|options| {
                let removable: u64 = config
                    .nodes
                    .iter()
                    .filter(|node| node.hotpluggable)
                    .map(|node| node.memory)
                    .sum();
                PoolLink::join(
                    options,
                    config.api_socket.as_deref(),
                    config.memory.size - removable,
                    removable,
                    config.memory.hotplug_size,
                )
                .map(Arc::new)
            })
            .transpose()?;
        let (kvm, vm) = create_kvm_vm(config)?;
        let layout = GuestMemoryLayout::new(config.memory.size);
        // Hotpluggable nodes' boot memory is mapped as DIMMs present from boot, below.
        let (fixed_ram, removable_ram) = numa::split_boot_ranges(&layout, &config.nodes);
        let mut ram = GuestRam::new(&fixed_ram)?;
        let boot_kvm_slots = ram.register_with_kvm(&vm)?;
        let memory = ram.atomic();
        // Node 0 starts at 0 and is never hotpluggable: its first range stays.
        let initramfs_ceiling = fixed_ram.first().map_or(0, |range| range.base + range.size);
        let boot = load_guest(config, &memory.memory(), &layout, initramfs_ceiling)?;
        let exit = Arc::new(ExitSignal::new().map_err(|source| VmError::Resource {
            what: "the exit event",
            source,
        })?);
        let Devices {
            mut io,
            serials,
            ged,
        } = Devices::new(&vm, config, &exit)?;
        let hotplug = Arc::new(MemoryHotplug::new(hotplug_parts(
            config,
            &vm,
            memory,
            boot_kvm_slots,
            &mut io,
            ged,
            pool.clone(),
        )?)?);
        hotplug.plug_boot_memory(&removable_ram)?;
        let control = Arc::new(VmHandle::new(
            hotplug.clone(),
            exit.clone(),
            config.describe(),
        ));
        let vcpus = create_vcpus(&kvm, &vm, config, boot.entry)?;
        log::info!(
            "VM ready: {} vCPUs, {} MiB RAM, kernel {} ({})",
            config.cpus,
            config.memory.size >> 20,
            config.kernel.display(),
            boot.entry
        );

        Ok(Self {
            _kvm: kvm,
            vm,
            _ram: ram,
            hotplug,
            control,
            api_socket: config.api_socket.clone(),
            io: Arc::new(io),
            exit,
            serials,
            vcpus,
            stop_signals: StopSignals::new()?,
            seccomp: config.seccomp,
            user: config.user,
            pool,
        })
    }

    /// Runs the guest until it powers off, resets or panics, or a stop signal arrives; returns
    /// why it stopped.
    pub fn run(self) -> Result<VmExit, VmError> {
        vcpu::install_kick_handler()?;
        crate::internal_error::stop_on_panic_through(self.exit.clone());
        // Every filter is compiled, and violations reported, before the first thread starts.
        let filters = match self.seccomp {
            SeccompMode::On => {
                seccomp::install_sigsys_handler()?;
                seccomp::fix_malloc_arena_limit()?;
                Some(Filters::new()?)
            }
            SeccompMode::Off => None,
        };
        if let Some(pool) = &self.pool {
            pool.confine(filters.as_ref().map(|f| f.pool.clone()));
        }
        let api_thread_start: tidal_api::ThreadStart = match &filters {
            Some(filters) => {
                let filter = filters.api.clone();
                Arc::new(move || filter.apply_or_exit())
            }
            None => Arc::new(|| ()),
        };
        let socket = self
            .api_socket
            .as_deref()
            .map(tidal_api::BoundSocket::bind)
            .transpose()?;
        contain::limit_resources()?;
        if let Some(user) = self.user {
            if let Some(socket) = &socket {
                socket.hand_to(user.uid, user.gid)?;
            }
            contain::become_user(user)?;
            log::info!("running as user {}, group {}", user.uid, user.gid);
        }
        let _api = match socket {
            Some(socket) => Some(tidal_api::start_on(
                socket,
                self.control.clone(),
                api_thread_start,
                tidal_api::ServerLimits::default(),
            )?),
            None => None,
        };
        let outputs = self
            .serials
            .into_iter()
            .map(|port| port.start(filters.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = VcpuContext {
            io: self.io.clone(),
            exit: self.exit.clone(),
            stop: stop.clone(),
            seccomp: filters.as_ref().map(|f| f.vcpu.clone()),
        };
        let mut threads = Vec::new();
        for (index, vcpu) in (0u8..).zip(self.vcpus) {
            threads.push(vcpu::spawn(index, vcpu, ctx.clone())?);
        }
        // Every thread runs: from here on this one only waits, stops the others and tears down.
        if let Some(filters) = &filters {
            filters.main.apply()?;
        }

        let exit = wait_for_exit(&self.exit, self.stop_signals, &self.hotplug);
        self.hotplug.stop(&exit.as_ref().map_or_else(
            |_| "the VMM's event loop failed".to_owned(),
            ToString::to_string,
        ));
        stop.store(true, Ordering::Release);
        stop_vcpus(threads);
        for output in &outputs {
            output.finish(serial_output::FINISH_WITHIN);
        }
        drop(self.vm);
        match exit? {
            VmExit::Ended(ExitReason::Failed) => Err(VmError::VcpuFailed),
            other => Ok(other),
        }
    }
}

/// Opens KVM and creates the VM with its in-kernel interrupt controller.
fn create_kvm_vm(config: &VmConfig) -> Result<(Kvm, Arc<VmFd>), VmError> {
    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    let api = kvm.get_api_version();
    if api != 12 {
        return Err(VmError::KvmApiVersion(api));
    }
    let max = kvm.get_max_vcpus();
    if usize::from(config.cpus) > max {
        return Err(VmError::TooManyVcpus {
            count: config.cpus,
            max,
        });
    }
    let vm = Arc::new(kvm.create_vm().map_err(kvm_err("create the VM"))?);
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(kvm_err("set the TSS address"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("create the in-kernel interrupt controller"))?;
    Ok((kvm, vm))
}

/// Writes what the guest boots from into its memory: the ACPI tables, the kernel, initramfs
/// and zero page, the boot page tables and GDT, and the reset-vector stub.
fn load_guest(
    config: &VmConfig,
    mem: &GuestMemory,
    layout: &GuestMemoryLayout,
    initramfs_ceiling: u64,
) -> Result<BootInfo, VmError> {
    let tables = acpi_tables(config)?;
    for table in &tables.tables {
        mem.write_slice(&table.bytes, GuestAddress(table.address))
            .map_err(|e| VmError::AcpiWrite {
                signature: String::from_utf8_lossy(&table.signature).into_owned(),
                address: table.address,
                reason: e.to_string(),
            })?;
    }
    let boot = boot::load(
        mem,
        &BootSpec {
            kernel: &config.kernel,
            initramfs: config.initramfs.as_deref(),
            cmdline: &config.cmdline,
            layout,
            initramfs_ceiling,
            rsdp: GuestAddress(tables.rsdp_address),
        },
    )?;
    cpu::write_boot_page_tables_and_gdt(mem)
        .map_err(|source| VmError::VcpuSetup { index: 0, source })?;
    reset_vector::write_reset_stub(mem, RESET_PORT, RESET_VALUE)
        .map_err(|e| VmError::Boot(BootError::Write(e.to_string())))?;
    Ok(boot)
}

/// The devices on the I/O buses, and the two kinds the VM keeps a hand on.
struct Devices {
    io: IoManager,
    serials: Vec<SerialPort>,
    ged: Arc<Ged>,
}

/// The serial ports `config` asks for: port, interrupt, mode and writer thread name of COM1
/// (always there, for the kernel's console) and COM2 (when not off).
fn serial_ports(config: &VmConfig) -> impl Iterator<Item = (u16, u32, &SerialMode, &'static str)> {
    let com1 = (COM1_PORT, COM1_IRQ, &config.serial, "console-out");
    let com2 = (COM2_PORT, COM2_IRQ, &config.serial2, "console2-out");
    std::iter::once(com1).chain((config.serial2 != SerialMode::Off).then_some(com2))
}

/// A device's interrupt: an eventfd it raises, connected to `gsi` as an irqfd. `what` names the
/// eventfd and `connect` the registration in errors.
fn interrupt_line(
    vm: &VmFd,
    gsi: u32,
    what: &'static str,
    connect: &'static str,
) -> Result<EventFdTrigger, VmError> {
    let interrupt = EventFdTrigger::new().map_err(|source| VmError::Resource { what, source })?;
    vm.register_irqfd(interrupt.event_fd(), gsi)
        .map_err(kvm_err(connect))?;
    Ok(interrupt)
}

impl Devices {
    /// The serial ports, i8042, ACPI power registers, GED and pvpanic, with their interrupts.
    fn new(vm: &VmFd, config: &VmConfig, exit: &Arc<ExitSignal>) -> Result<Self, VmError> {
        let mut io = IoManager::new();
        let mut serials = Vec::new();
        for (port, irq, mode, writer) in serial_ports(config) {
            let interrupt =
                interrupt_line(vm, irq, "a serial interrupt", "connect a serial interrupt")?;
            let serial = SerialPort::new(interrupt, mode, writer)?;
            register_pio(&mut io, port, SERIAL_PORT_SIZE, serial.uart.clone())?;
            serials.push(serial);
        }
        register_pio(
            &mut io,
            I8042_PORT,
            I8042_PORT_SIZE,
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
        )?;
        register_pio(
            &mut io,
            POWER_PORT,
            POWER_PORT_SIZE,
            Arc::new(Mutex::new(AcpiPower::new(exit.clone()))),
        )?;
        let ged_interrupt = interrupt_line(
            vm,
            GED_IRQ,
            "the GED interrupt",
            "connect the GED interrupt",
        )?;
        let ged = Arc::new(Ged::new(ged_interrupt));
        register_mmio(&mut io, GED_MMIO_START, GED_REGISTER_LEN, ged.clone())?;
        register_mmio(
            &mut io,
            u64::from(PVPANIC_MMIO_START),
            PVPANIC_REGISTER_LEN,
            Arc::new(PvPanic::new(exit.clone())),
        )?;
        Ok(Self { io, serials, ged })
    }
}

/// The memory-hotplug controller on the MMIO bus (when the VM has slots) and what the hotplug
/// side is built from.
fn hotplug_parts(
    config: &VmConfig,
    vm: &Arc<VmFd>,
    memory: GuestMemoryAtomic<GuestMemory>,
    first_kvm_slot: u32,
    io: &mut IoManager,
    ged: Arc<Ged>,
    pool: Option<Arc<PoolLink>>,
) -> Result<HotplugParts, VmError> {
    let changed = Arc::new(Condvar::new());
    let controller = Arc::new(Mutex::new(MemoryHotplugController::new(
        config.memory.slots,
        changed.clone(),
    )));
    if config.memory.slots > 0 {
        register_mmio(
            io,
            MEMORY_HOTPLUG_MMIO_START,
            HOTPLUG_REGISTERS_LEN,
            controller.clone(),
        )?;
    }
    Ok(HotplugParts {
        vm: vm.clone(),
        memory,
        first_kvm_slot,
        regions: hotplug_shares(config),
        // A hotpluggable node's boot memory is counted with its DIMMs.
        node_boot: config
            .nodes
            .iter()
            .map(|node| if node.hotpluggable { 0 } else { node.memory })
            .collect(),
        backends: config.nodes.iter().map(|node| node.backend).collect(),
        host: HostMemory::open(),
        controller,
        changed,
        ged,
        timeout: config.hotplug_timeout,
        pool,
    })
}

/// The vCPUs, each with its CPUID, MSRs, FPU and local APIC; the boot processor also with the
/// registers that start it at `entry` (the others wait for INIT/SIPI from it).
fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    config: &VmConfig,
    entry: BootEntry,
) -> Result<Vec<VcpuFd>, VmError> {
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("report its supported CPUID"))?;
    let topology = Topology { cpus: config.cpus };
    (0..config.cpus)
        .map(|index| {
            let vcpu = vm
                .create_vcpu(u64::from(index))
                .map_err(kvm_err("create a vCPU"))?;
            let setup = |vcpu: &VcpuFd| -> Result<(), cpu::regs::RegsError> {
                vcpu.set_cpuid2(&cpu::build_cpuid(&supported, index, topology))
                    .map_err(|source| cpu::regs::RegsError::Kvm {
                        what: "CPUID",
                        source,
                    })?;
                cpu::setup_msrs(vcpu)?;
                cpu::setup_fpu(vcpu)?;
                cpu::setup_lapic(vcpu)?;
                if index == 0 {
                    cpu::setup_boot_registers(vcpu, entry)?;
                }
                Ok(())
            };
            setup(&vcpu).map_err(|source| VmError::VcpuSetup { index, source })?;
            Ok(vcpu)
        })
        .collect()
}

fn register_mmio(
    io: &mut IoManager,
    base: u64,
    size: u64,
    device: Arc<dyn DeviceMmio + Send + Sync>,
) -> Result<(), VmError> {
    let bus_err = |source| VmError::MmioBus { base, source };
    let range = MmioRange::new(MmioAddress(base), size).map_err(bus_err)?;
    io.register_mmio(range, device).map_err(bus_err)
}

fn register_pio(
    io: &mut IoManager,
    port: u16,
    size: u16,
    device: Arc<dyn DevicePio + Send + Sync>,
) -> Result<(), VmError> {
    let range =
        PioRange::new(PioAddress(port), size).map_err(|source| VmError::Bus { port, source })?;
    io.register_pio(range, device)
        .map_err(|source| VmError::Bus { port, source })
}

/// Wakes the VMM's event loop when the exit eventfd fires; the reason stays in the signal.
struct ExitWatcher(Arc<ExitSignal>);

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.event_fd().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.event_fd(), EventSet::IN)) {
            log::error!("cannot watch the exit event: {e:?}");
        }
    }
}

/// Retires the DIMMs the guest ejected (their KVM slots deleted, their memory unmapped) when a
/// vCPU thread says there are some: the main thread does it, so that vCPUs do not.
struct Retirer(Arc<MemoryHotplug>);

impl MutEventSubscriber for Retirer {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.0.retire_ejected();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.retire_event(), EventSet::IN)) {
            // The hotplug calls retire them too; only a guest's own late eject waits longer.
            log::error!("cannot watch for ejected DIMMs: {e:?}");
        }
    }
}

/// Takes the stop signals from their signalfd; the first one is why the VM stops.
struct SignalWatcher {
    signals: StopSignals,
    received: Arc<OnceLock<StopSignal>>,
}

impl MutEventSubscriber for SignalWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        while let Some(signal) = self.signals.take() {
            let _ = self.received.set(signal);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.signals, EventSet::IN)) {
            // Blocked and unwatched, they would be ignored: let them end Tidal at once instead.
            log::error!(
                "cannot watch for SIGTERM, SIGINT and SIGHUP ({e:?}); they end Tidal at once"
            );
            if let Err(e) = crate::signals::unblock_stop_signals() {
                log::error!("{e}");
            }
        }
    }
}

/// Runs the event loop until a device or vCPU asks the VM to end or a stop signal arrives,
/// and says why in the log.
fn wait_for_exit(
    exit: &Arc<ExitSignal>,
    signals: StopSignals,
    hotplug: &Arc<MemoryHotplug>,
) -> Result<VmExit, VmError> {
    let mut events: EventManager<Box<dyn MutEventSubscriber + Send>> =
        EventManager::new().map_err(VmError::EventLoop)?;
    events.add_subscriber(Box::new(ExitWatcher(exit.clone())));
    events.add_subscriber(Box::new(Retirer(hotplug.clone())));
    let received = Arc::new(OnceLock::new());
    events.add_subscriber(Box::new(SignalWatcher {
        signals,
        received: received.clone(),
    }));
    let why = loop {
        events.run().map_err(VmError::EventLoop)?;
        if let Some(reason) = exit.reason() {
            break VmExit::Ended(reason);
        }
        if let Some(&signal) = received.get() {
            break VmExit::Signal(signal);
        }
    };
    match why {
        VmExit::Signal(signal) => log::warn!("received {}; stopping the VM", signal.name()),
        VmExit::Ended(ExitReason::GuestPanicked) => {
            log::error!("the guest kernel panicked; stopping the VM");
        }
        VmExit::Ended(ExitReason::Shutdown) => {
            log::info!("shutdown requested through the API; stopping the VM");
        }
        VmExit::Ended(ExitReason::InternalError) => {
            log::error!("stopping the VM after an internal error");
        }
        _ => {}
    }
    if let VmExit::Ended(
        ExitReason::Reset
        | ExitReason::Failed
        | ExitReason::InternalError
        | ExitReason::GuestPanicked,
    ) = why
    {
        log::warn!("DIMMs when the VM ended: {}", hotplug.describe_dimms());
    }
    Ok(why)
}

/// Kicks every vCPU out of KVM_RUN until its thread ends; gives up after a while.
fn stop_vcpus(threads: Vec<JoinHandle<()>>) {
    const GIVE_UP: Duration = Duration::from_secs(2);
    let start = Instant::now();
    for thread in threads {
        while !thread.is_finished() && start.elapsed() < GIVE_UP {
            let _ = thread.kill(vcpu::kick_signal());
            std::thread::sleep(Duration::from_millis(1));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            log::warn!("a vCPU thread did not stop; exiting without it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_memory, SerialMode, VmConfig};

    /// The largest machine's tables still fit below the reset-vector area: most vCPUs, most
    /// slots, most NUMA nodes.
    #[test]
    fn largest_tables_fit() {
        let nodes = (0..8u8)
            .map(|id| {
                let cpus = format!("{}-{}", id * 32, (id * 32 + 31).min(253));
                let text = format!("id={id},cpus={cpus},memory=7680M,hotplug_size=64G");
                crate::numa::parse_node(&text).unwrap()
            })
            .collect();
        let config = VmConfig {
            kernel: PathBuf::from("/nonexistent"),
            initramfs: None,
            cmdline: String::new(),
            cpus: 254,
            memory: parse_memory("size=60G,hotplug_size=512G,slots=256")
                .unwrap()
                .0,
            nodes,
            serial: SerialMode::Off,
            serial2: SerialMode::Off,
            api_socket: None,
            pool: None,
            hotplug_timeout: std::time::Duration::from_secs(1),
            seccomp: crate::config::SeccompMode::On,
            user: None,
        };
        let tables = acpi_tables(&config).unwrap();
        let end = tables
            .tables
            .iter()
            .map(|t| t.address + t.bytes.len() as u64)
            .max()
            .unwrap();
        assert!(end <= ACPI_END, "tables end at {end:#x}");
    }
}
