//! The shim v2 services containerd calls: [`Runtime`] (starting and cleaning up the shim
//! process) and [`TaskService`] (each container's life: create, start, wait, kill, update,
//! delete). A container is a VM ([`crate::vm`]); its task's pid is its Tidal process. A pod's
//! sandbox (see [`bundle::Container::pod_sandbox`]) is a placeholder: it runs nothing and
//! stays running, under the shim's pid, until containerd stops it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use containerd_shim::api::{
    ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, Empty, KillRequest, PidsRequest, PidsResponse, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Status,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::TaskExit;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::topics::TASK_EXIT_EVENT_TOPIC;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, Flags, StartOpts, TtrpcContext, TtrpcResult};
use thiserror::Error;

use crate::bundle::{self, BundleError};
use crate::guest_init::{self, BUSYBOX_PATH, INIT_PATH};
use crate::initramfs::{self, Extra, InitramfsError};
use crate::options::{self, OptionsError, RuntimeOptions};
use crate::stats::{self, ProcessFigures};
use crate::vm::{self, TidalVm, VmError, VmFiles, VmMemory};

/// The runtime's name, as containerd's configuration gives it.
pub const RUNTIME_ID: &str = "io.containerd.tidal.v2";

#[derive(Debug, Error)]
pub enum ShimError {
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Initramfs(#[from] InitramfsError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error("cannot mount the container's root filesystem on {target}: {message}")]
    Mount { target: PathBuf, message: String },
    #[error("cannot read the static busybox {path}: {source}")]
    Busybox {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the container runs as user {0}: Tidal's init runs containers as root (0) only")]
    NotRoot(u32),
    #[error("the container's program {0} is not in its root filesystem")]
    NoProgram(String),
    #[error("the container's resources are not a JSON LinuxResources: {0}")]
    Resources(serde_json::Error),
    #[error("no container {0} in this shim")]
    NotFound(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {id} is {state}: {what} needs it {needed}")]
    State {
        id: String,
        state: &'static str,
        what: &'static str,
        needed: &'static str,
    },
    #[error("{0} is not supported: a Tidal container has a single process")]
    Unsupported(&'static str),
    #[error(
        "container {id} cannot give back {giving} MiB: its guest has {available} MiB available \
         of {total} MiB and must keep {ROOM_LEFT_MIB} MiB; the VM stays at {current} MiB"
    )]
    InUse {
        id: String,
        giving: u64,
        available: u64,
        total: u64,
        current: u64,
    },
}

/// What a guest keeps available after it gives memory back (MiB): room for the kernel's own
/// allocations and the container's next steps. A guest asked to give back more than it has
/// available would try to migrate its pages for good (Linux retries while it cannot).
const ROOM_LEFT_MIB: u64 = 64;

/// How long the shim waits before it asks a guest again that seemed to have too little room.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// How long the init may take to say what the guest's memory is.
const MEMORY_REPORT_TIMEOUT: Duration = Duration::from_secs(10);

impl From<ShimError> for ttrpc::Error {
    fn from(error: ShimError) -> Self {
        let code = match &error {
            ShimError::NotFound(_) => Code::NOT_FOUND,
            ShimError::Exists(_) => Code::ALREADY_EXISTS,
            ShimError::State { .. } | ShimError::InUse { .. } => Code::FAILED_PRECONDITION,
            ShimError::Unsupported(_) => Code::UNIMPLEMENTED,
            ShimError::NotRoot(_) | ShimError::NoProgram(_) | ShimError::Resources(_) => {
                Code::INVALID_ARGUMENT
            }
            _ => Code::INTERNAL,
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, error.to_string()))
    }
}

/// The shim process: what containerd starts with `start` and cleans up after with `delete`.
pub struct Runtime {
    exit: Arc<ExitSignal>,
    namespace: String,
}

impl containerd_shim::Shim for Runtime {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut containerd_shim::Config) -> Self {
        Self {
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        // One shim per container.
        let grouping = opts.id.clone();
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        // containerd runs `start` in the bundle, and reads the shim's address from there when
        // it restarts (and so do the tests).
        std::fs::write("address", &address).map_err(|e| {
            containerd_shim::Error::Other(format!("cannot write the shim's address file: {e}"))
        })?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        // The shim died with its container: its Tidal process went with it (the shim is its
        // subreaper and the VM cannot outlive the pipes it holds).
        Ok(DeleteResponse {
            exit_status: 137,
            exited_at: MessageField::some(now()),
            ..DeleteResponse::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        TaskService {
            exit: self.exit.clone(),
            namespace: self.namespace.clone(),
            publisher: Arc::new(publisher),
            containers: Arc::new(Mutex::new(HashMap::new())),
            memory_requests: Arc::new(AtomicU64::new(1)),
        }
    }
}

/// Where a container is in its life.
enum Phase {
    Created,
    /// Booting: `start` is under way.
    Starting,
    Running(TidalVm),
    /// A pod's sandbox, started: nothing runs.
    Holding,
    Stopped {
        status: u32,
        at: Timestamp,
    },
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Created => "created",
            Phase::Starting => "starting",
            Phase::Running(_) | Phase::Holding => "running",
            Phase::Stopped { .. } => "stopped",
        }
    }
}

struct Container {
    id: String,
    bundle: PathBuf,
    stdout: String,
    stderr: String,
    /// None for a pod's sandbox.
    vm: Option<VmPlan>,
    phase: Mutex<Phase>,
    /// The phase became `Stopped`.
    stopped: Condvar,
    /// The shim's until the VM runs, then its Tidal process's.
    pid: AtomicU32,
}

/// The VM a container runs in.
struct VmPlan {
    files: VmFiles,
    options: RuntimeOptions,
    /// The VM's memory: what the container's limit asks for.
    memory: Mutex<u64>,
}

impl VmPlan {
    fn memory(&self) -> MutexGuard<'_, u64> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Container {
    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn state_error(&self, phase: &Phase, what: &'static str, needed: &'static str) -> ShimError {
        ShimError::State {
            id: self.id.clone(),
            state: phase.name(),
            what,
            needed,
        }
    }
}

#[derive(Clone)]
pub struct TaskService {
    exit: Arc<ExitSignal>,
    namespace: String,
    publisher: Arc<RemotePublisher>,
    containers: Arc<Mutex<HashMap<String, Arc<Container>>>>,
    /// The number of the next `memory N` question to an init.
    memory_requests: Arc<AtomicU64>,
}

impl TaskService {
    fn containers(&self) -> MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn container(&self, id: &str, exec_id: &str) -> Result<Arc<Container>, ShimError> {
        if !exec_id.is_empty() {
            return Err(ShimError::Unsupported("exec"));
        }
        self.containers()
            .get(id)
            .cloned()
            .ok_or_else(|| ShimError::NotFound(id.to_owned()))
    }

