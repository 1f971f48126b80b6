//! The seccomp filters against the code that runs under them. A forbidden system call ends the
//! whole process, so every case runs in a child process (this test binary again, running only
//! [`case_in_child_process`] with the case in `TIDAL_SECCOMP_CASE`), and the parent checks the
//! child's exit code and stderr.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::Kvm;
use tidal_acpi::memory_hotplug_layout::{control, CONTROL, OST_EVENT, OST_STATUS, SELECTOR};
use tidal_api::{AddMemoryRequest, ApiClient, RemoveMemoryRequest, ResizeRequest};
use tidal_devices::ged::Ged;
use tidal_devices::memory_hotplug::{
    MemoryHotplugController, SlotState, OST_EVENT_DEVICE_CHECK, OST_SUCCESS,
};
use tidal_devices::serial::SerialConsole;
use tidal_devices::{EventFdTrigger, ExitReason, ExitSignal};
use tidal_vmm::control::VmHandle;
use tidal_vmm::hotplug::{HotplugParts, MemoryHotplug};
use tidal_vmm::memory::backend::{HugePageSize, MemoryBackend};
use tidal_vmm::memory::dimm_space::HotplugRegion;
use tidal_vmm::memory::host::HostMemory;
use tidal_vmm::memory::kvm_slot::KvmSlot;
use tidal_vmm::memory::ram::{GuestMemory, RamRegion};
use tidal_vmm::seccomp::{self, Filters, ThreadFilter, ThreadKind, SIGSYS_EXIT_CODE};
use tidal_vmm::{console, vcpu};
use vm_device::bus::{MmioAddress, PioAddress};
use vm_device::{MutDeviceMmio, MutDevicePio};
use vm_memory::{GuestAddress, GuestMemoryAtomic};
use vmm_sys_util::signal::Killable;

const CASE: &str = "TIDAL_SECCOMP_CASE";
const MIB: u64 = 1 << 20;

/// What a child process did.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `case` in a child process, with `stdin` as its standard input.
fn run_case(case: &str, stdin: &[u8]) -> Outcome {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["case_in_child_process", "--exact", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CASE, case)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin).unwrap();
    drop(pipe);
    let output = child.wait_with_output().unwrap();
    let outcome = Outcome {
        code: output.status.code().or(output.status.signal().map(|s| -s)),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    println!(
        "case {case}: exit {:?}\n--- stdout\n{}--- stderr\n{}",
        outcome.code, outcome.stdout, outcome.stderr
    );
    outcome
}

fn assert_stopped_for(outcome: &Outcome, thread: &str, syscall: libc::c_long) {
    assert_eq!(outcome.code, Some(SIGSYS_EXIT_CODE), "{}", outcome.stderr);
    let line = format!("tidal: error: seccomp: thread '{thread}' made system call {syscall},");
    assert!(
        outcome.stderr.lines().any(|l| l.starts_with(&line)),
        "no line starting {line:?} in stderr:\n{}",
        outcome.stderr
    );
}

fn assert_succeeded(outcome: &Outcome) {
    assert_eq!(outcome.code, Some(0), "{}", outcome.stderr);
    assert!(!outcome.stderr.contains("seccomp"), "{}", outcome.stderr);
    assert!(outcome.stdout.contains("1 passed"), "{}", outcome.stdout);
}

fn kind_name(kind: ThreadKind) -> &'static str {
    match kind {
        ThreadKind::Main => "main",
        ThreadKind::Vcpu => "vcpu",
        ThreadKind::Api => "api",
        ThreadKind::ConsoleIn => "console-in",
        ThreadKind::ConsoleOut => "console-out",
        ThreadKind::Pool => "pool",
    }
}

fn kind_from(name: &str) -> ThreadKind {
    ThreadKind::ALL
        .into_iter()
        .find(|&kind| kind_name(kind) == name)
        .unwrap()
}

// ------------------------------------------------------------------------------------------------
// The parent's side: one test per scenario

#[test]
fn a_thread_making_a_forbidden_system_call_stops_tidal_with_one_line() {
    for kind in ThreadKind::ALL {
        let outcome = run_case(&format!("socket {}", kind_name(kind)), b"");
        assert_stopped_for(&outcome, "probe", libc::SYS_socket);
        assert!(outcome.stderr.contains("--seccomp off"));
    }
}

