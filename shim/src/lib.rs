//! Tidal's containerd runtime (`io.containerd.tidal.v2`): every container is a Tidal VM that
//! boots the container's root filesystem as its initramfs, its memory the container's limit.
//!
//! - [`service`]: the shim v2 services containerd calls, a container's life.
//! - [`bundle`]: what the OCI bundle asks of the VM (the process, the memory limit).
//! - [`initramfs`]: the root filesystem and Tidal's init as one newc archive for the kernel.
//! - [`guest_init`]: that init, and the lines it and the shim exchange.
//! - [`vm`]: the container's Tidal process and its memory.
//! - [`stats`]: its figures as containerd's cgroup metrics.
//! - [`options`]: where Tidal, the kernel and busybox are, and how big VMs are.

pub mod bundle;
pub mod guest_init;
pub mod initramfs;
pub mod options;
pub mod service;
pub mod stats;
pub mod vm;