    fn create_container(&self, req: &CreateTaskRequest) -> Result<Container, ShimError> {
        if self.containers().contains_key(&req.id) {
            return Err(ShimError::Exists(req.id.clone()));
        }
        let bundle_dir = PathBuf::from(&req.bundle);
        let spec = bundle::read(&bundle_dir)?;
        let container = |vm| Container {
            id: req.id.clone(),
            bundle: bundle_dir.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            vm,
            phase: Mutex::new(Phase::Created),
            stopped: Condvar::new(),
            pid: AtomicU32::new(std::process::id()),
        };
        if spec.pod_sandbox {
            return Ok(container(None));
        }
        let config = options::config_path(req.options.as_ref())?;
        let options = RuntimeOptions::load(config.as_deref())?;
        if spec.process.uid != 0 {
            return Err(ShimError::NotRoot(spec.process.uid));
        }
        let sockets = options.run_dir.join(&self.namespace);
        std::fs::create_dir_all(&sockets).map_err(|source| ShimError::Write {
            path: sockets.clone(),
            source,
        })?;
        let files = VmFiles::new(&bundle_dir, sockets.join(format!("{}.sock", req.id)));
        let mounted = mount_rootfs(req, &spec.rootfs)?;
        let archive = write_initramfs(&spec, &options, &files.initramfs);
        if mounted {
            // The archive holds the tree now: the VM needs no mount.
            if let Err(e) = containerd_shim::mount::umount_recursive(spec.rootfs.to_str(), 0) {
                log::warn!("cannot unmount {}: {e}", spec.rootfs.display());
            }
        }
        archive?;
        Ok(container(Some(VmPlan {
            files,
            memory: Mutex::new(options.vm_memory(spec.memory_limit)),
            options,
        })))
    }

