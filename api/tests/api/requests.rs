//! Each endpoint's answers, good and bad, through the socket.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tidal_api::{
    AddMemoryRequest, ApiError, DimmInfo, DimmState, ErrorKind, PingResponse, RemoveMemoryRequest,
    ResizeRequest, ResizeZoneRequest, ZoneId,
};

use crate::mock::{
    error_message, sample_dimms, sample_info, Call, MockVm, PanickingVm, TestServer,
};

#[test]
fn ping_answers_with_the_version() {
    let server = TestServer::start(MockVm::new());
    let response = server.send("GET", "/api/v1/vmm.ping", None);
    assert_eq!(response.status, 200);
    assert_eq!(response.headers["content-type"], "application/json");
    let ping: PingResponse = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(ping.version, env!("CARGO_PKG_VERSION"));
}

#[test]
fn info_answers_with_the_vms_info() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    assert_eq!(server.client.info().unwrap(), sample_info());
    assert_eq!(mock.calls(), [Call::Info]);
}

#[test]
fn memory_lists_every_dimm() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let response = server.send("GET", "/api/v1/vm.memory", None);
    assert_eq!(response.status, 200);
    let dimms: Vec<DimmInfo> = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(dimms, sample_dimms());
    assert_eq!(mock.calls(), [Call::Memory]);
}

#[test]
fn resize_answers_204_once_the_vmm_is_done() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let response = server.send(
        "PUT",
        "/api/v1/vm.resize",
        Some(r#"{"desired_ram": 4294967296}"#),
    );
    assert_eq!(response.status, 204);
    assert!(response.body.is_empty());
    assert_eq!(
        mock.calls(),
        [Call::Resize(ResizeRequest {
            desired_ram: Some(4 << 30),
            timeout_secs: None,
            force: false,
            ..ResizeRequest::default()
        })]
    );
}

#[test]
fn resize_passes_the_timeout_and_wait_on() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let response = server.send(
        "PUT",
        "/api/v1/vm.resize",
        Some(r#"{"desired_ram": 4294967296, "timeout_secs": 30, "wait": true}"#),
    );
    assert_eq!(response.status, 204);
    assert_eq!(
        mock.calls(),
        [Call::Resize(ResizeRequest {
            desired_ram: Some(4 << 30),
            timeout_secs: Some(30),
            force: false,
            wait: true,
            ..ResizeRequest::default()
        })]
    );
}

