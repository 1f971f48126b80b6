//! Seccomp filters: each of Tidal's threads may make only the system calls its job needs.
//!
//! Once the VM is set up (files opened, KVM objects created, memory mapped, the socket bound),
//! every thread confines itself with the filter of its kind before it does its work:
//!
//! | thread | filter | what it does |
//! |---|---|---|
//! | `main` | [`ThreadKind::Main`] | the event loop, then stopping the vCPUs and tearing down |
//! | `vcpuN` | [`ThreadKind::Vcpu`] | `KVM_RUN`, device emulation, a guest's DIMM eject |
//! | `api`, `api-vm-call` | [`ThreadKind::Api`] | the HTTP server and the hotplug calls it makes |
//! | `console-in` | [`ThreadKind::ConsoleIn`] | stdin to the UART |
//! | `console-out` | [`ThreadKind::ConsoleOut`] | the UART's output queue to stdout or a file |
//! | `pool` | [`ThreadKind::Pool`] | calls to the host memory pool's socket (`--pool`) |
//!
//! A system call outside the filter raises SIGSYS (`SECCOMP_RET_TRAP`). Its handler writes one
//! line naming the thread and the system call number to stderr and ends the process with exit
//! code [`SIGSYS_EXIT_CODE`] (159 = 128 + SIGSYS). `--seccomp off` turns the filters off.
//!
//! The lists come from running Tidal under `strace -f` (boot, every API call, hot-add, and a
//! stop), from reading what each thread's code calls, and from what Rust's standard library and
//! glibc do on their own (thread start and exit, `malloc`, sleeping, the logger). They are
//! x86_64 lists: glibc picks among several system calls for one function (`nanosleep` or
//! `clock_nanosleep`, `lstat`, `newfstatat` or `statx`), so each list allows every variant.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use thiserror::Error;

/// The exit code of a process stopped by a filter: 128 + SIGSYS, as a shell reports a process
/// killed by SIGSYS.
pub const SIGSYS_EXIT_CODE: i32 = 128 + libc::SIGSYS;

#[derive(Debug, Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter for {kind} threads: {source}")]
    Build {
        kind: ThreadKind,
        source: seccompiler::BackendError,
    },
    #[error("cannot install the {kind} seccomp filter in thread '{thread}': {source}")]
    Install {
        kind: ThreadKind,
        thread: String,
        source: seccompiler::Error,
    },
    #[error("cannot install the SIGSYS handler that reports seccomp violations: {0}")]
    Handler(vmm_sys_util::errno::Error),
    #[error("cannot set glibc's malloc arena limit (mallopt M_ARENA_MAX)")]
    ArenaLimit,
}

/// The kinds of threads Tidal runs, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Main,
    Vcpu,
    Api,
    ConsoleIn,
    ConsoleOut,
    Pool,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 6] = [
        Self::Main,
        Self::Vcpu,
        Self::Api,
        Self::ConsoleIn,
        Self::ConsoleOut,
        Self::Pool,
    ];
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Main => "main",
            Self::Vcpu => "vCPU",
            Self::Api => "API",
            Self::ConsoleIn => "console input",
            Self::ConsoleOut => "console output",
            Self::Pool => "pool",
        })
    }
}

// ioctl request numbers (the kernel's `_IOC(dir, 0xAE, nr, size)`), checked against their
// definitions by a test below.
/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = 0xae80;
/// `KVM_GET_REGS`: `_IOR(KVMIO, 0x81, struct kvm_regs)`.
pub const KVM_GET_REGS: u64 = 0x8090_ae81;
/// `KVM_GET_SREGS`: `_IOR(KVMIO, 0x83, struct kvm_sregs)`.
pub const KVM_GET_SREGS: u64 = 0x8138_ae83;
/// `KVM_GET_VCPU_EVENTS`: `_IOR(KVMIO, 0x9f, struct kvm_vcpu_events)`.
pub const KVM_GET_VCPU_EVENTS: u64 = 0x8040_ae9f;
/// `KVM_SET_USER_MEMORY_REGION`: `_IOW(KVMIO, 0x46, struct kvm_userspace_memory_region)`.
pub const KVM_SET_USER_MEMORY_REGION: u64 = 0x4020_ae46;

