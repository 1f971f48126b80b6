//! `containerd-shim-tidal-v2`: containerd's runtime `io.containerd.tidal.v2`, whose containers
//! are Tidal VMs (see the crate's documentation and docs/kubernetes.md).

fn main() {
    containerd_shim::run::<tidal_shim::service::Runtime>(tidal_shim::service::RUNTIME_ID, None);
}