#[test]
fn arguments_are_checked_too() {
    // An ioctl a vCPU never makes (KVM_CREATE_VM), executable memory, another descriptor.
    assert_stopped_for(&run_case("kvm-create-vm", b""), "probe", libc::SYS_ioctl);
    // A vCPU changes no memory slot: the main thread retires what the guest ejects.
    assert_stopped_for(&run_case("kvm-memory-slot", b""), "probe", libc::SYS_ioctl);
    assert_stopped_for(&run_case("exec-mapping", b""), "probe", libc::SYS_mmap);
    assert_stopped_for(&run_case("read-fd-3", b""), "probe", libc::SYS_read);
    // A priority-inheritance futex, advice for DIMM memory from a vCPU, a process from the API.
    assert_stopped_for(&run_case("futex-lock-pi", b""), "probe", libc::SYS_futex);
    assert_stopped_for(
        &run_case("madvise-hugepage", b""),
        "probe",
        libc::SYS_madvise,
    );
    assert_stopped_for(&run_case("fork", b""), "probe", libc::SYS_clone);
    // The API threads open no file: what they read was opened before they started.
    assert_stopped_for(&run_case("open-file", b""), "probe", libc::SYS_openat);
}

/// clone3 hides its flags from a filter: the API threads get ENOSYS for it, and glibc starts
/// their threads through clone, whose flags are checked.
#[test]
fn api_threads_start_threads_through_clone_only() {
    assert_succeeded(&run_case("clone3", b""));
}

#[test]
fn every_thread_kind_can_do_the_common_work() {
    for kind in ThreadKind::ALL {
        assert_succeeded(&run_case(&format!("common {}", kind_name(kind)), b""));
    }
}

/// Found in the test host: glibc reading the CPU count when a ninth malloc arena is wanted.
#[test]
fn many_threads_allocating_at_once_stay_within_the_filter() {
    assert_succeeded(&run_case("arenas", b""));
}

#[test]
fn the_console_thread_feeds_stdin_to_the_uart() {
    assert_succeeded(&run_case("console", &console_input()));
}

/// The VMM's threads as `Vm::run` starts them, each under its filter, through a hot-add and a
/// hot-remove: the API threads map DIMMs, a "guest" on a vCPU-filtered thread accepts and
/// ejects them through the controller's registers (unmapping them), and the main thread runs
/// the event loop, then stops the vCPU and the API server (removing the socket).
#[test]
fn the_vmm_threads_plug_and_unplug_memory_under_their_filters() {
    let outcome = run_case("vmm", b"");
    assert_succeeded(&outcome);
    if outcome.stdout.contains("SKIPPED") {
        eprintln!("skipped: no usable /dev/kvm here");
    } else {
        assert!(
            outcome.stdout.contains("guest says hello"),
            "{}",
            outcome.stdout
        );
    }
}

// ------------------------------------------------------------------------------------------------
// The child's side

