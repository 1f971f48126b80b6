//! What host memory backs a NUMA node's guest RAM, its boot memory and every DIMM hot-added to
//! it: private anonymous memory (the default), a shared memfd, huge pages from the host's
//! hugetlb pool, touched in advance or not, bound to a host NUMA node or not. `--memory` (one
//! node) and each `--numa` node take the same keys. [`super::ram`] maps what this describes.

use std::path::Path;

use thiserror::Error;
use tidal_api::size::format_size;
use tidal_api::MemoryBackendInfo;

use crate::layout::PAGE_SIZE;
use crate::options::{KeyValues, OptionError};

/// The keys that choose a backend, beside a flag's own.
pub const BACKEND_KEYS: [&str; 5] = [
    "shared",
    "hugepages",
    "hugepage_size",
    "prefault",
    "host_node",
];

/// Host nodes are bound through a one-word node mask.
const MAX_HOST_NODE: u32 = 63;

/// The host memory behind one node's guest RAM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryBackend {
    /// A memfd mapped `MAP_SHARED` (which another process could map too), not private memory.
    pub shared: bool,
    /// Pages from the host's hugetlb pool, reserved when the memory is mapped.
    pub huge_pages: Option<HugePageSize>,
    /// Every page is allocated when the memory is mapped, not when the guest first touches it.
    pub prefault: bool,
    /// Pages come only from this host NUMA node (`mbind` with `MPOL_BIND`).
    pub host_node: Option<u32>,
}

/// The x86 huge page sizes a hugetlb pool can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HugePageSize {
    TwoMiB,
    OneGiB,
}

impl HugePageSize {
    pub fn bytes(self) -> u64 {
        match self {
            Self::TwoMiB => 2 << 20,
            Self::OneGiB => 1 << 30,
        }
    }

    /// The pool's directory name under `/sys/kernel/mm/hugepages`.
    pub fn sysfs_name(self) -> String {
        format!("hugepages-{}kB", self.bytes() >> 10)
    }

    /// The pool's directory, whose `nr_hugepages` sizes it.
    pub fn sysfs_path(self) -> String {
        format!("/sys/kernel/mm/hugepages/{}", self.sysfs_name())
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BackendError {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error("{context}: hugepage_size: '{value}' is not 2M or 1G")]
    HugePageSize { context: String, value: String },
    #[error("{context}: hugepage_size needs hugepages=on")]
    SizeWithoutHugePages { context: String },
    #[error("{context}: hugepages: the host has no pool of {} huge pages (no {})", format_size(.page.bytes()), .page.sysfs_path())]
    NoPool { context: String, page: HugePageSize },
    #[error("{context}: host_node {node}: {reason}")]
    HostNode {
        context: String,
        node: u32,
        reason: String,
    },
    #[error("{what} {} is not a multiple of its {} huge pages", format_size(*.size), format_size(*.page))]
    Unaligned { what: String, size: u64, page: u64 },
}

impl MemoryBackend {
    /// The backend keys of a parsed `--memory` or `--numa` value (`context` starts its
    /// errors: `--memory`, `--numa: node 1`); the huge page pool and the `host_node` must exist.
    pub fn parse(kv: &KeyValues, context: &str) -> Result<Self, BackendError> {
        let context = context.to_owned();
        let huge_pages = kv.switch("hugepages")?;
        let huge_page_size = match kv.get("hugepage_size") {
            Some(_) if !huge_pages => return Err(BackendError::SizeWithoutHugePages { context }),
            None => HugePageSize::TwoMiB,
            Some(value) => match kv.size("hugepage_size")? {
                Some(2_097_152) => HugePageSize::TwoMiB,
                Some(1_073_741_824) => HugePageSize::OneGiB,
                _ => {
                    return Err(BackendError::HugePageSize {
                        context,
                        value: value.to_owned(),
                    })
                }
            },
        };
        if huge_pages && !Path::new(&huge_page_size.sysfs_path()).is_dir() {
            return Err(BackendError::NoPool {
                context,
                page: huge_page_size,
            });
        }
        let host_node = kv.number::<u32>("host_node")?;
        if let Some(node) = host_node {
            check_host_node(node).map_err(|reason| BackendError::HostNode {
                context: context.clone(),
                node,
                reason,
            })?;
        }
        Ok(Self {
            shared: kv.switch("shared")?,
            huge_pages: huge_pages.then_some(huge_page_size),
            prefault: kv.switch("prefault")?,
            host_node,
        })
    }

    /// The granule of this backend's memory: its huge page size, or the base page size.
    pub fn page_size(&self) -> u64 {
        self.huge_pages.map_or(PAGE_SIZE, HugePageSize::bytes)
    }

