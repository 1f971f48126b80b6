//! `tidal-pool`: one host's memory budget, shared among the Tidal VMs that register with it.
//!
//! - [`ledger`]: the budget and what each VM holds and has reserved; never overcommitted.
//! - [`store`]: the ledger kept on disk across the pool's restarts.
//! - [`moves`]: one VM shrinks and another grows by the same size, as one operation.
//! - [`events`]: every change of the ledger, streamed to subscribers.
//! - [`metrics`]: the same figures in the Prometheus text format.
//! - [`server`]: the REST API on a Unix socket, and the sweep for VMs that ended.
//! - [`process`]: whether a VM's process still runs.

pub mod events;
pub mod ledger;
pub mod metrics;
pub mod moves;
pub mod process;
pub mod server;
pub mod store;