#[test]
fn resize_zone_names_the_node() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let response = server.send(
        "PUT",
        "/api/v1/vm.resize-zone",
        Some(r#"{"id": 1, "desired_ram": 2147483648, "timeout_secs": 30, "wait": true}"#),
    );
    assert_eq!(response.status, 204);
    let request = ResizeZoneRequest {
        id: ZoneId::Node(1),
        desired_ram: 2 << 30,
        timeout_secs: Some(30),
        force: false,
        wait: true,
    };
    assert_eq!(mock.calls(), [Call::ResizeZone(request.clone())]);
    // Without the node's id the request means nothing.
    let response = server.send(
        "PUT",
        "/api/v1/vm.resize-zone",
        Some(r#"{"desired_ram": 2147483648}"#),
    );
    assert_eq!(response.status, 400);
    assert_eq!(mock.calls(), [Call::ResizeZone(request)]);
}

#[test]
fn remove_answers_204_once_the_guest_let_go() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let response = server.send(
        "PUT",
        "/api/v1/vm.memory.remove",
        Some(r#"{"id": "dimm1", "timeout_secs": 5}"#),
    );
    assert_eq!(response.status, 204);
    assert!(response.body.is_empty());
    let without_timeout = RemoveMemoryRequest {
        id: "dimm0".to_owned(),
        timeout_secs: None,
    };
    server.client.remove_memory(&without_timeout).unwrap();
    assert_eq!(
        mock.calls(),
        [
            Call::RemoveMemory(RemoveMemoryRequest {
                id: "dimm1".to_owned(),
                timeout_secs: Some(5),
            }),
            Call::RemoveMemory(without_timeout),
        ]
    );
}

#[test]
fn add_answers_200_with_the_new_dimm() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let response = server.send(
        "PUT",
        "/api/v1/vm.memory.add",
        Some(r#"{"size": 1073741824, "node": 1}"#),
    );
    assert_eq!(response.status, 200);
    let dimm: DimmInfo = serde_json::from_slice(&response.body).unwrap();
    assert_eq!(
        (dimm.size, dimm.node, dimm.state),
        (1 << 30, 1, DimmState::Added)
    );
    assert_eq!(
        mock.calls(),
        [Call::AddMemory(AddMemoryRequest {
            size: 1 << 30,
            node: 1,
            force: false,
        })]
    );
}

#[test]
fn add_without_a_node_uses_node_0() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let response = server.send("PUT", "/api/v1/vm.memory.add", Some(r#"{"size": 1024}"#));
    assert_eq!(response.status, 200);
    assert_eq!(
        mock.calls(),
        [Call::AddMemory(AddMemoryRequest {
            size: 1024,
            node: 0,
            force: false,
        })]
    );
}

/// [`assert_rejected_body_at`] on `vm.resize`, where the body checks are the same for all.
fn assert_rejected_body(body: Option<&str>, expected: &str) {
    assert_rejected_body_at("/api/v1/vm.resize", body, expected);
}

/// Sends a bad body to `path`; checks the 400, its message, and that the VMM was not called.
fn assert_rejected_body_at(path: &str, body: Option<&str>, expected: &str) {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let response = server.send("PUT", path, body);
    assert_eq!(response.status, 400, "{body:?}");
    let message = error_message(&response);
    assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    assert_eq!(mock.calls(), []);
}

#[test]
fn malformed_json_is_a_bad_request() {
    assert_rejected_body(Some(r#"{"desired_ram": "#), "invalid request body: EOF");
    assert_rejected_body(
        Some("resize please"),
        "invalid request body: expected value",
    );
}

#[test]
fn unknown_field_is_a_bad_request() {
    assert_rejected_body(
        Some(r#"{"desired_ram": 1, "foo": 2}"#),
        "invalid request body: unknown field `foo`, expected one of `desired_ram`, `desired_vcpus`, `desired_balloon`, `timeout_secs`, `force`",
    );
    assert_rejected_body(Some("42"), "invalid request body: expected a JSON object");
    assert_rejected_body_at(
        "/api/v1/vm.memory.remove",
        Some(r#"{"id": "dimm1", "size": 1}"#),
        "invalid request body: unknown field `size`, expected `id` or `timeout_secs`",
    );
}

#[test]
fn wrong_type_is_a_bad_request() {
    assert_rejected_body(
        Some(r#"{"desired_ram": "2G"}"#),
        r#"invalid request body: invalid type: string "2G", expected u64"#,
    );
    assert_rejected_body(Some("[1]"), "invalid request body: expected a JSON object");
}

#[test]
fn missing_body_or_field_is_a_bad_request() {
    assert_rejected_body(None, "missing request body: expected a JSON object");
    assert_rejected_body(Some(" \n"), "missing request body: expected a JSON object");
    assert_rejected_body_at(
        "/api/v1/vm.resize-zone",
        Some(r#"{"id": "1"}"#),
        "invalid request body: missing field `desired_ram`",
    );
    assert_rejected_body_at(
        "/api/v1/vm.memory.remove",
        Some(r#"{"timeout_secs": 5}"#),
        "invalid request body: missing field `id`",
    );
}

#[test]
fn oversized_body_is_refused_with_413() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let body = format!(
        r#"{{"desired_ram": 1, "pad": "{}"}}"#,
        "x".repeat(64 * 1024)
    );
    let response = server.send("PUT", "/api/v1/vm.resize", Some(&body));
    assert_eq!(response.status, 413);
    assert_eq!(
        error_message(&response),
        "request body too large: the limit is 65536 bytes"
    );
    assert_eq!(mock.calls(), []);
}

#[test]
fn vmm_errors_keep_their_status_and_message() {
    let cases = [
        (
            ErrorKind::BadRequest,
            400,
            "size 3 is not a multiple of the block size",
        ),
        (ErrorKind::NotFound, 404, "there is no NUMA node 7"),
        (
            ErrorKind::Conflict,
            409,
            "another hotplug operation is in flight",
        ),
        (
            ErrorKind::GuestRefused,
            422,
            "the guest refused dimm3 (_OST status 0x80)",
        ),
        (ErrorKind::Internal, 500, "cannot map guest memory"),
        (
            ErrorKind::HostMemory,
            507,
            "the host has 1 GiB of memory available, less than the 2 GiB asked for",
        ),
        (
            ErrorKind::Timeout,
            504,
            "the guest did not accept dimm3 within 10 s",
        ),
    ];
    for (kind, status, message) in cases {
        let mock = MockVm::new();
        mock.fail_with(ApiError::new(kind, message));
        let server = TestServer::start(mock.clone());
        for (path, body) in [
            ("/api/v1/vm.resize", r#"{"desired_ram": 1}"#),
            ("/api/v1/vm.memory.add", r#"{"size": 1}"#),
            ("/api/v1/vm.memory.remove", r#"{"id": "dimm3"}"#),
        ] {
            let response = server.send("PUT", path, Some(body));
            assert_eq!(response.status, status, "{kind:?} on {path}");
            assert_eq!(error_message(&response), message);
        }
    }
}

#[test]
fn unknown_path_is_a_json_404() {
    let server = TestServer::start(MockVm::new());
    for path in [
        "/",
        "/api/v1/vm.boot",
        "/api/v1/vm.info/extra",
        "/api/v2/vm.info",
    ] {
        let response = server.send("GET", path, None);
        assert_eq!(response.status, 404, "{path}");
        assert_eq!(
            error_message(&response),
            format!("no such endpoint: GET {path}")
        );
    }
}

#[test]
fn wrong_method_is_a_json_405() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let response = server.send("POST", "/api/v1/vm.info", Some("{}"));
    assert_eq!(response.status, 405);
    assert_eq!(response.headers["allow"], "GET,HEAD");
    assert_eq!(
        error_message(&response),
        "method POST is not allowed on /api/v1/vm.info; use GET"
    );
    let response = server.send("GET", "/api/v1/vm.resize", None);
    assert_eq!(response.status, 405);
    assert_eq!(response.headers["allow"], "PUT");
    assert_eq!(
        error_message(&response),
        "method GET is not allowed on /api/v1/vm.resize; use PUT"
    );
    assert_eq!(mock.calls(), []);
}

#[test]
fn a_panicking_vmm_call_answers_500_and_the_server_lives_on() {
    let server = TestServer::start(Arc::new(PanickingVm));
    let response = server.send("GET", "/api/v1/vm.info", None);
    assert_eq!(response.status, 500);
    assert!(error_message(&response).starts_with("the VMM failed to handle the request"));
    assert_eq!(server.send("GET", "/api/v1/vmm.ping", None).status, 200);
}

#[test]
fn ping_answers_while_a_resize_waits_for_the_guest() {
    let mock = MockVm::new();
    mock.hold();
    let server = TestServer::start(mock.clone());
    thread::scope(|scope| {
        let resize = scope.spawn(|| {
            server.client.resize(&ResizeRequest {
                desired_ram: Some(1 << 30),
                timeout_secs: None,
                force: false,
                ..ResizeRequest::default()
            })
        });
        mock.wait_for_calls(1);

        let started = Instant::now();
        assert_eq!(
            server.client.ping().unwrap().version,
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(server.client.info().unwrap(), sample_info());
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!resize.is_finished(), "the resize should still wait");

        mock.release();
        resize.join().unwrap().unwrap();
    });
}