/// A non-negative C constant (a flag, a signal, an option) as a filter's argument value.
/// A negative one, which none of ours is, becomes a value no argument matches.
fn int(value: libc::c_int) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// What one system call may do: anything, or only what one of the rules matches.
enum Allowed {
    Always,
    If(Vec<SeccompRule>),
}

/// A filter's list while it is being put together.
#[derive(Default)]
struct Rules(BTreeMap<i64, Allowed>);

impl Rules {
    /// Allows these system calls whatever their arguments.
    fn allow(&mut self, syscalls: &[libc::c_long]) {
        for &syscall in syscalls {
            self.0.insert(syscall, Allowed::Always);
        }
    }

    /// Allows `syscall` when argument `arg` (an int or a 32-bit value) is one of `values`.
    fn allow_arg(
        &mut self,
        syscall: libc::c_long,
        arg: u8,
        values: &[u64],
    ) -> Result<(), seccompiler::BackendError> {
        for &value in values {
            let condition =
                SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)?;
            self.allow_rule(syscall, SeccompRule::new(vec![condition])?);
        }
        Ok(())
    }

    /// Allows `syscall` when none of `bits` is set in argument `arg`.
    fn allow_without_bits(
        &mut self,
        syscall: libc::c_long,
        arg: u8,
        bits: u64,
    ) -> Result<(), seccompiler::BackendError> {
        let condition = SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(bits),
            0,
        )?;
        self.allow_rule(syscall, SeccompRule::new(vec![condition])?);
        Ok(())
    }

    fn allow_rule(&mut self, syscall: libc::c_long, rule: SeccompRule) {
        match self
            .0
            .entry(syscall)
            .or_insert_with(|| Allowed::If(Vec::new()))
        {
            Allowed::Always => {}
            Allowed::If(rules) => rules.push(rule),
        }
    }

    fn compile(self, kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
        let build = |source| SeccompError::Build { kind, source };
        let rules = self
            .0
            .into_iter()
            .map(|(syscall, allowed)| match allowed {
                Allowed::Always => (syscall, Vec::new()),
                Allowed::If(rules) => (syscall, rules),
            })
            .collect();
        SeccompFilter::new(
            rules,
            SeccompAction::Trap,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
        .and_then(BpfProgram::try_from)
        .map_err(build)
    }
}

/// The futex operations locks, condition variables, thread parking and `pthread_join` use:
/// wait and wake, plain or with a bitset, each private or shared, with either clock. Not the
/// requeue and priority-inheritance operations, the kernel's most troubled futex code.
const FUTEX_OPS: [libc::c_int; 4] = [
    libc::FUTEX_WAIT,
    libc::FUTEX_WAKE,
    libc::FUTEX_WAIT_BITSET,
    libc::FUTEX_WAKE_BITSET,
];

/// Allows `futex` with one of [`FUTEX_OPS`] and any of its two option flags.
fn allow_futex(rules: &mut Rules) -> Result<(), seccompiler::BackendError> {
    let flags = [
        0,
        libc::FUTEX_PRIVATE_FLAG,
        libc::FUTEX_CLOCK_REALTIME,
        libc::FUTEX_PRIVATE_FLAG | libc::FUTEX_CLOCK_REALTIME,
    ];
    let ops: Vec<u64> = FUTEX_OPS
        .iter()
        .flat_map(|&op| flags.iter().map(move |&flag| int(op | flag)))
        .collect();
    rules.allow_arg(libc::SYS_futex, 1, &ops)
}

