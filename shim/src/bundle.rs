//! What a container's OCI bundle (`config.json`, beside the root filesystem containerd mounted)
//! asks of its VM: the process to run and the memory limit.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxResources, Spec};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BundleError {
    #[error("cannot read the container's spec {path}: {source}")]
    Spec {
        path: PathBuf,
        source: oci_spec::OciSpecError,
    },
    #[error("the container's spec {0} names no process to run")]
    NoProcess(PathBuf),
    #[error("the container's spec {0} names no root filesystem")]
    NoRoot(PathBuf),
    #[error("the container's memory limit {0} is not a size in bytes")]
    BadLimit(i64),
}

/// The container's process, as the guest's init starts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub args: Vec<String>,
    /// `NAME=VALUE` entries, as the spec gives them.
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// What the VM of one container is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub process: Process,
    /// The root filesystem containerd mounted, as an absolute path.
    pub rootfs: PathBuf,
    /// `linux.resources.memory.limit`, when the container has one.
    pub memory_limit: Option<u64>,
    /// The container is a Kubernetes pod's sandbox (containerd's CRI plugin says so in an
    /// annotation): it holds the pod's namespaces for runtimes that share them, and runs no
    /// workload of the pod's.
    pub pod_sandbox: bool,
}

/// The annotation containerd's CRI plugin puts on every container it creates, and the value
/// that marks a pod's sandbox.
const CONTAINER_TYPE: (&str, &str) = ("io.kubernetes.cri.container-type", "sandbox");

/// Reads the bundle at `bundle` (its `config.json`).
pub fn read(bundle: &Path) -> Result<Container, BundleError> {
    let path = bundle.join("config.json");
    let spec = Spec::load(&path).map_err(|source| BundleError::Spec {
        path: path.clone(),
        source,
    })?;
    let process = spec
        .process()
        .as_ref()
        .filter(|p| p.args().as_ref().is_some_and(|args| !args.is_empty()))
        .ok_or_else(|| BundleError::NoProcess(path.clone()))?;
    let user = process.user();
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| BundleError::NoRoot(path.clone()))?;
    let memory_limit = match spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
        Some(resources) => memory_limit(resources)?,
        None => None,
    };
    Ok(Container {
        process: Process {
            args: process.args().clone().unwrap_or_default(),
            env: process.env().clone().unwrap_or_default(),
            cwd: process.cwd().clone(),
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
        },
        // A relative root is the bundle's (containerd's is `rootfs`).
        rootfs: bundle.join(root.path()),
        memory_limit,
        pod_sandbox: spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(CONTAINER_TYPE.0))
            .is_some_and(|kind| kind == CONTAINER_TYPE.1),
    })
}

/// The memory limit `resources` set, if any: containerd and the kubelet say "no limit" with no
/// value, 0 or -1.
pub fn memory_limit(resources: &LinuxResources) -> Result<Option<u64>, BundleError> {
    match resources.memory().as_ref().and_then(|m| m.limit()) {
        None | Some(0 | -1) => Ok(None),
        Some(limit) => u64::try_from(limit)
            .map(Some)
            .map_err(|_| BundleError::BadLimit(limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("config.json"), config).expect("config.json written");
        dir
    }

    #[test]
    fn the_process_root_and_limit_come_from_the_spec() {
        let dir = bundle_with(
            r#"{"ociVersion": "1.0.2",
                "process": {"args": ["sh", "-c", "echo hi"], "env": ["PATH=/bin", "A=b c"],
                            "cwd": "/work", "user": {"uid": 1000, "gid": 100,
                            "additionalGids": [10, 20]}},
                "root": {"path": "rootfs"},
                "linux": {"resources": {"memory": {"limit": 536870912}}}}"#,
        );
        let container = read(dir.path()).expect("the bundle reads");
        assert_eq!(
            container.process,
            Process {
                args: vec!["sh".into(), "-c".into(), "echo hi".into()],
                env: vec!["PATH=/bin".into(), "A=b c".into()],
                cwd: "/work".into(),
                uid: 1000,
                gid: 100,
                additional_gids: vec![10, 20],
            }
        );
        assert_eq!(container.rootfs, dir.path().join("rootfs"));
        assert_eq!(container.memory_limit, Some(512 << 20));
        assert!(!container.pod_sandbox);
    }

    #[test]
    fn the_cri_plugin_marks_a_pods_sandbox() {
        let spec = |kind: &str| {
            format!(
                r#"{{"ociVersion": "1.0.2", "process": {{"args": ["/pause"], "cwd": "/",
                    "user": {{"uid": 65535, "gid": 65535}}}}, "root": {{"path": "rootfs"}},
                    "annotations": {{"io.kubernetes.cri.container-type": "{kind}"}}}}"#
            )
        };
        let sandbox = bundle_with(&spec("sandbox"));
        assert!(read(sandbox.path()).expect("the bundle reads").pod_sandbox);
        let container = bundle_with(&spec("container"));
        assert!(
            !read(container.path())
                .expect("the bundle reads")
                .pod_sandbox
        );
    }

    #[test]
    fn an_absolute_root_and_no_limit_are_taken_as_they_are() {
        let dir = bundle_with(
            r#"{"ociVersion": "1.0.2", "process": {"args": ["true"], "cwd": "/",
                "user": {"uid": 0, "gid": 0}}, "root": {"path": "/somewhere/rootfs"},
                "linux": {"resources": {"memory": {"limit": -1}}}}"#,
        );
        let container = read(dir.path()).expect("the bundle reads");
        assert_eq!(container.rootfs, Path::new("/somewhere/rootfs"));
        assert_eq!(container.memory_limit, None);
        assert!(container.process.env.is_empty());
    }

    #[test]
    fn a_spec_without_a_process_or_with_a_negative_limit_is_refused() {
        let no_args = bundle_with(
            r#"{"ociVersion": "1.0.2", "process": {"args": [], "cwd": "/",
                "user": {"uid": 0, "gid": 0}}, "root": {"path": "rootfs"}}"#,
        );
        let error = read(no_args.path()).expect_err("no process");
        assert!(error.to_string().contains("names no process"), "{error}");
        let negative = bundle_with(
            r#"{"ociVersion": "1.0.2", "process": {"args": ["true"], "cwd": "/",
                "user": {"uid": 0, "gid": 0}}, "root": {"path": "rootfs"},
                "linux": {"resources": {"memory": {"limit": -5}}}}"#,
        );
        let error = read(negative.path()).expect_err("a negative limit");
        assert_eq!(
            error.to_string(),
            "the container's memory limit -5 is not a size in bytes"
        );
        let missing = tempfile::tempdir().expect("a temporary directory");
        let error = read(missing.path()).expect_err("no config.json");
        assert!(
            error
                .to_string()
                .starts_with("cannot read the container's spec"),
            "{error}"
        );
    }
}
