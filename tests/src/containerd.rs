//! A containerd of the test's own, for the containerd runtime's tests: Debian's `containerd`
//! with its root, state and socket in a temporary directory, and the directory of the `tidal`
//! under test (where `containerd-shim-tidal-v2` is built beside it) first on its PATH, so
//! `--runtime io.containerd.tidal.v2` finds the shim and the shim finds that tidal. `ctr`
//! talks to it; with the CRI plugin on ([`Containerd::start_with_cri`]) so does
//! [`crate::cri::Cri`], as the kubelet would.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use containerd_shim_protos::api::UpdateTaskRequest;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::{ttrpc, TaskClient};

use crate::{cache_dir, tail_lines, tell, tell_panics, tidal_binary, TidalOutput};

/// The runtime's name.
pub const RUNTIME: &str = "io.containerd.tidal.v2";

/// The image `resources/build-busybox-image.sh` names.
pub const BUSYBOX_IMAGE: &str = "docker.io/tidal-test/busybox:1";

/// The namespace of the CRI plugin's images and containers.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// The runtime handler (a pod's `runtimeClassName`) the CRI configuration names Tidal's
/// runtime by.
pub const CRI_HANDLER: &str = "tidal";

/// The hotplug region the runtime's configuration file ([`Containerd::runtime_config`]) gives
/// VMs (the shim's default is 4 GiB).
pub const CONFIGURED_HOTPLUG_SIZE: u64 = 3 << 30;

/// How long containerd may take to serve its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
}

impl Containerd {
    /// Starts containerd without its CRI plugin and imports [`BUSYBOX_IMAGE`]; panics when
    /// either fails.
    pub fn start() -> Self {
        Self::start_with(
            "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n",
            "default",
        )
    }

    /// Starts containerd with its CRI plugin, whose runtime handler [`CRI_HANDLER`] is Tidal's
    /// runtime and whose pods' sandbox image is [`BUSYBOX_IMAGE`] (Tidal's runtime runs no
    /// sandbox process), on the native snapshotter; imports the image for it. Pods need the
    /// node's network: no CNI is configured (its configuration directory is the test's own,
    /// and empty). Panics when the CRI plugin did not load.
    pub fn start_with_cri() -> Self {
        let cri = format!(
            "[plugins.\"io.containerd.grpc.v1.cri\"]\n\
             \x20 sandbox_image = \"{BUSYBOX_IMAGE}\"\n\
             \x20 disable_apparmor = true\n\
             \x20 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
             \x20   conf_dir = \"{{root}}/cni\"\n\
             \x20 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
             \x20   snapshotter = \"native\"\n\
             \x20   default_runtime_name = \"{CRI_HANDLER}\"\n\
             \x20   [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{CRI_HANDLER}]\n\
             \x20     runtime_type = \"{RUNTIME}\"\n\
             \x20     [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{CRI_HANDLER}.options]\n\
             \x20       ConfigPath = \"{{root}}/tidal-shim.toml\"\n"
        );
        let containerd = Self::start_with(&cri, CRI_NAMESPACE);
        let plugins = containerd.ctr_ok(&["plugins", "ls"], Duration::from_secs(30));
        assert!(
            plugins
                .lines()
                .any(|line| line.contains(" cri ") && line.trim_end().ends_with("ok")),
            "containerd's CRI plugin did not load:\n{plugins}\ncontainerd's log:\n{}",
            tail_lines(&containerd.log(), 40)
        );
        containerd
    }

    /// Starts containerd with `extra` at the end of its configuration (`{root}` in it: the
    /// test's directory) and imports
    /// [`BUSYBOX_IMAGE`] into `namespace`.
    fn start_with(extra: &str, namespace: &str) -> Self {
        tell_panics();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let root = dir.path();
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             [grpc]\n  address = \"{0}/containerd.sock\"\n{1}",
            root.display(),
            extra.replace("{root}", &root.display().to_string())
        );
        std::fs::write(root.join("config.toml"), config).expect("containerd's config");
        std::fs::write(
            root.join("tidal-shim.toml"),
            format!("hotplug_size = {CONFIGURED_HOTPLUG_SIZE}\n"),
        )
        .expect("the runtime's configuration");
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
            // The shims inherit containerd's environment.
            .env("TIDAL_SHIM_RUN_DIR", root.join("run"))
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
        containerd.import_busybox(namespace);
        containerd
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// A container's bundle directory in containerd's state, where the shim keeps the VM's
    /// files (`tidal-console.log`, `tidal.log`).
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.bundle_in("default", id)
    }

    /// The API socket of the VM of container `id` in containerd namespace `namespace`.
    pub fn api_socket(&self, namespace: &str, id: &str) -> PathBuf {
        self.dir
            .path()
            .join("run")
            .join(namespace)
            .join(format!("{id}.sock"))
    }

    /// The bundle of container `id` in containerd namespace `namespace`.
    pub fn bundle_in(&self, namespace: &str, id: &str) -> PathBuf {
        self.dir
            .path()
            .join("state/io.containerd.runtime.v2.task")
            .join(namespace)
            .join(id)
    }

    /// The end of what the shim keeps of container `id`'s VM: Tidal's log and the kernel's
    /// console, for a failure's message.
    pub fn vm_logs(&self, id: &str) -> String {
        let bundle = [CRI_NAMESPACE, "default"]
            .map(|namespace| self.bundle_in(namespace, id))
            .into_iter()
            .find(|bundle| bundle.exists())
            .unwrap_or_else(|| self.bundle(id));
        let read = |name| std::fs::read_to_string(bundle.join(name)).unwrap_or_default();
        format!(
            "---- tidal.log, last lines ----\n{}\n---- the guest's console, last lines ----\n{}",
            tail_lines(&read("tidal.log"), 20),
            tail_lines(&read("tidal-console.log"), 20)
        )
    }

    /// The runtime's configuration file (`ConfigPath`), which the CRI configuration names and
    /// `ctr run --runtime-config-path` can: it sets [`CONFIGURED_HOTPLUG_SIZE`].
    pub fn runtime_config(&self) -> PathBuf {
        self.dir.path().join("tidal-shim.toml")
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

    fn import_busybox(&self, namespace: &str) {
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
            &[
                "--namespace",
                namespace,
                "images",
                "import",
                "--snapshotter",
                "native",
                &archive,
            ],
            Duration::from_secs(60),
        );
    }
}

impl Drop for Containerd {
    /// Stops containerd; after a failed test, first says what its log (and so the shims')
    /// ended with.
    fn drop(&mut self) {
        if thread::panicking() {
            tell(&format!(
                "---- containerd's log, last lines ----\n{}\n---- end ----",
                tail_lines(&self.log(), 40)
            ));
        }
        if crate::terminate(&mut self.child, Duration::from_secs(10)).is_some() {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pids of the running `tidal` processes whose command line names `needle`.
pub fn tidal_processes_naming(needle: &Path) -> Vec<u32> {
    processes_naming("/tidal", needle)
}

/// The pids of the running processes whose program path ends with `program` and whose command
/// line names `needle`.
pub fn processes_naming(program: &str, needle: &Path) -> Vec<u32> {
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
            let path = cmdline.split('\0').next().unwrap_or_default();
            path.ends_with(program) && cmdline.contains(&needle)
        })
        .collect()
}