    /// Boots the container's VM, grows it to the container's memory and lets its process
    /// start; a thread then waits for it to end.
    fn start_container(&self, container: &Arc<Container>) -> Result<u32, ShimError> {
        let plan = {
            let mut phase = container.phase();
            if !matches!(*phase, Phase::Created) {
                return Err(container.state_error(&phase, "start", "created"));
            }
            let Some(plan) = container.vm.as_ref() else {
                *phase = Phase::Holding;
                return Ok(std::process::id());
            };
            *phase = Phase::Starting;
            plan
        };
        let booted = boot(&container.id, plan, &container.stdout);
        let mut phase = container.phase();
        match booted {
            Ok((vm, watch)) => {
                let pid = vm.pid();
                container.pid.store(pid, Ordering::Relaxed);
                *phase = Phase::Running(vm);
                let (service, container) = (self.clone(), container.clone());
                std::thread::spawn(move || {
                    let status = watch.wait();
                    service.stopped(&container, status);
                });
                Ok(pid)
            }
            Err(e) => {
                *phase = Phase::Created;
                Err(e)
            }
        }
    }

    /// Records that the container's process ended with `status` and tells containerd.
    fn stopped(&self, container: &Container, status: u32) {
        let at = now();
        *container.phase() = Phase::Stopped {
            status,
            at: at.clone(),
        };
        container.stopped.notify_all();
        let pid = container.pid.load(Ordering::Relaxed);
        log::info!("container {}: exited with status {status}", container.id);
        let event = TaskExit {
            container_id: container.id.clone(),
            id: container.id.clone(),
            pid,
            exit_status: status,
            exited_at: MessageField::some(at),
            ..TaskExit::default()
        };
        if let Err(e) = self.publisher.publish(
            ttrpc::context::Context::default(),
            TASK_EXIT_EVENT_TOPIC,
            &self.namespace,
            Box::new(event),
        ) {
            log::warn!("cannot tell containerd that {} exited: {e}", container.id);
        }
    }

    fn update_container(&self, req: &UpdateTaskRequest) -> Result<(), ShimError> {
        let container = self.container(&req.id, "")?;
        // A pod's sandbox has no VM to resize: its pod's containers have theirs.
        let (Some(resources), Some(plan)) = (req.resources.as_ref(), container.vm.as_ref()) else {
            return Ok(());
        };
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(&resources.value).map_err(ShimError::Resources)?;
        let memory = plan.options.vm_memory(bundle::memory_limit(&resources)?);
        {
            let phase = container.phase();
            if !matches!(*phase, Phase::Running(_)) {
                // Before its start the VM simply boots at the new size.
                if matches!(*phase, Phase::Created) {
                    *plan.memory() = memory;
                    return Ok(());
                }
                return Err(container.state_error(&phase, "update", "created or running"));
            }
        }
        let current = *plan.memory();
        if memory < current {
            self.check_room(container.as_ref(), plan, current - memory)?;
        }
        VmMemory::new(&plan.files).resize(memory)?;
        *plan.memory() = memory;
        log::info!(
            "container {}: memory now {} MiB",
            container.id,
            memory >> 20
        );
        Ok(())
    }
}

/// Boots container `id`'s VM as `plan` says, its process's output on `stdout`, grows it to the
/// container's memory and lets its process start.
fn boot(
    id: &str,
    plan: &VmPlan,
    stdout: &str,
) -> Result<(TidalVm, crate::vm::ExitWatch), ShimError> {
    let memory = *plan.memory();
    let boot_memory = plan.options.boot_memory.min(memory);
    let (mut vm, watch) = TidalVm::boot(&plan.options, &plan.files, boot_memory, stdout)?;
    let grown = if memory > boot_memory {
        VmMemory::new(&plan.files).resize(memory)
    } else {
        Ok(())
    };
    if let Err(e) = grown.and_then(|()| vm.start()) {
        vm.kill();
        watch.wait();
        return Err(e.into());
    }
    log::info!(
        "container {id}: VM of {} MiB started, Tidal pid {}",
        memory >> 20,
        vm.pid()
    );
    Ok((vm, watch))
}

impl TaskService {
    /// Refuses to take `giving` bytes from a running container whose guest has less than that
    /// (and [`ROOM_LEFT_MIB`]) available, as its init says, twice [`RECHECK_AFTER`] apart
    /// (`MemAvailable` is an estimate, and moves); a guest that does not say in time is
    /// resized unchecked (it can still refuse the ejects itself).
    fn check_room(
        &self,
        container: &Container,
        plan: &VmPlan,
        giving: u64,
    ) -> Result<(), ShimError> {
        for attempt in 1.. {
            let Some((total, available)) = self.guest_memory(container, plan)? else {
                log::warn!(
                    "container {}: its guest did not say what memory it has within \
                     {MEMORY_REPORT_TIMEOUT:?}; resizing without that check",
                    container.id
                );
                return Ok(());
            };
            if available >> 20 >= (giving >> 20) + ROOM_LEFT_MIB {
                return Ok(());
            }
            if attempt == 2 {
                return Err(ShimError::InUse {
                    id: container.id.clone(),
                    giving: giving >> 20,
                    available: available >> 20,
                    total: total >> 20,
                    current: *plan.memory() >> 20,
                });
            }
            std::thread::sleep(RECHECK_AFTER);
        }
        Ok(())
    }