#[test]
fn case_in_child_process() {
    let Ok(case) = std::env::var(CASE) else {
        return;
    };
    seccomp::install_sigsys_handler().unwrap();
    let words: Vec<&str> = case.split(' ').collect();
    match words[..] {
        ["socket", kind] => in_probe(kind_from(kind), || {
            // SAFETY: creates a socket (or is stopped first); nothing else is touched.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        }),
        ["kvm-create-vm"] => in_probe(ThreadKind::Vcpu, || {
            const KVM_CREATE_VM: libc::c_ulong = 0xae01;
            // SAFETY: an ioctl on a descriptor that does not exist touches no memory.
            unsafe { libc::ioctl(-1, KVM_CREATE_VM, 0) };
        }),
        ["kvm-memory-slot"] => in_probe(ThreadKind::Vcpu, || {
            let no_slot = kvm_bindings::kvm_userspace_memory_region::default();
            // SAFETY: an ioctl on a descriptor that does not exist, stopped before it runs.
            unsafe {
                libc::ioctl(
                    -1,
                    seccomp::KVM_SET_USER_MEMORY_REGION as libc::c_ulong,
                    &no_slot,
                )
            };
        }),
        ["exec-mapping"] => in_probe(ThreadKind::Vcpu, || {
            // SAFETY: asks for a fresh anonymous mapping; it is never used.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
        }),
        ["read-fd-3"] => in_probe(ThreadKind::ConsoleIn, || {
            let mut byte = [0u8; 1];
            // SAFETY: reads at most one byte into a live buffer.
            unsafe { libc::read(3, byte.as_mut_ptr().cast(), 1) };
        }),
        ["futex-lock-pi"] => in_probe(ThreadKind::Vcpu, || {
            let word = 0u32;
            // SAFETY: the futex word is a live local; the call is stopped before it runs.
            unsafe { libc::syscall(libc::SYS_futex, &word, libc::FUTEX_LOCK_PI, 0, 0, 0, 0) };
        }),
        ["madvise-hugepage"] => in_probe(ThreadKind::Vcpu, || {
            let mut page = vec![0u8; 4096];
            // SAFETY: advice on a live buffer; the call is stopped before it runs.
            unsafe { libc::madvise(page.as_mut_ptr().cast(), page.len(), libc::MADV_HUGEPAGE) };
        }),
        ["fork"] => in_probe(ThreadKind::Api, || {
            // SAFETY: stopped before a child exists.
            unsafe { libc::fork() };
        }),
        ["open-file"] => in_probe(ThreadKind::Api, || {
            let _ = std::fs::File::open("/proc/meminfo");
        }),
        ["clone3"] => in_probe(ThreadKind::Api, || {
            // SAFETY: clone3 with no arguments struct is refused before it reads one.
            let done = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0) };
            let error = std::io::Error::last_os_error().raw_os_error();
            assert_eq!((done, error), (-1, Some(libc::ENOSYS)));
            let thread = std::thread::spawn(|| 42);
            assert_eq!(thread.join().unwrap(), 42);
        }),
        ["common", kind] => in_probe(kind_from(kind), common_work),
        ["arenas"] => arenas_case(),
        ["console"] => console_case(),
        ["vmm"] => vmm_case(),
        _ => panic!("unknown case {case:?}"),
    }
    // Give detached threads time to finish exiting under their filters.
    std::thread::sleep(Duration::from_millis(100));
}

/// Runs `work` in a thread named `probe` confined by the filter of `kind`.
fn in_probe(kind: ThreadKind, work: impl FnOnce() + Send + 'static) {
    let filter = ThreadFilter::new(kind).unwrap();
    std::thread::Builder::new()
        .name("probe".into())
        .spawn(move || {
            filter.apply().unwrap();
            work();
        })
        .unwrap()
        .join()
        .unwrap();
}

/// What every thread does without thinking about it: allocate (small and large), lock and
/// wait, sleep, read the clock, hash, log, and finally exit.
fn common_work() {
    let small: Vec<u64> = (0..1000).collect();
    let mut large = vec![0u8; 64 << 20];
    large[12345] = 1;
    large.resize(128 << 20, 0);
    drop(large);
    let pair = Arc::new((Mutex::new(false), Condvar::new()));
    let (lock, cvar) = &*pair;
    let guard = lock.lock().unwrap();
    let _ = cvar.wait_timeout(guard, Duration::from_millis(5)).unwrap();
    std::thread::sleep(Duration::from_millis(2));
    let _ = std::time::SystemTime::now();
    let _ = Instant::now();
    let mut map = std::collections::HashMap::new();
    map.insert(small.len(), "entries");
    eprintln!("probe: {} {}", map[&1000], small.iter().sum::<u64>());
}

/// More threads allocating at once than glibc has malloc arenas before it looks up the CPU
/// count (8), all under the API filter, as a burst of API calls starts them.
fn arenas_case() {
    const THREADS: usize = 16;
    seccomp::fix_malloc_arena_limit().unwrap();
    let filter = ThreadFilter::new(ThreadKind::Api).unwrap();
    filter.apply().unwrap();
    let all_started = Arc::new(std::sync::Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let all_started = all_started.clone();
            std::thread::spawn(move || {
                let kept = vec![1u8; 4096];
                all_started.wait();
                kept.len()
            })
        })
        .collect();
    let total: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    eprintln!("arenas: {total}");
}

/// More than the UART's FIFO holds, so the reader has to wait for the guest.
fn console_input() -> Vec<u8> {
    (b'a'..=b'z').cycle().take(300).collect()
}

