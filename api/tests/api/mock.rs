//! A `VmApi` that records its calls and answers as the test says, and a server around it on a
//! socket in a temporary directory.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tidal_api::client::RawResponse;
use tidal_api::{
    AddMemoryRequest, ApiClient, ApiError, ApiServer, ConsoleInfo, CpusConfigInfo, DimmInfo,
    DimmState, ErrorBody, EventJournal, HotplugEvent, MemoryBackendInfo, MemoryConfigInfo,
    MemoryInfo, NodeMemory, OstStatus, PayloadInfo, RemoveMemoryRequest, ResizeRequest,
    ResizeZoneRequest, ServerError, ServerLimits, Subscription, VmApi, VmConfigInfo, VmInfo,
    VmState,
};

pub const GIB: u64 = 1 << 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Info,
    Memory,
    Resize(ResizeRequest),
    ResizeZone(ResizeZoneRequest),
    AddMemory(AddMemoryRequest),
    RemoveMemory(RemoveMemoryRequest),
    Subscribe(Option<u64>),
    Shutdown,
}

/// Records every call; `resize`, `add_memory` and `remove_memory` fail with the error set by
/// [`MockVm::fail_with`] and wait while [`MockVm::hold`] is in force. Publishes what
/// [`MockVm::emit`] is given in its events journal, as the VMM does with its events.
#[derive(Default)]
pub struct MockVm {
    calls: Mutex<Vec<Call>>,
    journal: EventJournal,
    call_made: Condvar,
    failure: Mutex<Option<ApiError>>,
    held: Mutex<bool>,
    released: Condvar,
}

impl MockVm {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    pub fn fail_with(&self, error: ApiError) {
        *self.failure.lock().unwrap() = Some(error);
    }

    /// Makes the hotplug calls wait until [`MockVm::release`], like a slow guest.
    pub fn hold(&self) {
        *self.held.lock().unwrap() = true;
    }

    pub fn release(&self) {
        *self.held.lock().unwrap() = false;
        self.released.notify_all();
    }

    /// Publishes `event` (numbered next) and returns how many subscribers it reaches.
    pub fn emit(&self, event: &HotplugEvent) -> usize {
        self.journal.publish(event.clone())
    }

    /// Waits until `count` calls have been made.
    pub fn wait_for_calls(&self, count: usize) {
        let calls = self.calls.lock().unwrap();
        let (_calls, timeout) = self
            .call_made
            .wait_timeout_while(calls, Duration::from_secs(10), |calls| calls.len() < count)
            .unwrap();
        assert!(!timeout.timed_out(), "the VMM was not called {count} times");
    }

    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
        self.call_made.notify_all();
    }

    /// Waits while held, then answers with the set failure, if any.
    fn outcome(&self) -> Result<(), ApiError> {
        let held = self.held.lock().unwrap();
        drop(self.released.wait_while(held, |held| *held).unwrap());
        self.failure.lock().unwrap().clone().map_or(Ok(()), Err)
    }
}

impl VmApi for MockVm {
    fn info(&self) -> VmInfo {
        self.record(Call::Info);
        sample_info()
    }

    fn memory(&self) -> Vec<DimmInfo> {
        self.record(Call::Memory);
        sample_dimms()
    }

    fn resize(&self, request: ResizeRequest) -> Result<(), ApiError> {
        self.record(Call::Resize(request));
        self.outcome()
    }

    fn resize_zone(&self, request: ResizeZoneRequest) -> Result<(), ApiError> {
        self.record(Call::ResizeZone(request));
        self.outcome()
    }

    fn add_memory(&self, request: AddMemoryRequest) -> Result<DimmInfo, ApiError> {
        self.record(Call::AddMemory(request.clone()));
        self.outcome()?;
        Ok(DimmInfo {
            id: "dimm2".to_owned(),
            slot: 2,
            node: request.node,
            base: 6 * GIB,
            size: request.size,
            state: DimmState::Added,
            last_ost: Some(OstStatus {
                event: 1,
                status: 0,
            }),
        })
    }

