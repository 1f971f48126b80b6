//! The API through a real Unix socket: the server against a mock VMM, its events stream, its
//! limits against misbehaving clients, its socket file, its agreement with `openapi.yaml`, and
//! the `tidalctl` binary.

// clippy.toml allows `unwrap` in `#[test]` functions but not in the helpers of an integration
// test crate; here a failed unwrap is a failed test, as in the tests themselves.
#![allow(clippy::unwrap_used)]

mod cloud_hypervisor;
mod events;
mod limits;
mod logging;
mod mock;
mod openapi;
mod raw;
mod requests;
mod socket;
mod tidalctl;
