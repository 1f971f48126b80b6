//! Tidal's containerd runtime (`io.containerd.tidal.v2`): every container is a Tidal VM that
//! boots the container's root filesystem as its initramfs, its memory the container's limit.
//!
//! - [`bundle`]: what the OCI bundle asks of the VM (the process, the memory limit).
//! - [`initramfs`]: the root filesystem and Tidal's init as one newc archive for the kernel.

pub mod bundle;
pub mod initramfs;