    fn remove_memory(&self, request: RemoveMemoryRequest) -> Result<(), ApiError> {
        self.record(Call::RemoveMemory(request));
        self.outcome()
    }

    fn subscribe(&self, since: Option<u64>) -> Subscription {
        // Subscribed first: once the call shows, a test may emit.
        let subscription = self.journal.subscribe(since);
        self.record(Call::Subscribe(since));
        subscription
    }

    fn shutdown(&self) {
        self.record(Call::Shutdown);
    }
}

pub fn sample_info() -> VmInfo {
    VmInfo {
        config: VmConfigInfo {
            cpus: CpusConfigInfo {
                boot_vcpus: 2,
                max_vcpus: 2,
            },
            memory: MemoryConfigInfo {
                size: 3 * GIB,
                hotplug_size: 8 * GIB,
                hotplug_method: "Acpi".to_owned(),
                shared: false,
                hugepages: false,
            },
            payload: PayloadInfo {
                kernel: "/boot/vmlinuz".to_owned(),
                initramfs: None,
                cmdline: "console=ttyS0 pci=off".to_owned(),
            },
            serial: ConsoleInfo {
                mode: "Tty".to_owned(),
                file: None,
            },
            console: ConsoleInfo {
                mode: "Off".to_owned(),
                file: None,
            },
        },
        state: VmState::Running,
        memory_actual_size: 3 * GIB,
        desired_ram: 3 * GIB,
        memory: MemoryInfo {
            boot: GIB,
            hotplugged: 2 * GIB,
            hotplug_size: 8 * GIB,
            slots: 8,
            block_size: 128 << 20,
            inserting: 0,
            removing: 0,
            nodes: vec![
                NodeMemory {
                    id: 0,
                    boot: GIB,
                    hotplugged: GIB,
                    hotplug_size: 4 * GIB,
                    backend: MemoryBackendInfo::default(),
                },
                NodeMemory {
                    id: 1,
                    boot: 0,
                    hotplugged: GIB,
                    hotplug_size: 4 * GIB,
                    backend: MemoryBackendInfo {
                        shared: true,
                        hugepage_size: Some(2 << 20),
                        prefault: true,
                        host_node: Some(1),
                    },
                },
            ],
        },
        cpus: 2,
    }
}

pub fn sample_dimms() -> Vec<DimmInfo> {
    vec![
        DimmInfo {
            id: "dimm0".to_owned(),
            slot: 0,
            node: 0,
            base: 4 * GIB,
            size: GIB,
            state: DimmState::Added,
            last_ost: Some(OstStatus {
                event: 1,
                status: 0,
            }),
        },
        DimmInfo {
            id: "dimm1".to_owned(),
            slot: 1,
            node: 1,
            base: 5 * GIB,
            size: GIB,
            state: DimmState::Inserting,
            last_ost: None,
        },
    ]
}

/// dimm2 plugged and accepted, then dimm1 ejected, as the VMM reports them: numbered as a
/// fresh VM's first events.
pub fn sample_events() -> Vec<HotplugEvent> {
    let event = |seq, slot: u32, old_state, new_state, ost, timestamp_us| HotplugEvent {
        seq,
        id: format!("dimm{slot}"),
        slot,
        node: 0,
        base: (4 + u64::from(slot)) * GIB,
        size: GIB,
        old_state,
        new_state,
        ost,
        timestamp_us,
    };
    let ost = |event, status| Some(OstStatus { event, status });
    use DimmState::{Added, Empty, Inserting, Removing};
    vec![
        event(1, 2, Empty, Inserting, None, 1_795_987_800_000_000),
        event(2, 2, Inserting, Added, ost(1, 0), 1_795_987_800_042_000),
        event(3, 1, Added, Removing, ost(3, 0x84), 1_795_987_803_202_000),
        event(4, 1, Removing, Empty, ost(3, 0), 1_795_987_804_500_000),
    ]
}

