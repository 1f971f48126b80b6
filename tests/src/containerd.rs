//! A containerd of the test's own, for the containerd runtime's tests: Debian's `containerd`
//! with its root, state and socket in a temporary directory, the CRI plugin off, and the
//! directory of the `tidal` under test (where `containerd-shim-tidal-v2` is built beside it)
//! first on its PATH, so `--runtime io.containerd.tidal.v2` finds the shim and the shim finds
//! that tidal. `ctr` talks to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use containerd_shim_protos::api::UpdateTaskRequest;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::{ttrpc, TaskClient};

use crate::{cache_dir, tail_lines, tidal_binary, TidalOutput};

/// The runtime's name.
pub const RUNTIME: &str = "io.containerd.tidal.v2";

/// The image `resources/build-busybox-image.sh` names.
pub const BUSYBOX_IMAGE: &str = "docker.io/tidal-test/busybox:1";

/// How long containerd may take to serve its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    /// Starts containerd and imports [`BUSYBOX_IMAGE`]; panics when either fails.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = dir.path();
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{0}/containerd.sock\"\n",
            root.display()
        );
        std::fs::write(root.join("config.toml"), config).expect("containerd's config");
        let bin_dir = tidal_binary()
            .parent()
            .expect("tidal's directory")
            .to_owned();
        let path = std::env::var("PATH").unwrap_or_default();
        let log = std::fs::File::create(root.join("containerd.log")).expect("containerd's log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(root.join("config.toml"))
            .env("PATH", format!("{}:{path}", bin_dir.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log again"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start containerd (Debian's package): {e}"));
        let containerd = Self { dir, child };
        let deadline = Instant::now() + START_TIMEOUT;
        while !containerd.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "containerd did not serve {} within {START_TIMEOUT:?}; its log:\n{}",
                containerd.socket().display(),
                containerd.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
        containerd.import_busybox();
        containerd
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// A container's bundle directory in containerd's state, where the shim keeps the VM's
    /// files (`tidal.sock`, `tidal-console.log`, `tidal.log`).
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir
            .path()
            .join("state/io.containerd.runtime.v2.task/default")
            .join(id)
    }

    /// The end of what the shim keeps of container `id`'s VM: Tidal's log and the kernel's
    /// console, for a failure's message.
    pub fn vm_logs(&self, id: &str) -> String {
        let bundle = self.bundle(id);
        let read = |name| std::fs::read_to_string(bundle.join(name)).unwrap_or_default();
        format!(
            "---- tidal.log, last lines ----\n{}\n---- the guest's console, last lines ----\n{}",
            tail_lines(&read("tidal.log"), 20),
            tail_lines(&read("tidal-console.log"), 20)
        )
    }

    /// A file in the test's directory, for a container's log.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs `ctr ARGS` against this containerd, for at most `timeout`.
    pub fn ctr(&self, args: &[&str], timeout: Duration) -> TidalOutput {
        let output = Command::new("timeout")
            .arg(timeout.as_secs().to_string())
            .arg("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run ctr: {e}"));
        TidalOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `ctr ARGS`, which must succeed; returns its stdout.
    pub fn ctr_ok(&self, args: &[&str], timeout: Duration) -> String {
        let out = self.ctr(args, timeout);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}\nstdout: {}\nstderr: {}\ncontainerd's log, last lines:\n{}",
            out.status,
            out.stdout,
            out.stderr,
            tail_lines(&self.log(), 30)
        );
        out.stdout
    }

    /// Sets the memory limit of the running container `id` to `bytes` through its shim's
    /// `Update`, as containerd's `Tasks.Update` forwards it (containerd 1.6's `ctr` has no
    /// command for it): the resources as the JSON `LinuxResources` containerd sends.
    pub fn update_memory(&self, id: &str, bytes: u64) -> Result<(), String> {
        let address = std::fs::read_to_string(self.bundle(id).join("address"))
            .map_err(|e| format!("cannot read the shim's address: {e}"))?;
        let client = ttrpc::Client::connect(address.trim())
            .map_err(|e| format!("cannot connect to the shim at {address}: {e}"))?;
        let resources = Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".to_owned(),
            value: format!("{{\"memory\":{{\"limit\":{bytes}}}}}").into_bytes(),
            ..Any::default()
        };
        let request = UpdateTaskRequest {
            id: id.to_owned(),
            resources: MessageField::some(resources),
            ..UpdateTaskRequest::default()
        };
        TaskClient::new(client)
            .update(ttrpc::context::with_timeout(300_000_000_000), &request)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn import_busybox(&self) {
        let archive = self.dir.path().join("busybox-image.tar");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/build-busybox-image.sh");
        let status = Command::new(script)
            .arg(cache_dir().join("busybox/bin/busybox"))
            .arg(&archive)
            .status()
            .expect("resources/build-busybox-image.sh runs");
        assert!(
            status.success(),
            "building the busybox image failed: {status}"
        );
        let archive = archive.to_string_lossy().into_owned();
        self.ctr_ok(
            &["images", "import", "--snapshotter", "native", &archive],
            Duration::from_secs(60),
        );
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of a child this value owns and has not reaped.
        unsafe {
            libc::kill(
                i32::try_from(self.child.id()).unwrap_or(i32::MAX),
                libc::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pids of the running `tidal` processes whose command line names `needle`.
pub fn tidal_processes_naming(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            let program = cmdline.split('\0').next().unwrap_or_default();
            program.ends_with("/tidal") && cmdline.contains(&needle)
        })
        .collect()
}
