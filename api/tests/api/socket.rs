//! The socket file: owner-only, never stolen from a live server or replacing another file,
//! reused when stale, removed on shutdown.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use tidal_api::{ResizeRequest, ServerError, SocketError};

use crate::mock::{MockVm, TestServer};

/// The names in a directory.
fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn socket_is_owner_only_and_leaves_nothing_else_behind() {
    let server = TestServer::start(MockVm::new());
    let metadata = fs::symlink_metadata(server.socket()).unwrap();
    assert!(metadata.file_type().is_socket());
    assert_eq!(metadata.permissions().mode() & 0o7777, 0o600);
    assert_eq!(entries(&server.dir()), ["api.sock"]);
}

#[test]
fn shutdown_removes_the_socket() {
    let server = TestServer::start(MockVm::new());
    let socket = server.socket().to_owned();
    let dir = server.stop();
    assert!(!socket.exists());
    assert_eq!(entries(dir.path()), Vec::<String>::new());
}

#[test]
fn a_live_socket_is_refused() {
    let first = TestServer::start(MockVm::new());
    let error =
        tidal_api::start(first.socket(), MockVm::new(), std::sync::Arc::new(|| ())).unwrap_err();
    assert!(matches!(
        error,
        ServerError::Socket(SocketError::InUse { .. })
    ));
    assert_eq!(
        error.to_string(),
        format!(
            "socket {} is in use by another process",
            first.socket().display()
        )
    );
    // The first server still serves.
    assert!(first.client.ping().is_ok());
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    drop(UnixListener::bind(&path).unwrap());
    assert!(
        path.exists(),
        "the stale socket file stays after its listener is gone"
    );

    let server = tidal_api::start(&path, MockVm::new(), std::sync::Arc::new(|| ())).unwrap();
    assert!(tidal_api::ApiClient::new(&path).ping().is_ok());
    let mode = fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o600);
    server.shutdown();
}

#[test]
fn another_kind_of_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    fs::write(&path, "not a socket").unwrap();
    let error = tidal_api::start(&path, MockVm::new(), std::sync::Arc::new(|| ())).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        )
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), "not a socket");

    fs::remove_file(&path).unwrap();
    fs::create_dir(&path).unwrap();
    let error = tidal_api::start(&path, MockVm::new(), std::sync::Arc::new(|| ())).unwrap_err();
    assert!(matches!(
        error,
        ServerError::Socket(SocketError::NotASocket { .. })
    ));
}

#[test]
fn a_missing_directory_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir/api.sock");
    let error = tidal_api::start(&path, MockVm::new(), std::sync::Arc::new(|| ())).unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("cannot create socket {}: ", path.display())),
        "{message}"
    );
}

#[test]
fn shutdown_does_not_wait_for_a_stuck_vmm_call() {
    let mock = MockVm::new();
    mock.hold();
    let server = TestServer::start(mock.clone());
    let client = server.client.clone();
    let resize = std::thread::spawn(move || {
        client.resize(&ResizeRequest {
            desired_ram: Some(1),
            timeout_secs: None,
            force: false,
            ..ResizeRequest::default()
        })
    });
    mock.wait_for_calls(1);

    let started = Instant::now();
    server.stop();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        resize.join().unwrap().is_err(),
        "the client sees the connection close"
    );
    mock.release();
}