/// Panics in every call, as a VMM bug would.
pub struct PanickingVm;

impl VmApi for PanickingVm {
    fn info(&self) -> VmInfo {
        panic!("info failed");
    }
    fn memory(&self) -> Vec<DimmInfo> {
        panic!("memory failed");
    }
    fn resize(&self, _: ResizeRequest) -> Result<(), ApiError> {
        panic!("resize failed");
    }
    fn resize_zone(&self, _: ResizeZoneRequest) -> Result<(), ApiError> {
        panic!("resize_zone failed");
    }
    fn add_memory(&self, _: AddMemoryRequest) -> Result<DimmInfo, ApiError> {
        panic!("add_memory failed");
    }
    fn remove_memory(&self, _: RemoveMemoryRequest) -> Result<(), ApiError> {
        panic!("remove_memory failed");
    }
    fn subscribe(&self, _: Option<u64>) -> Subscription {
        panic!("subscribe failed");
    }
    fn shutdown(&self) {
        panic!("shutdown failed");
    }
}

/// A server on `api.sock` in a fresh temporary directory, stopped when dropped.
pub struct TestServer {
    pub client: ApiClient,
    server: ApiServer,
    dir: TempDir,
}

impl TestServer {
    /// A server with the limits the VMM uses.
    pub fn start(vm: Arc<dyn VmApi>) -> Self {
        Self::start_by(|socket| tidal_api::start(socket, vm, Arc::new(|| ())))
    }

    /// A server with other limits, e.g. timeouts short enough for a test to wait them out.
    pub fn start_with_limits(vm: Arc<dyn VmApi>, limits: ServerLimits) -> Self {
        Self::start_by(|socket| tidal_api::start_with_limits(socket, vm, Arc::new(|| ()), limits))
    }

    fn start_by(start: impl FnOnce(&Path) -> Result<ApiServer, ServerError>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = start(&dir.path().join("api.sock")).unwrap();
        let client = ApiClient::new(server.socket_path());
        Self {
            client,
            server,
            dir,
        }
    }

    pub fn socket(&self) -> &Path {
        self.server.socket_path()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    /// Stops the server; the directory it was in stays until the returned handle is dropped.
    pub fn stop(self) -> TempDir {
        self.server.shutdown();
        self.dir
    }

    /// Sends `method path` (the events stream) from another thread, has `mock` emit its
    /// [`sample_events`] once subscribed, then stops the server, which ends the stream, and
    /// returns the whole answer. Checks that the open stream did not hold up the stop beyond
    /// the server's 1 s grace for requests.
    pub fn stream_until_stopped(self, mock: &MockVm, method: &str, path: &str) -> RawResponse {
        let client = self.client.clone();
        let method = method.parse().unwrap();
        let path = path.to_owned();
        let answer = thread::spawn(move || client.send(method, &path, None));
        mock.wait_for_calls(1);
        for event in sample_events() {
            mock.emit(&event);
        }
        let started = Instant::now();
        self.stop();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "an open stream held up the server's stop"
        );
        answer.join().unwrap().unwrap()
    }

    /// Sends any request; `body` is sent as is.
    pub fn send(&self, method: &str, path: &str, body: Option<&str>) -> RawResponse {
        self.client
            .send(
                method.parse().unwrap(),
                path,
                body.map(|body| body.as_bytes().to_vec()),
            )
            .unwrap()
    }
}

/// The `error` of an error answer, checking that the answer is JSON.
pub fn error_message(response: &RawResponse) -> String {
    assert_eq!(response.headers["content-type"], "application/json");
    serde_json::from_slice::<ErrorBody>(&response.body)
        .unwrap_or_else(|error| panic!("{error}: {:?}", response.body))
        .error
}