    /// Refuses a size of guest RAM (`what`, for the message) that is not whole pages of this
    /// backend: a hugetlb mapping cannot end inside a huge page.
    pub fn check_size(&self, what: &str, size: u64) -> Result<(), BackendError> {
        let page = self.page_size();
        if size.is_multiple_of(page) {
            Ok(())
        } else {
            Err(BackendError::Unaligned {
                what: what.to_owned(),
                size,
                page,
            })
        }
    }

    /// A memfd rather than anonymous memory.
    pub fn uses_memfd(&self) -> bool {
        self.shared || self.huge_pages.is_some()
    }
}

/// The backend as option text (`shared=on,prefault=on`; nothing for the default), which
/// parses back to the same backend.
impl std::fmt::Display for MemoryBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys = Vec::new();
        if self.shared {
            keys.push("shared=on".to_owned());
        }
        if let Some(page) = self.huge_pages {
            keys.push(format!(
                "hugepages=on,hugepage_size={}",
                format_size(page.bytes())
            ));
        }
        if self.prefault {
            keys.push("prefault=on".to_owned());
        }
        if let Some(node) = self.host_node {
            keys.push(format!("host_node={node}"));
        }
        f.write_str(&keys.join(","))
    }
}

/// What `vm.info` shows of a node's backend.
impl From<MemoryBackend> for MemoryBackendInfo {
    fn from(backend: MemoryBackend) -> Self {
        Self {
            shared: backend.shared,
            hugepage_size: backend.huge_pages.map(HugePageSize::bytes),
            prefault: backend.prefault,
            host_node: backend.host_node,
        }
    }
}

/// A host NUMA node `mbind` can bind to: one the host has, within the one-word mask.
fn check_host_node(node: u32) -> Result<(), String> {
    if node > MAX_HOST_NODE {
        return Err(format!(
            "host nodes above {MAX_HOST_NODE} are not supported"
        ));
    }
    let nodes = Path::new("/sys/devices/system/node");
    if nodes.join(format!("node{node}")).is_dir() {
        Ok(())
    } else {
        let online = std::fs::read_to_string(nodes.join("online"))
            .map(|text| format!("the host's nodes are {}", text.trim()))
            .unwrap_or_else(|_| "the host has no NUMA nodes to bind to".to_owned());
        Err(format!("the host has no such node ({online})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(text: &str) -> Result<MemoryBackend, BackendError> {
        MemoryBackend::parse(
            &KeyValues::parse("memory", text, &BACKEND_KEYS).unwrap(),
            "--memory",
        )
    }

    #[test]
    fn defaults_to_private_anonymous_memory() {
        assert_eq!(backend(""), Ok(MemoryBackend::default()));
        assert!(!MemoryBackend::default().uses_memfd());
        assert_eq!(MemoryBackend::default().page_size(), PAGE_SIZE);
    }

    #[test]
    fn parses_every_key() {
        let all = backend("shared=on,hugepages=on,hugepage_size=1G,prefault=on,host_node=0");
        assert_eq!(
            all,
            Ok(MemoryBackend {
                shared: true,
                huge_pages: Some(HugePageSize::OneGiB),
                prefault: true,
                host_node: Some(0),
            })
        );
        let printed = all.as_ref().unwrap().to_string();
        assert_eq!(backend(&printed), all, "{printed}");
        assert_eq!(MemoryBackend::default().to_string(), "");
        let huge = backend("hugepages=on").unwrap();
        assert_eq!(huge.huge_pages, Some(HugePageSize::TwoMiB));
        assert!(huge.uses_memfd() && !huge.shared);
        assert_eq!(huge.page_size(), 2 << 20);
        assert_eq!(HugePageSize::OneGiB.sysfs_name(), "hugepages-1048576kB");
    }

    #[test]
    fn refuses_what_cannot_be_mapped() {
        let message = |text| backend(text).unwrap_err().to_string();
        assert_eq!(
            message("hugepages=on,hugepage_size=4M"),
            "--memory: hugepage_size: '4M' is not 2M or 1G"
        );
        assert_eq!(
            message("hugepage_size=2M"),
            "--memory: hugepage_size needs hugepages=on"
        );
        assert_eq!(
            message("host_node=64"),
            "--memory: host_node 64: host nodes above 63 are not supported"
        );
        assert!(message("host_node=63").starts_with("--memory: host_node 63: the host has no"));
        assert!(message("prefault=1").contains("'1' is not on or off"));
        let huge = backend("hugepages=on,hugepage_size=1G").unwrap();
        assert_eq!(huge.check_size("DIMM", 2 << 30), Ok(()));
        assert_eq!(
            huge.check_size("node 1 memory", 1536 << 20)
                .unwrap_err()
                .to_string(),
            "node 1 memory 1536 MiB is not a multiple of its 1 GiB huge pages"
        );
    }
}
