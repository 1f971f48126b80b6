//! What the runtime needs besides the container: Tidal, the guest kernel, a static busybox for
//! the init, and how big VMs are. Each comes from the runtime's configuration file (the
//! `ConfigPath` of containerd's runtime options), else from an environment variable of the
//! shim's (which it inherits from containerd), else from where the project's guest scripts put
//! it, so a containerd config naming only the runtime type runs containers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedInputStream;

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
    #[error("cannot read the runtime's configuration {path}: {message}")]
    ConfigFile { path: PathBuf, message: String },
    #[error("the runtime's options ({0}) are not containerd's runtimeoptions.v1.Options")]
    RuntimeOptions(String),
}

/// The keys of the runtime's configuration file, and the environment variable each stands for.
const FILE_KEYS: [(&str, &str); 10] = [
    ("tidal", "TIDAL_SHIM_TIDAL"),
    ("kernel", "TIDAL_SHIM_KERNEL"),
    ("busybox", "TIDAL_SHIM_BUSYBOX"),
    ("cache", "TIDAL_CACHE"),
    ("cpus", "TIDAL_SHIM_CPUS"),
    ("boot_memory", "TIDAL_SHIM_BOOT_MEMORY"),
    ("default_memory", "TIDAL_SHIM_DEFAULT_MEMORY"),
    ("hotplug_size", "TIDAL_SHIM_HOTPLUG_SIZE"),
    ("run_dir", "TIDAL_SHIM_RUN_DIR"),
    ("pool", "TIDAL_SHIM_POOL"),
];

/// The type of the options containerd's CRI plugin (and `ctr run --runtime-config-path`)
/// gives a runtime other than runc: `{type_url = 1, config_path = 2}`.
const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

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
    /// A host memory pool's socket (`tidal-pool`): each VM joins it, named for its container.
    pub pool: Option<PathBuf>,
}

impl RuntimeOptions {
    /// The options from the configuration file at `config` (if any), then the environment,
    /// with the defaults for what neither sets.
    pub fn load(config: Option<&Path>) -> Result<Self, OptionsError> {
        let file = match config {
            Some(path) => read_config_file(path)?,
            None => HashMap::new(),
        };
        Self::from_lookup(|name| file.get(name).cloned().or_else(|| std::env::var(name).ok()))
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
            pool: var("TIDAL_SHIM_POOL").map(PathBuf::from),
        })
    }

    /// The VM size for a container limited to `limit` bytes (none: the default), in whole
    /// blocks and never below the boot memory.
    pub fn vm_memory(&self, limit: Option<u64>) -> u64 {
        round_up(limit.unwrap_or(self.default_memory)).max(self.boot_memory)
    }
}

/// The `ConfigPath` of the runtime options containerd sent with a task, if any.
pub fn config_path(options: Option<&Any>) -> Result<Option<PathBuf>, OptionsError> {
    let Some(options) = options.filter(|o| !o.type_url.is_empty() || !o.value.is_empty()) else {
        return Ok(None);
    };
    if !options.type_url.ends_with(RUNTIME_OPTIONS_TYPE) {
        return Err(OptionsError::RuntimeOptions(options.type_url.clone()));
    }
    let bad = |e: containerd_shim::protos::protobuf::Error| {
        OptionsError::RuntimeOptions(format!("{}: {e}", options.type_url))
    };
    let mut input = CodedInputStream::from_bytes(&options.value);
    let mut path = String::new();
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(bad)? {
        if tag == (2 << 3 | 2) {
            path = input.read_string().map_err(bad)?;
        } else {
            let wire_type = containerd_shim::protos::protobuf::rt::WireType::new(tag & 7)
                .ok_or_else(|| OptionsError::RuntimeOptions(options.type_url.clone()))?;
            input.skip_field(wire_type).map_err(bad)?;
        }
    }
    Ok((!path.is_empty()).then(|| PathBuf::from(path)))
}

/// The runtime's configuration file at `path` (TOML: the keys of [`FILE_KEYS`], each a string
/// or, for numbers and sizes, an integer), as the environment variables it stands for.
fn read_config_file(path: &Path) -> Result<HashMap<&'static str, String>, OptionsError> {
    let error = |message: String| OptionsError::ConfigFile {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| error(e.message().to_owned()))?;
    table
        .into_iter()
        .map(|(key, value)| {
            let name = FILE_KEYS
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, name)| *name)
                .ok_or_else(|| {
                    let known: Vec<_> = FILE_KEYS.iter().map(|(k, _)| *k).collect();
                    error(format!("unknown key {key} (known: {})", known.join(", ")))
                })?;
            let value = match value {
                toml::Value::String(text) => text,
                toml::Value::Integer(n) => n.to_string(),
                other => {
                    let kind = other.type_str();
                    return Err(error(format!(
                        "{key} is a {kind}: not a string or a number"
                    )));
                }
            };
            Ok((name, value))
        })
        .collect()
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
    fn the_configuration_file_comes_before_the_environment() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        for file in ["vmlinux", "busybox", "tidal"] {
            std::fs::write(dir.path().join(file), b"").expect("a file");
        }
        let config = dir.path().join("tidal-shim.toml");
        let at = |name| dir.path().join(name).display().to_string();
        std::fs::write(
            &config,
            format!(
                "tidal = \"{}\"\nkernel = \"{}\"\nbusybox = \"{}\"\n\
                 cpus = 2\nhotplug_size = \"2G\"\ndefault_memory = 805306368\n",
                at("tidal"),
                at("vmlinux"),
                at("busybox")
            ),
        )
        .expect("the configuration file");
        let options = RuntimeOptions::load(Some(&config)).expect("the options");
        assert_eq!((options.cpus, options.hotplug_size), (2, 2 << 30));
        assert_eq!(options.default_memory, 768 << 20);
        assert_eq!(options.kernel, dir.path().join("vmlinux"));

        std::fs::write(&config, "kernel = \"/k\"\nmemory = \"1G\"\n").expect("rewritten");
        let error = RuntimeOptions::load(Some(&config)).expect_err("an unknown key");
        assert!(
            error
                .to_string()
                .contains("unknown key memory (known: tidal,"),
            "{error}"
        );
        let error = RuntimeOptions::load(Some(&dir.path().join("none"))).expect_err("no file");
        assert!(error
            .to_string()
            .starts_with("cannot read the runtime's configuration"));
    }

    #[test]
    fn the_config_path_comes_from_containerds_runtime_options() {
        // runtimeoptions.v1.Options {type_url: "x", config_path: "/etc/tidal.toml"}.
        let mut value = vec![0x0a, 1, b'x', 0x12, 15];
        value.extend_from_slice(b"/etc/tidal.toml");
        let options = Any {
            type_url: "type.googleapis.com/runtimeoptions.v1.Options".to_owned(),
            value,
            ..Any::default()
        };
        let path = config_path(Some(&options)).expect("options that decode");
        assert_eq!(path, Some(PathBuf::from("/etc/tidal.toml")));
        assert_eq!(config_path(None).expect("no options"), None);
        assert_eq!(config_path(Some(&Any::default())).expect("empty"), None);
        let runc = Any {
            type_url: "containerd.runc.v1.Options".to_owned(),
            ..Any::default()
        };
        assert!(config_path(Some(&runc)).is_err());
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