/// What any thread needs once it runs: memory (`malloc`, thread stacks; never executable),
/// locks, signals returning, time and sleep, thread exit, abort, and log lines on stderr.
fn common(rules: &mut Rules) -> Result<(), seccompiler::BackendError> {
    use libc::*;
    rules.allow(&[
        SYS_brk,
        SYS_munmap,
        SYS_sched_yield,
        SYS_rt_sigreturn,
        SYS_rt_sigprocmask,
        SYS_sigaltstack,
        // A sleep or futex wait interrupted by a signal (the vCPU kick) resumes through this.
        SYS_restart_syscall,
        // The vDSO answers these without a system call, unless the clock source does not let it.
        SYS_clock_gettime,
        SYS_gettimeofday,
        SYS_time,
        SYS_nanosleep,
        SYS_clock_nanosleep,
        // Hash maps' random keys, once per thread.
        SYS_getrandom,
        SYS_gettid,
        SYS_getpid,
        // The panic message: Rust's standard library shortens source paths against it.
        SYS_getcwd,
        // Log lines, the serial output, eventfd signals.
        SYS_write,
        SYS_writev,
        SYS_exit,
        SYS_exit_group,
    ]);
    rules.allow_without_bits(SYS_mmap, 2, int(PROT_EXEC))?;
    rules.allow_without_bits(SYS_mprotect, 2, int(PROT_EXEC))?;
    // realloc of a large block moves its mapping, never onto an address of its choosing.
    rules.allow_without_bits(SYS_mremap, 3, int(MREMAP_FIXED | MREMAP_DONTUNMAP))?;
    // malloc gives freed memory back; nothing else of madvise's (the API threads' DIMM advice
    // aside) is any thread's business.
    rules.allow_arg(SYS_madvise, 2, &[int(MADV_DONTNEED)])?;
    allow_futex(rules)?;
    // Debug builds of Rust's standard library check that a descriptor is open before they
    // close it.
    rules.allow_arg(SYS_fcntl, 1, &[int(F_GETFD)])?;
    // Whether stderr is a terminal: the logger asks before each line it colours.
    rules.allow_arg(SYS_ioctl, 1, &[TCGETS])?;
    // abort() (a panic while panicking) raises SIGABRT in its own thread; a crash is left to
    // the default action of SIGSEGV or SIGBUS once Rust's handler has put it back.
    rules.allow_arg(SYS_tgkill, 2, &[int(SIGABRT)])?;
    rules.allow_arg(SYS_tkill, 1, &[int(SIGABRT)])?;
    rules.allow_arg(
        SYS_rt_sigaction,
        0,
        &[int(SIGABRT), int(SIGSEGV), int(SIGBUS)],
    )?;
    Ok(())
}

/// An event loop on epoll, the main thread's and tokio's: glibc may wait with any variant.
const EVENT_LOOP: [libc::c_long; 5] = [
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
];

/// The main thread after it started the others: the event loop (epoll on eventfds and the
/// stop signals' signalfd), kicking the vCPUs out of `KVM_RUN` and joining them, stopping the
/// API server (which removes its socket file), deleting the KVM memory slots before unmapping
/// the memory they map (of the DIMMs the guest ejects, and of all at the end), and closing KVM.
fn main_rules(rules: &mut Rules, kick_signal: i32) -> Result<(), seccompiler::BackendError> {
    use libc::*;
    rules.allow(&EVENT_LOOP);
    rules.allow(&[
        SYS_eventfd2,
        SYS_signalfd4,
        SYS_read,
        SYS_close,
        // The API socket file: checked to still be ours, then removed.
        SYS_statx,
        SYS_newfstatat,
        SYS_lstat,
        SYS_stat,
        SYS_fstat,
        SYS_unlink,
        SYS_unlinkat,
    ]);
    rules.allow_arg(SYS_ioctl, 1, &[KVM_SET_USER_MEMORY_REGION])?;
    let kick = int(kick_signal);
    rules.allow_arg(SYS_tgkill, 2, &[kick])?;
    rules.allow_arg(SYS_tkill, 1, &[kick])?;
    Ok(())
}

