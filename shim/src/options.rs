//! What the runtime needs besides the container: Tidal, the guest kernel, a static busybox for
//! the init, and how big VMs are. Each comes from an environment variable of the shim's (which
//! it inherits from containerd), or, without one, from where the project's guest scripts put
//! it, so a containerd config naming only the runtime type runs containers.

use std::path::{Path, PathBuf};

use thiserror::Error;
use tidal_api::size::parse_size;

/// Where VMs' API sockets are unless `TIDAL_SHIM_RUN_DIR` says.
pub const RUN_DIR: &str = "/run/tidal-shim";

/// The block size of guest memory: VM sizes are multiples of it.
pub const BLOCK: u64 = 128 << 20;

#[derive(Debug, Error)]
pub enum OptionsError {
    #[error("{name}: cannot find {what} at {path}")]
    Missing {
        name: &'static str,
        what: &'static str,
        path: PathBuf,
    },
    #[error("cannot find tidal beside the shim or on PATH (set TIDAL_SHIM_TIDAL)")]
    NoTidal,
    #[error("{name}={value}: not a size (a number of bytes, or with K, M, G or T)")]
    Size { name: &'static str, value: String },
    #[error("TIDAL_SHIM_CPUS={0}: not a number of vCPUs from 1 to 254")]
    Cpus(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    pub tidal: PathBuf,
    /// The guest kernel: Debian's, as an ELF `vmlinux` or a bzImage.
    pub kernel: PathBuf,
    /// A statically linked busybox, the init's shell and tools.
    pub busybox: PathBuf,
    pub cpus: u8,
    /// The RAM a VM boots with; the rest of its limit is hot-added before its process starts,
    /// so that all of it can be taken away again.
    pub boot_memory: u64,
    /// The VM's memory for a container without a limit.
    pub default_memory: u64,
    /// How far a VM can grow past its boot memory (its hotplug region).
    pub hotplug_size: u64,
    /// Where VMs' API sockets are, one directory per containerd namespace: a bundle's path
    /// with a CRI container's 64-character id is too long for a socket's address.
    pub run_dir: PathBuf,
}

impl RuntimeOptions {
    /// The options from the environment, with the defaults for what it does not set.
    pub fn from_env() -> Result<Self, OptionsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, OptionsError> {
        let cache = var("TIDAL_CACHE")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|home| Path::new(&home).join(".cache/tidal")))
            .unwrap_or_else(|| PathBuf::from("/root/.cache/tidal"));
        let file = |name, what, default: PathBuf| {
            let path = var(name).map_or(default, PathBuf::from);
            if path.is_file() {
                Ok(path)
            } else {
                Err(OptionsError::Missing { name, what, path })
            }
        };
        let size = |name, default: u64| match var(name) {
            None => Ok(default),
            Some(value) => parse_size(&value).map_err(|_| OptionsError::Size { name, value }),
        };
        let tidal = match var("TIDAL_SHIM_TIDAL") {
            Some(path) => file("TIDAL_SHIM_TIDAL", "tidal", PathBuf::from(path))?,
            None => find_tidal(var("PATH").as_deref()).ok_or(OptionsError::NoTidal)?,
        };
        let cpus = match var("TIDAL_SHIM_CPUS") {
            None => 1,
            Some(text) => text
                .parse()
                .ok()
                .filter(|n| (1..=254).contains(n))
                .ok_or(OptionsError::Cpus(text))?,
        };
        Ok(Self {
            tidal,
            kernel: file(
                "TIDAL_SHIM_KERNEL",
                "the guest kernel",
                cache.join("vmlinux"),
            )?,
            busybox: file(
                "TIDAL_SHIM_BUSYBOX",
                "a static busybox",
                cache.join("busybox/bin/busybox"),
            )?,
            cpus,
            boot_memory: round_up(size("TIDAL_SHIM_BOOT_MEMORY", 256 << 20)?),
            default_memory: round_up(size("TIDAL_SHIM_DEFAULT_MEMORY", 512 << 20)?),
            hotplug_size: round_up(size("TIDAL_SHIM_HOTPLUG_SIZE", 4 << 30)?),
            run_dir: var("TIDAL_SHIM_RUN_DIR")
                .map_or_else(|| PathBuf::from(RUN_DIR), PathBuf::from),
        })
    }