    /// The guest's `(MemTotal, MemAvailable)`, as its init answers; None if it does not in
    /// time, or the container is not running.
    fn guest_memory(
        &self,
        container: &Container,
        plan: &VmPlan,
    ) -> Result<Option<(u64, u64)>, ShimError> {
        let request = self.memory_requests.fetch_add(1, Ordering::Relaxed);
        match &mut *container.phase() {
            Phase::Running(vm) => vm.ask_memory(request)?,
            _ => return Ok(None),
        }
        Ok(vm::memory_report(
            &plan.files.console,
            request,
            MEMORY_REPORT_TIMEOUT,
        ))
    }
}

/// Mounts what containerd gave as the container's root filesystem on `target`; whether it
/// mounted anything (a bundle may come with its tree in place).
fn mount_rootfs(req: &CreateTaskRequest, target: &Path) -> Result<bool, ShimError> {
    let Some(mount) = req.rootfs.first() else {
        return Ok(false);
    };
    std::fs::create_dir_all(target).map_err(|source| ShimError::Write {
        path: target.to_owned(),
        source,
    })?;
    containerd_shim::mount::mount_rootfs(
        Some(mount.type_.as_str()),
        Some(mount.source.as_str()),
        &mount.options,
        target,
    )
    .map_err(|e| ShimError::Mount {
        target: target.to_owned(),
        message: e.to_string(),
    })?;
    Ok(true)
}

/// The container's tree with the init and busybox, as the VM's initramfs at `path`.
fn write_initramfs(
    spec: &bundle::Container,
    options: &RuntimeOptions,
    path: &Path,
) -> Result<(), ShimError> {
    let program = &spec.process.args[0];
    let path_var = spec
        .process
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="));
    if !guest_init::is_runnable(&spec.rootfs, program, path_var) {
        return Err(ShimError::NoProgram(program.clone()));
    }
    let busybox = std::fs::read(&options.busybox).map_err(|source| ShimError::Busybox {
        path: options.busybox.clone(),
        source,
    })?;
    let extras = [
        Extra {
            path: INIT_PATH.to_owned(),
            contents: guest_init::script(&spec.process).into_bytes(),
            mode: 0o755,
        },
        Extra {
            path: BUSYBOX_PATH.to_owned(),
            contents: busybox,
            mode: 0o755,
        },
    ];
    let write_error = |source| ShimError::Write {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::create(path).map_err(write_error)?;
    let mut out = std::io::BufWriter::new(file);
    let written = initramfs::write(&spec.rootfs, &extras, &mut out)?;
    std::io::Write::flush(&mut out).map_err(write_error)?;
    log::info!(
        "initramfs {}: {} entries ({} sockets left out)",
        path.display(),
        written.entries,
        written.sockets_skipped
    );
    Ok(())
}

fn now() -> Timestamp {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
        ..Timestamp::default()
    }
}

impl containerd_shim::Task for TaskService {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let container = self.create_container(&req).inspect_err(|e| {
            log::warn!("create {}: {e}", req.id);
        })?;
        let pid = std::process::id();
        self.containers()
            .insert(req.id.clone(), Arc::new(container));
        Ok(CreateTaskResponse {
            pid,
            ..CreateTaskResponse::default()
        })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let container = self.container(&req.id, &req.exec_id)?;
        let pid = self.start_container(&container).inspect_err(|e| {
            log::warn!("start {}: {e}", req.id);
        })?;
        Ok(StartResponse {
            pid,
            ..StartResponse::default()
        })
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let container = self.container(&req.id, &req.exec_id)?;
        let phase = container.phase();
        let (status, exit_status, exited_at) = match &*phase {
            Phase::Created | Phase::Starting => (Status::CREATED, 0, None),
            Phase::Running(_) | Phase::Holding => (Status::RUNNING, 0, None),
            Phase::Stopped { status, at } => (Status::STOPPED, *status, Some(at.clone())),
        };
        Ok(StateResponse {
            id: container.id.clone(),
            bundle: container.bundle.display().to_string(),
            pid: container.pid.load(Ordering::Relaxed),
            status: status.into(),
            stdout: container.stdout.clone(),
            stderr: container.stderr.clone(),
            exit_status,
            exited_at: exited_at.into(),
            ..StateResponse::default()
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let container = self.container(&req.id, &req.exec_id)?;
        let mut phase = container.phase();
        loop {
            if let Phase::Stopped { status, at } = &*phase {
                return Ok(WaitResponse {
                    exit_status: *status,
                    exited_at: MessageField::some(at.clone()),
                    ..WaitResponse::default()
                });
            }
            phase = container
                .stopped
                .wait(phase)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let container = self.container(&req.id, &req.exec_id)?;
        let mut phase = container.phase();
        match &mut *phase {
            Phase::Running(vm) if req.signal == 9 => vm.kill(),
            Phase::Running(vm) => vm.signal(req.signal).map_err(ShimError::from)?,
            // A placeholder "exits" at any signal, as the pause process does at those
            // containerd sends; like a process's, its exit comes after the answer (containerd
            // deletes the task and shuts the shim down when it hears of the exit).
            Phase::Created | Phase::Holding => {
                let (service, container) = (self.clone(), container.clone());
                let status = 128 + req.signal;
                std::thread::spawn(move || service.stopped(&container, status));
            }
            Phase::Starting | Phase::Stopped { .. } => {
                let needed = "running or created";
                return Err(container.state_error(&phase, "kill", needed).into());
            }
        }
        Ok(Empty::default())
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let container = self.container(&req.id, &req.exec_id)?;
        let (exit_status, exited_at) = match &*container.phase() {
            Phase::Stopped { status, at } => (*status, at.clone()),
            Phase::Created => (0, now()),
            other => return Err(container.state_error(other, "delete", "stopped").into()),
        };
        self.containers().remove(&req.id);
        if let Some(plan) = &container.vm {
            for file in [&plan.files.initramfs, &plan.files.api_socket] {
                let _ = std::fs::remove_file(file);
            }
        }
        Ok(DeleteResponse {
            pid: container.pid.load(Ordering::Relaxed),
            exit_status,
            exited_at: MessageField::some(exited_at),
            ..DeleteResponse::default()
        })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let container = self.container(&req.id, "")?;
        let pid = container.pid.load(Ordering::Relaxed);
        Ok(PidsResponse {
            processes: vec![ProcessInfo {
                pid,
                ..ProcessInfo::default()
            }],
            ..PidsResponse::default()
        })
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        self.update_container(&req).inspect_err(|e| {
            log::warn!("update {}: {e}", req.id);
        })?;
        Ok(Empty::default())
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let container = self.container(&req.id, "")?;
        let figures = match &*container.phase() {
            Phase::Running(vm) => ProcessFigures::of(vm.pid()),
            _ => ProcessFigures::default(),
        };
        let limit = container.vm.as_ref().map_or(0, |plan| *plan.memory());
        Ok(StatsResponse {
            stats: MessageField::some(stats::metrics(limit, figures)),
            ..StatsResponse::default()
        })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = self
            .containers()
            .get(&req.id)
            .map_or(0, |c| c.pid.load(Ordering::Relaxed));
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..ConnectResponse::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        if self.containers().is_empty() {
            self.exit.signal();
        }
        Ok(Empty::default())
    }
}