/// A vCPU: `KVM_RUN`, the registers for the triple-fault report, and what device emulation
/// does. A guest's `_EJ0` ends in this thread, which only detaches the DIMM: the main thread
/// deletes its KVM slot and unmaps it. The vCPU's file is closed when its thread ends.
fn vcpu_rules(rules: &mut Rules) -> Result<(), seccompiler::BackendError> {
    use libc::*;
    rules.allow(&[SYS_close]);
    rules.allow_arg(
        SYS_ioctl,
        1,
        &[KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, KVM_GET_VCPU_EVENTS],
    )?;
    Ok(())
}

/// The API server (tokio and hyper on a Unix socket) and its blocking-pool threads, which
/// plug DIMMs (memfd, mmap, `mbind`, `madvise`, `KVM_SET_USER_MEMORY_REGION`) and wait for the
/// guest. The `api` thread starts the pool's threads, which install the filter again at their
/// start.
fn api_rules(rules: &mut Rules) -> Result<(), seccompiler::BackendError> {
    use libc::*;
    rules.allow(&EVENT_LOOP);
    rules.allow(&[
        SYS_accept4,
        SYS_accept,
        SYS_read,
        SYS_readv,
        // The host's free memory, before a DIMM is added: files opened at start, re-read.
        SYS_pread64,
        // A DIMM's memory backend: a memfd (shared or huge pages), bound to a host node.
        SYS_memfd_create,
        SYS_ftruncate,
        SYS_mbind,
        // How much of a DIMM is resident, to pick what a shrink removes.
        SYS_mincore,
        SYS_recvfrom,
        SYS_recvmsg,
        SYS_sendto,
        SYS_sendmsg,
        SYS_shutdown,
        SYS_close,
        SYS_getsockopt,
        SYS_getsockname,
        SYS_getpeername,
        // Starting a thread (see `clone3_unsupported`): glibc's pthread_create and the new
        // thread's own setup.
        SYS_clone3,
        SYS_set_robust_list,
        SYS_rseq,
        SYS_sched_getaffinity,
    ]);
    rules.allow_arg(SYS_ioctl, 1, &[KVM_SET_USER_MEMORY_REGION])?;
    // A DIMM's memory: huge pages where the host's THP mode asks for advice, then prefaulted.
    rules.allow_arg(
        SYS_madvise,
        2,
        &[int(MADV_HUGEPAGE), int(MADV_POPULATE_WRITE)],
    )?;
    // A thread, never a process: clone only with CLONE_THREAD set.
    rules.allow_rule(
        SYS_clone,
        SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(int(CLONE_THREAD)),
            int(CLONE_THREAD),
        )?])?,
    );
    // A new thread names itself, then confines itself (a filter can only add restrictions).
    rules.allow_arg(SYS_prctl, 0, &[int(PR_SET_NAME), int(PR_SET_NO_NEW_PRIVS)])?;
    rules.allow_arg(SYS_seccomp, 0, &[u64::from(SECCOMP_SET_MODE_FILTER)])?;
    Ok(())
}

/// The pool thread: one HTTP exchange on a new Unix socket connection to the pool per call,
/// each on a runtime of its own (an epoll instance and an eventfd to wake it).
fn pool_rules(rules: &mut Rules) -> Result<(), seccompiler::BackendError> {
    use libc::*;
    rules.allow(&EVENT_LOOP);
    rules.allow(&[
        SYS_eventfd2,
        SYS_connect,
        SYS_getsockopt,
        SYS_read,
        SYS_readv,
        SYS_recvfrom,
        SYS_recvmsg,
        SYS_sendto,
        SYS_sendmsg,
        SYS_shutdown,
        SYS_close,
    ]);
    rules.allow_arg(SYS_socket, 0, &[int(AF_UNIX)])?;
    // Each call's tokio runtime hands its I/O driver a duplicate of its epoll descriptor.
    rules.allow_arg(SYS_fcntl, 1, &[int(F_DUPFD_CLOEXEC)])?;
    Ok(())
}

