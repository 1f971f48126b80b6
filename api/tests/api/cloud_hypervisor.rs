//! Cloud Hypervisor's clients against Tidal's server: the exact bodies `ch-remote` and Kata's
//! clh driver send, and the shape of answers their parsers need.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use tidal_api::{ResizeRequest, ResizeZoneRequest, VmInfo, ZoneId};

use crate::mock::{Call, MockVm, TestServer, GIB};
use crate::raw::{head, request_with_body};

/// Sends one request and reads the answer's head and body as bytes, as Cloud Hypervisor's
/// `api_client` does.
fn exchange(server: &TestServer, request: &str) -> String {
    let mut stream = UnixStream::connect(server.socket()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !answer_complete(&answer) {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(answer).unwrap()
}

/// A head, and as much body as its `Content-Length: ` (found by that literal) says.
fn answer_complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .split("\r\n")
        .find_map(|line| line.strip_prefix("Content-Length: "))
        .map_or(0, |n| n.parse::<usize>().unwrap());
    body.len() >= length
}

#[test]
fn ch_remote_resize_body_is_a_memory_resize() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let body = r#"{"desired_vcpus":null,"desired_ram":2147483648,"desired_balloon":null}"#;
    let answer = exchange(
        &server,
        &request_with_body("PUT", "/api/v1/vm.resize", body),
    );
    assert!(answer.starts_with("HTTP/1.1 204 \r\n"), "{answer:?}");
    assert_eq!(
        mock.calls(),
        [Call::Resize(ResizeRequest {
            desired_ram: Some(2 * GIB),
            ..ResizeRequest::default()
        })]
    );
}

/// `ch-remote shutdown-vmm` and Kata's clh driver, stopping a VM: a `PUT` without a body.
#[test]
fn vmm_shutdown_without_a_body_reaches_the_vmm() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let answer = exchange(&server, &head("PUT", "/api/v1/vmm.shutdown", ""));
    assert!(answer.starts_with("HTTP/1.1 204 \r\n"), "{answer:?}");
    assert_eq!(mock.calls(), [Call::Shutdown]);
}

#[test]
fn kata_vcpu_resize_body_reaches_the_vmm() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let body = r#"{"desired_vcpus":2}"#;
    let answer = exchange(
        &server,
        &request_with_body("PUT", "/api/v1/vm.resize", body),
    );
    assert!(answer.starts_with("HTTP/1.1 204 \r\n"), "{answer:?}");
    assert_eq!(
        mock.calls(),
        [Call::Resize(ResizeRequest {
            desired_vcpus: Some(2),
            ..ResizeRequest::default()
        })]
    );
}

#[test]
fn a_zone_named_by_string_is_its_node() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let body = r#"{"id":"1","desired_ram":3221225472}"#;
    let answer = exchange(
        &server,
        &request_with_body("PUT", "/api/v1/vm.resize-zone", body),
    );
    assert!(answer.starts_with("HTTP/1.1 204 \r\n"), "{answer:?}");
    let calls = mock.calls();
    let [Call::ResizeZone(ResizeZoneRequest {
        id, desired_ram, ..
    })] = calls.as_slice()
    else {
        panic!("{calls:?}");
    };
    assert_eq!((id, *desired_ram), (&ZoneId::Name("1".into()), 3 * GIB));
    assert_eq!(id.node(), Some(1));
}

#[test]
fn info_reads_as_cloud_hypervisors_clients_read_it() {
    let server = TestServer::start(MockVm::new());
    let answer = exchange(&server, &head("GET", "/api/v1/vm.info", ""));
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 \r\n"), "{head:?}");
    assert!(head.contains("\r\nContent-Length: "), "{head:?}");
    assert!(
        head.contains("\r\nContent-Type: application/json"),
        "{head:?}"
    );
    let info: serde_json::Value = serde_json::from_str(body).unwrap();
    // The fields Kata's clh driver reads.
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 2);
    assert_eq!(info["config"]["memory"]["size"], 3 * GIB);
    assert_eq!(info["config"]["memory"]["hotplug_size"], 8 * GIB);
    assert_eq!(info["config"]["memory"]["hotplug_method"], "Acpi");
    assert_eq!(info["state"], "Running");
    let _: VmInfo = serde_json::from_str(body).unwrap();
}
