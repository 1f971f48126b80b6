//! The kubelet's side of containerd's CRI plugin, for the pod tests: a blocking client of the
//! CRI v1 runtime service (the `k8s-cri` crate's tonic client) on containerd's socket, with
//! the calls a pod's life takes. Every call fails with the status containerd gave.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerStats, ContainerStatsRequest, ContainerStatus,
    ContainerStatusRequest, CreateContainerRequest, ImageSpec, LinuxContainerConfig,
    LinuxContainerResources, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest, UpdateContainerResourcesRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// How long one call may take: starting a container boots its VM under nested emulation.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// A pod with host networking (no CNI), as [`Cri::run_pod`] makes it.
pub struct Pod {
    pub id: String,
    config: PodSandboxConfig,
}

pub struct Cri {
    runtime: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl Cri {
    /// Connects to the CRI service on containerd's `socket`; panics when it cannot.
    pub fn connect(socket: &Path) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let socket = socket.to_owned();
        let channel = runtime
            .block_on(
                Endpoint::from_static("http://[::]:0")
                    .timeout(CALL_TIMEOUT)
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            let stream = tokio::net::UnixStream::connect(socket).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(stream))
                        }
                    })),
            )
            .expect("a connection to containerd's CRI service");
        Self {
            runtime,
            client: RuntimeServiceClient::new(channel),
        }
    }

    /// `RunPodSandbox` of pod `name` on the node's network, run by `handler` (a runtime of
    /// containerd's CRI configuration); its containers' logs go to `log_directory`.
    pub fn run_pod(&mut self, name: &str, handler: &str, log_directory: &Path) -> Pod {
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_owned(),
                uid: format!("{name}-uid"),
                namespace: "default".to_owned(),
                attempt: 0,
            }),
            hostname: name.to_owned(),
            log_directory: log_directory.display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Node.into(),
                        pid: NamespaceMode::Container.into(),
                        ipc: NamespaceMode::Pod.into(),
                        ..NamespaceOption::default()
                    }),
                    ..LinuxSandboxSecurityContext::default()
                }),
                ..LinuxPodSandboxConfig::default()
            }),
            ..PodSandboxConfig::default()
        };
        let request = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_owned(),
        };
        let client = &mut self.client;
        let id = self
            .runtime
            .block_on(client.run_pod_sandbox(request))
            .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}"))
            .into_inner()
            .pod_sandbox_id;
        Pod { id, config }
    }

    /// `CreateContainer` of `name` in `pod` from `image`, running `command`, its memory limit
    /// `memory` bytes; its log is `NAME.log` in the pod's log directory. Returns its id.
    pub fn create_container(
        &mut self,
        pod: &Pod,
        name: &str,
        image: &str,
        command: &[&str],
        memory: u64,
    ) -> String {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_owned(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.to_owned(),
                ..ImageSpec::default()
            }),
            command: command.iter().map(|&c| c.to_owned()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig {
                resources: Some(memory_resources(memory)),
                ..LinuxContainerConfig::default()
            }),
            ..ContainerConfig::default()
        };
        let request = CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        let client = &mut self.client;
        self.runtime
            .block_on(client.create_container(request))
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"))
            .into_inner()
            .container_id
    }

    /// Where `pod`'s container `name` logs, in the CRI log format.
    pub fn log_path(pod: &Pod, name: &str) -> PathBuf {
        Path::new(&pod.config.log_directory).join(format!("{name}.log"))
    }

    /// `StartContainer`; the error containerd answered, if any.
    pub fn start_container(&mut self, id: &str) -> Result<(), tonic::Status> {
        let request = StartContainerRequest {
            container_id: id.to_owned(),
        };
        let client = &mut self.client;
        self.runtime
            .block_on(client.start_container(request))
            .map(drop)
    }

    /// `UpdateContainerResources` with a memory limit of `memory` bytes, as the kubelet sends
    /// an in-place pod resize; the error containerd answered, if any.
    pub fn update_memory(&mut self, id: &str, memory: u64) -> Result<(), tonic::Status> {
        let request = UpdateContainerResourcesRequest {
            container_id: id.to_owned(),
            linux: Some(memory_resources(memory)),
            ..UpdateContainerResourcesRequest::default()
        };
        let client = &mut self.client;
        self.runtime
            .block_on(client.update_container_resources(request))
            .map(drop)
    }

    pub fn container_status(&mut self, id: &str) -> ContainerStatus {
        let request = ContainerStatusRequest {
            container_id: id.to_owned(),
            verbose: false,
        };
        let client = &mut self.client;
        self.runtime
            .block_on(client.container_status(request))
            .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
            .into_inner()
            .status
            .unwrap_or_else(|| panic!("ContainerStatus {id} has no status"))
    }

    pub fn container_stats(&mut self, id: &str) -> ContainerStats {
        let request = ContainerStatsRequest {
            container_id: id.to_owned(),
        };
        let client = &mut self.client;
        self.runtime
            .block_on(client.container_stats(request))
            .unwrap_or_else(|e| panic!("ContainerStats {id}: {e}"))
            .into_inner()
            .stats
            .unwrap_or_else(|| panic!("ContainerStats {id} has no stats"))
    }

    /// `StopContainer`: the stop signal, then SIGKILL after `grace`.
    pub fn stop_container(&mut self, id: &str, grace: Duration) {
        let request = StopContainerRequest {
            container_id: id.to_owned(),
            timeout: i64::try_from(grace.as_secs()).unwrap_or(i64::MAX),
        };
        let client = &mut self.client;
        self.runtime
            .block_on(client.stop_container(request))
            .unwrap_or_else(|e| panic!("StopContainer {id}: {e}"));
    }

    pub fn remove_container(&mut self, id: &str) {
        let request = RemoveContainerRequest {
            container_id: id.to_owned(),
        };
        let client = &mut self.client;
        self.runtime
            .block_on(client.remove_container(request))
            .unwrap_or_else(|e| panic!("RemoveContainer {id}: {e}"));
    }

    pub fn stop_pod(&mut self, pod: &Pod) {
        let request = StopPodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        };
        let client = &mut self.client;
        self.runtime
            .block_on(client.stop_pod_sandbox(request))
            .unwrap_or_else(|e| panic!("StopPodSandbox {}: {e}", pod.id));
    }

    pub fn remove_pod(&mut self, pod: &Pod) {
        let request = RemovePodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        };
        let client = &mut self.client;
        self.runtime
            .block_on(client.remove_pod_sandbox(request))
            .unwrap_or_else(|e| panic!("RemovePodSandbox {}: {e}", pod.id));
    }
}

fn memory_resources(memory: u64) -> LinuxContainerResources {
    LinuxContainerResources {
        memory_limit_in_bytes: i64::try_from(memory).unwrap_or(i64::MAX),
        ..LinuxContainerResources::default()
    }
}