/// The console input thread as Tidal starts it, fed from the child's stdin.
fn console_case() {
    let filter = ThreadFilter::new(ThreadKind::ConsoleIn).unwrap();
    let serial = Arc::new(Mutex::new(SerialConsole::new(
        EventFdTrigger::new().unwrap(),
        Box::new(std::io::sink()),
    )));
    console::spawn_stdin_reader(serial.clone(), Some(filter)).unwrap();
    let mut received = Vec::new();
    let start = Instant::now();
    while received.len() < 300 && start.elapsed() < Duration::from_secs(10) {
        let mut uart = serial.lock().unwrap();
        let mut lsr = [0u8];
        uart.pio_read(PioAddress(0x3f8), 5, &mut lsr);
        if lsr[0] & 1 != 0 {
            let mut byte = [0u8];
            uart.pio_read(PioAddress(0x3f8), 0, &mut byte);
            received.push(byte[0]);
        } else {
            drop(uart);
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(received, console_input());
}

/// A guest that accepts every DIMM and ejects every DIMM it is asked to give back, through the
/// registers, as a vCPU's MMIO exits would; and says hello on the serial port first.
fn play_guest(
    controller: &Mutex<MemoryHotplugController>,
    serial: &Mutex<SerialConsole>,
    stop: &AtomicBool,
) {
    for &byte in b"guest says hello\n" {
        serial
            .lock()
            .unwrap()
            .pio_write(PioAddress(0x3f8), 0, &[byte]);
    }
    let base = MmioAddress(0);
    let write = |c: &mut MemoryHotplugController, offset, value: u32| {
        c.mmio_write(base, offset, &value.to_le_bytes());
    };
    while !stop.load(Ordering::Acquire) {
        {
            let mut c = controller.lock().unwrap();
            for slot in 0..c.slot_count() {
                match c.slot(slot).map(|view| view.state) {
                    Some(SlotState::Inserting) => {
                        write(&mut c, SELECTOR, slot);
                        write(&mut c, OST_EVENT, OST_EVENT_DEVICE_CHECK);
                        write(&mut c, OST_STATUS, OST_SUCCESS);
                    }
                    Some(SlotState::Removing) => {
                        write(&mut c, SELECTOR, slot);
                        write(&mut c, CONTROL, 1 << control::EJECT);
                    }
                    _ => {}
                }
            }
        }
        // Parked as a vCPU in KVM_RUN would be, until the kick or a while.
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Wakes the event loop when the exit eventfd fires.
struct ExitWatcher(Arc<ExitSignal>);

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.event_fd().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        ops.add(Events::new(self.0.event_fd(), EventSet::IN))
            .unwrap();
    }
}

fn vmm_case() {
    let Ok(kvm) = Kvm::new() else {
        println!("SKIPPED: no usable /dev/kvm");
        return;
    };
    vcpu::install_kick_handler().unwrap();
    let filters = Filters::new().unwrap();
    let vm = Arc::new(kvm.create_vm().unwrap());
    let boot = RamRegion::new(GuestAddress(0), 2 << 20, &MemoryBackend::default()).unwrap();
    let boot = Arc::new(boot);
    let _boot_slot = KvmSlot::new(vm.clone(), 0, boot.clone()).unwrap();
    let memory = GuestMemoryAtomic::new(GuestMemory::from_arc_regions(vec![boot]).unwrap());
    let changed = Arc::new(Condvar::new());
    let controller = Arc::new(Mutex::new(MemoryHotplugController::new(4, changed.clone())));
    let hotplug = Arc::new(
        MemoryHotplug::new(HotplugParts {
            vm,
            memory,
            first_kvm_slot: 1,
            regions: vec![
                Some(HotplugRegion {
                    base: 1 << 32,
                    size: 1 << 30,
                }),
                // Room for a DIMM beyond any pool of huge pages a test machine has.
                Some(HotplugRegion {
                    base: 5 << 30,
                    size: 1 << 40,
                }),
            ],
            node_boot: vec![2 * MIB, 0],
            // Node 0's DIMMs: a shared memfd, allocated in advance, bound to host node 0;
            // node 1's: huge pages (a pool the test cannot count on, see below).
            backends: vec![
                MemoryBackend {
                    shared: true,
                    prefault: true,
                    host_node: Some(0),
                    huge_pages: None,
                },
                MemoryBackend {
                    huge_pages: Some(HugePageSize::TwoMiB),
                    ..Default::default()
                },
            ],
            host: HostMemory::open(),
            controller: controller.clone(),
            changed,
            ged: Arc::new(Ged::new(EventFdTrigger::new().unwrap())),
            timeout: Duration::from_secs(20),
            pool: None,
        })
        .unwrap(),
    );
    let serial = Arc::new(Mutex::new(SerialConsole::new(
        EventFdTrigger::new().unwrap(),
        Box::new(std::io::stdout()),
    )));
    let exit = Arc::new(ExitSignal::new().unwrap());
    let dir = tempfile_dir();
    let socket = dir.join("api.sock");

    // The main thread's part, as in `Vm::run`.
    let main = std::thread::Builder::new().name("vmm-main".into()).spawn({
        let (socket, exit) = (socket.clone(), exit.clone());
        move || {
            let api_filter = filters.api.clone();
            let api = tidal_api::server::start(
                &socket,
                Arc::new(VmHandle::new(hotplug, exit.clone(), Default::default())),
                Arc::new(move || api_filter.apply_or_exit()),
            )
            .unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let guest = std::thread::Builder::new()
                .name("vcpu0".into())
                .spawn({
                    let (filter, stop) = (filters.vcpu.clone(), stop.clone());
                    move || {
                        filter.apply().unwrap();
                        play_guest(&controller, &serial, &stop);
                    }
                })
                .unwrap();
            filters.main.apply().unwrap();
            let mut events: EventManager<Box<dyn MutEventSubscriber + Send>> =
                EventManager::new().unwrap();
            events.add_subscriber(Box::new(ExitWatcher(exit.clone())));
            while exit.reason().is_none() {
                events.run().unwrap();
            }
            stop.store(true, Ordering::Release);
            while !guest.is_finished() {
                guest.kill(vcpu::kick_signal()).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
            guest.join().unwrap();
            drop(api);
        }
    });
    let main = main.unwrap();

    // A client, unconfined, as tidalctl would be.
    let start = Instant::now();
    while !socket.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let client = ApiClient::new(&socket).with_timeout(Duration::from_secs(30));
    client.ping().unwrap();
    let mut events = client.events().unwrap();
    let added = client
        .add_memory(&AddMemoryRequest {
            size: 128 * MIB,
            node: 0,
            force: false,
        })
        .unwrap();
    assert_eq!(added.id, "dimm0");
    assert!(events.next_line().is_some());
    client
        .resize(&ResizeRequest {
            desired_ram: Some(2 * MIB + 384 * MIB),
            timeout_secs: None,
            force: false,
            wait: true,
            ..ResizeRequest::default()
        })
        .unwrap();
    assert_eq!(client.memory().unwrap().len(), 2);
    client
        .remove_memory(&RemoveMemoryRequest {
            id: "dimm0".into(),
            timeout_secs: None,
        })
        .unwrap();
    client
        .resize(&ResizeRequest {
            desired_ram: Some(2 * MIB),
            timeout_secs: None,
            force: false,
            wait: true,
            ..ResizeRequest::default()
        })
        .unwrap();
    assert!(client.memory().unwrap().is_empty());
    assert_eq!(client.info().unwrap().memory_actual_size, 2 * MIB);
    // More huge pages than the host's pool can give, forced past the check: the hugetlb
    // memfd is made and sized, its mapping refused, and the API says why.
    let pages = HostMemory::open()
        .free_huge_pages(HugePageSize::TwoMiB)
        .unwrap()
        + 1;
    let size = (pages * 2 * MIB).next_multiple_of(128 * MIB);
    let error = client
        .add_memory(&AddMemoryRequest {
            size,
            node: 1,
            force: true,
        })
        .unwrap_err()
        .to_string();
    let needed = size / (2 * MIB);
    assert!(
        error.contains(&format!("huge pages has fewer than {needed} free")),
        "{error}"
    );
    drop(events);

    exit.request(ExitReason::PowerOff);
    main.join().unwrap();
    assert!(!socket.exists(), "the API socket outlived the server");
    std::fs::remove_dir(&dir).unwrap();
}

/// A fresh directory for the API socket.
fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tidal-seccomp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