    /// The VM size for a container limited to `limit` bytes (none: the default), in whole
    /// blocks and never below the boot memory.
    pub fn vm_memory(&self, limit: Option<u64>) -> u64 {
        round_up(limit.unwrap_or(self.default_memory)).max(self.boot_memory)
    }
}

/// `bytes` rounded up to whole blocks.
pub fn round_up(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK).max(1) * BLOCK
}

/// `tidal` beside the running shim, else the first on `path`.
fn find_tidal(path: Option<&str>) -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("tidal")));
    beside
        .into_iter()
        .chain(
            path.unwrap_or_default()
                .split(':')
                .map(|dir| Path::new(dir).join("tidal")),
        )
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn options_from(vars: &[(&str, &str)]) -> Result<RuntimeOptions, OptionsError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        RuntimeOptions::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn the_cache_gives_the_kernel_and_busybox_and_sizes_are_whole_blocks() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let cache = dir.path();
        std::fs::create_dir_all(cache.join("busybox/bin")).expect("busybox/bin");
        for file in ["vmlinux", "busybox/bin/busybox", "tidal"] {
            std::fs::write(cache.join(file), b"").expect("a file");
        }
        let tidal = cache.join("tidal");
        let options = options_from(&[
            ("TIDAL_CACHE", cache.to_str().expect("utf-8")),
            ("TIDAL_SHIM_TIDAL", tidal.to_str().expect("utf-8")),
            ("TIDAL_SHIM_HOTPLUG_SIZE", "1000M"),
        ])
        .expect("the options");
        assert_eq!(options.kernel, cache.join("vmlinux"));
        assert_eq!(options.busybox, cache.join("busybox/bin/busybox"));
        assert_eq!(options.hotplug_size, 1024 << 20);
        assert_eq!(options.run_dir, Path::new(RUN_DIR));
        assert_eq!(options.vm_memory(None), 512 << 20);
        assert_eq!(options.vm_memory(Some(1)), 256 << 20);
        assert_eq!(options.vm_memory(Some((512 << 20) + 1)), 640 << 20);
    }

    #[test]
    fn what_is_missing_or_malformed_is_named() {
        let error = options_from(&[
            ("TIDAL_SHIM_TIDAL", "/bin/sh"),
            ("TIDAL_SHIM_KERNEL", "/nonexistent/vmlinux"),
        ])
        .expect_err("no kernel");
        assert_eq!(
            error.to_string(),
            "TIDAL_SHIM_KERNEL: cannot find the guest kernel at /nonexistent/vmlinux"
        );
        let error = options_from(&[("TIDAL_SHIM_TIDAL", "/bin/sh"), ("TIDAL_SHIM_CPUS", "0")])
            .expect_err("no vCPUs");
        assert_eq!(
            error.to_string(),
            "TIDAL_SHIM_CPUS=0: not a number of vCPUs from 1 to 254"
        );
        let error = options_from(&[
            ("TIDAL_SHIM_TIDAL", "/bin/sh"),
            ("TIDAL_SHIM_KERNEL", "/bin/sh"),
            ("TIDAL_SHIM_BUSYBOX", "/bin/sh"),
            ("TIDAL_SHIM_HOTPLUG_SIZE", "12Q"),
        ])
        .expect_err("a size with an unknown unit");
        assert_eq!(
            error.to_string(),
            "TIDAL_SHIM_HOTPLUG_SIZE=12Q: not a size (a number of bytes, or with K, M, G or T)"
        );
    }
}