/// The console input thread: waits for and reads stdin (descriptor 0 only), sleeps while the
/// UART's FIFO is full, and raises the serial interrupt.
fn console_in_rules(rules: &mut Rules) -> Result<(), seccompiler::BackendError> {
    rules.allow_arg(libc::SYS_read, 0, &[0])?;
    rules.allow(&[libc::SYS_poll, libc::SYS_ppoll]);
    Ok(())
}

/// For the threads that start threads: `clone3` fails with ENOSYS, so glibc falls back to
/// `clone`, whose flags a filter can check (`clone3` has them in memory, out of a filter's
/// reach). A filter of its own, because a filter gives one answer to every call it lists; the
/// kernel takes the strictest answer of a thread's filters, and this error beats an allow.
fn clone3_unsupported() -> Result<BpfProgram, SeccompError> {
    SeccompFilter::new(
        [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS.unsigned_abs()),
        TargetArch::x86_64,
    )
    .and_then(BpfProgram::try_from)
    .map_err(|source| SeccompError::Build {
        kind: ThreadKind::Api,
        source,
    })
}

/// Builds the BPF program for threads of `kind`.
pub fn filter(kind: ThreadKind) -> Result<BpfProgram, SeccompError> {
    let mut rules = Rules::default();
    let build = |source| SeccompError::Build { kind, source };
    common(&mut rules).map_err(build)?;
    match kind {
        ThreadKind::Main => main_rules(&mut rules, crate::signals::kick_signal()),
        ThreadKind::Vcpu => vcpu_rules(&mut rules),
        ThreadKind::Api => api_rules(&mut rules),
        ThreadKind::ConsoleIn => console_in_rules(&mut rules),
        ThreadKind::ConsoleOut => {
            // A `--serial file=` that is full starts again from empty.
            rules.allow(&[libc::SYS_ftruncate, libc::SYS_lseek]);
            Ok(())
        }
        ThreadKind::Pool => pool_rules(&mut rules),
    }
    .map_err(build)?;
    rules.compile(kind)
}

/// A compiled filter, shared by the threads that install it.
#[derive(Clone)]
pub struct ThreadFilter {
    kind: ThreadKind,
    /// The filter itself, and for the API threads [`clone3_unsupported`] first.
    programs: Arc<Vec<BpfProgram>>,
}

impl ThreadFilter {
    pub fn new(kind: ThreadKind) -> Result<Self, SeccompError> {
        let mut programs = Vec::new();
        if kind == ThreadKind::Api {
            programs.push(clone3_unsupported()?);
        }
        programs.push(filter(kind)?);
        Ok(Self {
            kind,
            programs: Arc::new(programs),
        })
    }

    /// Confines the calling thread for the rest of its life (and the threads it starts).
    pub fn apply(&self) -> Result<(), SeccompError> {
        remember_thread_name();
        self.programs.iter().try_for_each(|program| {
            seccompiler::apply_filter(program).map_err(|source| SeccompError::Install {
                kind: self.kind,
                thread: std::thread::current().name().unwrap_or("?").to_owned(),
                source,
            })
        })
    }

    /// Confines the calling thread, or ends the process: for threads that cannot hand an error
    /// back, and must not run unconfined.
    pub fn apply_or_exit(&self) {
        if let Err(e) = self.apply() {
            eprintln!("tidal: error: {e}");
            std::process::exit(1);
        }
    }
}

/// Every thread's filter, compiled before any thread starts.
#[derive(Clone)]
pub struct Filters {
    pub main: ThreadFilter,
    pub vcpu: ThreadFilter,
    pub api: ThreadFilter,
    pub console_in: ThreadFilter,
    pub console_out: ThreadFilter,
    pub pool: ThreadFilter,
}

