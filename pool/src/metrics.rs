//! `GET /metrics`: what `GET /pool` shows, in the Prometheus text format, so that an operator's
//! dashboard can plot the budget and each VM's share of it.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tidal_api::pool::PoolView;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmLabel {
    vm: String,
}

/// Encodes `view` (a fresh registry each time: a VM that left has no series any more).
pub fn render(view: &PoolView) -> String {
    let mut registry = Registry::with_prefix("tidal_pool");
    let pool_gauges = [
        ("budget", "The host memory the pool shares out", view.budget),
        ("held", "What the VMs hold together", view.held),
        ("free", "What is left for hot-adds", view.free),
    ];
    for (name, help, value) in pool_gauges {
        let gauge = Gauge::<i64>::default();
        gauge.set(bytes(value));
        registry.register_with_unit(name, help, Unit::Bytes, gauge);
    }
    type PerVm = fn(&tidal_api::pool::PoolVmView) -> u64;
    let vm_gauges: [(&str, &str, PerVm); 6] = [
        ("vm_boot", "A VM's fixed boot RAM", |v| v.boot),
        ("vm_plugged", "A VM's plugged DIMMs", |v| v.plugged),
        ("vm_reserved", "A VM's hot-adds under way", |v| v.reserved),
        ("vm_promised", "Set aside for a VM by a move", |v| {
            v.promised
        }),
        ("vm_min", "The least a VM is shrunk to for others", |v| {
            v.min
        }),
        ("vm_max", "The most a VM may hold", |v| v.max),
    ];
    for (name, help, value) in vm_gauges {
        let family = Family::<VmLabel, Gauge>::default();
        for vm in &view.vms {
            family.get_or_create(&label(vm)).set(bytes(value(vm)));
        }
        registry.register_with_unit(name, help, Unit::Bytes, family);
    }
    let priority = Family::<VmLabel, Gauge>::default();
    for vm in &view.vms {
        priority.get_or_create(&label(vm)).set(vm.priority.into());
    }
    registry.register("vm_priority", "Higher takes from lower", priority);
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, &registry);
    text
}

fn label(vm: &tidal_api::pool::PoolVmView) -> VmLabel {
    VmLabel {
        vm: vm.name.clone(),
    }
}

fn bytes(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidal_api::pool::PoolVmView;

    #[test]
    fn the_text_holds_the_pool_and_each_vm() {
        let view = PoolView {
            budget: 3 << 30,
            held: 2 << 30,
            free: 1 << 30,
            vms: vec![PoolVmView {
                name: "web".to_owned(),
                socket: "/run/web.sock".to_owned(),
                pid: 7,
                boot: 1 << 30,
                plugged: 1 << 30,
                reserved: 0,
                promised: 0,
                min: 1 << 30,
                max: 3 << 30,
                priority: -2,
            }],
        };
        let text = render(&view);
        for line in [
            "tidal_pool_budget_bytes 3221225472",
            "tidal_pool_free_bytes 1073741824",
            "tidal_pool_vm_plugged_bytes{vm=\"web\"} 1073741824",
            "tidal_pool_vm_priority{vm=\"web\"} -2",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
