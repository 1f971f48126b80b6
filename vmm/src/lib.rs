//! Tidal's VMM: configuration, guest memory, Linux boot, vCPUs and the VM that ties them to the
//! devices and ACPI tables.

pub mod boot;
pub mod config;
pub mod console;
pub mod contain;
pub mod control;
pub mod cpu;
pub mod hotplug;
pub mod internal_error;
pub mod layout;
pub mod memory;
pub mod numa;
pub mod options;
pub mod pool_link;
pub mod reset_vector;
pub mod resize_plan;
pub mod seccomp;
pub mod serial_output;
pub mod signals;
pub mod vcpu;
pub mod vm;