impl Filters {
    pub fn new() -> Result<Self, SeccompError> {
        Ok(Self {
            main: ThreadFilter::new(ThreadKind::Main)?,
            vcpu: ThreadFilter::new(ThreadKind::Vcpu)?,
            api: ThreadFilter::new(ThreadKind::Api)?,
            console_in: ThreadFilter::new(ThreadKind::ConsoleIn)?,
            console_out: ThreadFilter::new(ThreadKind::ConsoleOut)?,
            pool: ThreadFilter::new(ThreadKind::Pool)?,
        })
    }
}

/// The longest thread name the SIGSYS report shows.
const NAME_LEN: usize = 32;

thread_local! {
    /// This thread's name, copied where the SIGSYS handler can read it without allocating.
    static THREAD_NAME: Cell<([u8; NAME_LEN], usize)> = const { Cell::new(([0; NAME_LEN], 0)) };
}

fn remember_thread_name() {
    let current = std::thread::current();
    let name = current.name().unwrap_or("unnamed").as_bytes();
    let len = name.len().min(NAME_LEN);
    let mut copy = [0; NAME_LEN];
    copy[..len].copy_from_slice(&name[..len]);
    THREAD_NAME.with(|cell| cell.set((copy, len)));
}

/// The start of the kernel's `siginfo_t` for SIGSYS (`_sigsys` in `asm-generic/siginfo.h`),
/// which the libc crate does not describe.
#[repr(C)]
struct SigsysInfo {
    _signo: libc::c_int,
    _errno: libc::c_int,
    _code: libc::c_int,
    _pad: libc::c_int,
    _call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    _arch: libc::c_uint,
}

/// A line built without allocating, for the signal handler.
struct Line {
    bytes: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, text: &[u8]) {
        for &byte in text {
            if let Some(slot) = self.bytes.get_mut(self.len) {
                *slot = byte;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, number: i64) {
        if number < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut rest = number.unsigned_abs();
        let mut start = digits.len();
        loop {
            start -= 1;
            // A decimal digit: `rest % 10` is below 10.
            digits[start] = b'0' + u8::try_from(rest % 10).unwrap_or(0);
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        self.push(&digits[start..]);
    }
}

/// The report of a forbidden system call: one line, then the process ends. Only
/// async-signal-safe work: no allocation, no locks, `write` and `_exit` (both allowed by
/// every filter).
extern "C" fn on_sigsys(_signo: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let syscall = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo_t (128 bytes) to an SA_SIGINFO handler; for
        // SIGSYS its start has the `SigsysInfo` layout, which is smaller.
        i64::from(unsafe { (*info.cast::<SigsysInfo>()).syscall })
    };
    let (name, len) = THREAD_NAME
        .try_with(Cell::get)
        .unwrap_or(([0; NAME_LEN], 0));
    let mut line = Line {
        bytes: [0; 256],
        len: 0,
    };
    line.push(b"tidal: error: seccomp: thread '");
    line.push(name.get(..len).unwrap_or_default());
    line.push(b"' made system call ");
    line.push_number(syscall);
    line.push(b", which its filter does not allow; exiting with code ");
    line.push_number(i64::from(SIGSYS_EXIT_CODE));
    line.push(b" (--seccomp off disables the filters)\n");
    // SAFETY: writes bytes from a live buffer to stderr, then ends the process: both are
    // async-signal-safe, and nothing runs after _exit.
    unsafe {
        libc::write(2, line.bytes.as_ptr().cast(), line.len);
        libc::_exit(SIGSYS_EXIT_CODE);
    }
}

/// Takes away a file glibc would otherwise read later, under a filter. Call it before the first
/// filter is installed.
///
/// glibc's malloc gives each new thread an arena of its own, up to 8, and when a ninth is
/// wanted it reads `/sys/devices/system/cpu/online` (`openat`, allowed in no filter) to cap them
/// at 8 per CPU, in whichever thread gets there first: with 4 vCPUs and a few API calls in
/// flight, a vCPU or API thread, which then dies (seen in the test host as `thread '' made
/// system call 257`: a new API thread allocates before it names itself). Setting the same cap
/// now, with `mallopt(M_ARENA_MAX)`, means glibc never looks.
pub fn fix_malloc_arena_limit() -> Result<(), SeccompError> {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let arenas = libc::c_int::try_from(cpus.saturating_mul(8)).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt changes a malloc tunable; it touches no memory of ours.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) } == 1 {
        Ok(())
    } else {
        Err(SeccompError::ArenaLimit)
    }
}

