//! A vCPU on its own thread: KVM_RUN in a loop, port and MMIO exits dispatched to the device
//! bus, guest shutdowns and failures turned into VM exit requests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};
use thiserror::Error;
use tidal_devices::repeats::Repeats;
use tidal_devices::{ExitReason, ExitSignal};
use vm_device::bus::{MmioAddress, PioAddress};
use vm_device::device_manager::{IoManager, MmioManager, PioManager};
use vmm_sys_util::signal::register_signal_handler;

use crate::seccomp::ThreadFilter;

#[derive(Debug, Error)]
pub enum VcpuError {
    #[error("cannot start the thread for vCPU {index}: {source}")]
    Spawn { index: u8, source: std::io::Error },
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
}

pub use crate::signals::kick_signal;

/// KVM_RUN returns EINTR when the kick arrives; the handler itself has nothing to do.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    extern "C" fn noop(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    register_signal_handler(kick_signal(), noop).map_err(VcpuError::Signal)
}

/// What a vCPU thread shares with the rest of the VMM.
#[derive(Clone)]
pub struct VcpuContext {
    pub io: Arc<IoManager>,
    pub exit: Arc<ExitSignal>,
    pub stop: Arc<AtomicBool>,
    /// The filter each vCPU thread installs before its first KVM_RUN (`--seccomp on`).
    pub seccomp: Option<ThreadFilter>,
}

pub fn spawn(index: u8, mut vcpu: VcpuFd, ctx: VcpuContext) -> Result<JoinHandle<()>, VcpuError> {
    std::thread::Builder::new()
        .name(format!("vcpu{index}"))
        .spawn(move || {
            if let Some(filter) = &ctx.seccomp {
                if let Err(e) = filter.apply() {
                    log::error!("vCPU {index}: {e}");
                    ctx.exit.request(ExitReason::Failed);
                    return;
                }
            }
            run(index, &mut vcpu, &ctx)
        })
        .map_err(|source| VcpuError::Spawn { index, source })
}

fn run(index: u8, vcpu: &mut VcpuFd, ctx: &VcpuContext) {
    while !ctx.stop.load(Ordering::Acquire) {
        match vcpu.run() {
            Ok(exit) => {
                let triple_fault = matches!(exit, VcpuExit::Shutdown);
                if let Some(reason) = handle_exit(index, exit, &ctx.io) {
                    if triple_fault {
                        log::warn!(
                            "vCPU {index}: triple fault ({}); treating it as a reset",
                            FaultState(vcpu)
                        );
                    }
                    ctx.exit.request(reason);
                    return;
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => {
                log::error!("vCPU {index}: KVM_RUN failed: {e}");
                ctx.exit.request(ExitReason::Failed);
                return;
            }
        }
    }
}

/// Guest accesses of physical addresses that neither RAM nor a device backs: reads get all
/// ones, writes go nowhere. A healthy guest makes none, so each is worth a line (as their count
/// doubles): one could be a guest touching memory the host took away.
static UNBACKED_ACCESSES: Repeats = Repeats::new();

fn unbacked(index: u8, what: &str, addr: u64, len: usize) {
    if let Some(times) = UNBACKED_ACCESSES.count() {
        log::warn!(
            "vCPU {index}: guest {what} {len} bytes at {addr:#x}, which nothing backs ({times})"
        );
    }
}

/// Returns why the VM must end, if this exit says so.
fn handle_exit(index: u8, exit: VcpuExit, io: &IoManager) -> Option<ExitReason> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if io.pio_read(PioAddress(port), data).is_err() {
                data.fill(0xff);
            }
        }
        VcpuExit::IoOut(port, data) => {
            let _ = io.pio_write(PioAddress(port), data);
        }
        VcpuExit::MmioRead(addr, data) => {
            if io.mmio_read(MmioAddress(addr), data).is_err() {
                unbacked(index, "read", addr, data.len());
                data.fill(0xff);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if io.mmio_write(MmioAddress(addr), data).is_err() {
                unbacked(index, "wrote", addr, data.len());
            }
        }
        VcpuExit::Hlt => {}
        VcpuExit::Shutdown => return Some(ExitReason::Reset),
        VcpuExit::SystemEvent(kind, _) => {
            return Some(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                KVM_SYSTEM_EVENT_CRASH => ExitReason::Failed,
                other => {
                    log::error!("vCPU {index}: unknown system event {other}");
                    ExitReason::Failed
                }
            });
        }
        VcpuExit::FailEntry(reason, cpu) => {
            log::error!("vCPU {index}: VM entry failed (reason {reason:#x}, cpu {cpu})");
            return Some(ExitReason::Failed);
        }
        VcpuExit::InternalError => {
            log::error!("vCPU {index}: KVM internal error");
            return Some(ExitReason::Failed);
        }
        other => log::debug!("vCPU {index}: ignored exit {other:?}"),
    }
    None
}

/// The registers that tell where a guest was when it triple-faulted, for the log: the kernel's
/// own panic output never gets written when the CPU resets under it. KVM on AMD resets the vCPU
/// before it reports the shutdown, so there only the reset state is left to show.
struct FaultState<'a>(&'a VcpuFd);

/// CR0 and RIP of an x86 CPU fresh out of reset.
const RESET_CR0: u64 = 0x10;
const RESET_RIP: u64 = 0xfff0;

impl std::fmt::Display for FaultState<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (Ok(regs), Ok(sregs)) = (self.0.get_regs(), self.0.get_sregs()) else {
            return write!(f, "registers unreadable");
        };
        if sregs.cr0 == RESET_CR0 && regs.rip == RESET_RIP {
            return write!(f, "registers already reset by KVM");
        }
        write!(
            f,
            "rip {:#x} rsp {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x}",
            regs.rip, regs.rsp, sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.efer
        )?;
        if let Ok(events) = self.0.get_vcpu_events() {
            let exception = events.exception;
            write!(
                f,
                " exception {} (injected {}, pending {}, error code {:#x})",
                exception.nr, exception.injected, exception.pending, exception.error_code
            )?;
        }
        Ok(())
    }
}