/// Installs the SIGSYS handler that reports a forbidden system call. Process-wide: call it
/// before the first filter is installed.
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
        .map_err(SeccompError::Handler)
}

#[cfg(test)]
mod tests {
    use kvm_bindings::{kvm_regs, kvm_sregs, kvm_userspace_memory_region, kvm_vcpu_events, KVMIO};
    use vmm_sys_util::ioctl::{ioctl_expr, _IOC_NONE, _IOC_READ, _IOC_WRITE};

    use super::*;

    fn size<T>() -> u32 {
        u32::try_from(std::mem::size_of::<T>()).unwrap()
    }

    #[test]
    fn ioctl_numbers_match_their_definitions() {
        assert_eq!(KVM_RUN, ioctl_expr(_IOC_NONE, KVMIO, 0x80, 0));
        let read = |nr, size| ioctl_expr(_IOC_READ, KVMIO, nr, size);
        assert_eq!(KVM_GET_REGS, read(0x81, size::<kvm_regs>()));
        assert_eq!(KVM_GET_SREGS, read(0x83, size::<kvm_sregs>()));
        assert_eq!(KVM_GET_VCPU_EVENTS, read(0x9f, size::<kvm_vcpu_events>()));
        assert_eq!(
            KVM_SET_USER_MEMORY_REGION,
            ioctl_expr(
                _IOC_WRITE,
                KVMIO,
                0x46,
                size::<kvm_userspace_memory_region>()
            )
        );
    }

    #[test]
    fn every_filter_compiles() {
        for kind in ThreadKind::ALL {
            let program = filter(kind).unwrap();
            // The kernel takes at most 4096 instructions per filter.
            assert!(
                !program.is_empty() && program.len() < 4096,
                "{kind}: {} instructions",
                program.len()
            );
        }
    }

    /// Every thread logs, and the logger asks whether stderr is a terminal first: a filter that
    /// refused that would end Tidal (SIGSYS, here the test process) at a thread's first log line
    /// whenever stderr is a terminal.
    #[test]
    fn every_thread_may_ask_whether_stderr_is_a_terminal() {
        for kind in ThreadKind::ALL {
            let program = filter(kind).unwrap();
            let asked = std::thread::spawn(move || {
                seccompiler::apply_filter(&program).unwrap();
                // SAFETY: isatty only reads the descriptor's terminal attributes.
                unsafe { libc::isatty(libc::STDERR_FILENO) };
            })
            .join();
            assert!(asked.is_ok(), "{kind}");
        }
    }

    #[test]
    fn an_argument_rule_does_not_narrow_an_unconditional_one() {
        let mut rules = Rules::default();
        rules.allow(&[libc::SYS_tgkill]);
        rules.allow_arg(libc::SYS_tgkill, 2, &[6]).unwrap();
        assert!(matches!(rules.0[&libc::SYS_tgkill], Allowed::Always));
    }

    #[test]
    fn report_numbers() {
        let mut line = Line {
            bytes: [0; 256],
            len: 0,
        };
        for number in [0, 7, 41, 435, -1, i64::MIN] {
            line.push_number(number);
            line.push(b" ");
        }
        assert_eq!(
            std::str::from_utf8(&line.bytes[..line.len]).unwrap(),
            "0 7 41 435 -1 -9223372036854775808 "
        );
    }
}
