//! The `tidalctl` binary against a server on a mock VMM.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use tidal_api::{
    AddMemoryRequest, ApiError, ErrorKind, HotplugEvent, RemoveMemoryRequest, ResizeRequest,
    ResizeZoneRequest, VmInfo, ZoneId,
};

use crate::mock::{sample_events, sample_info, Call, MockVm, TestServer};

fn command(socket: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tidalctl"));
    command.arg("--api-socket").arg(socket).args(args);
    command
}

fn tidalctl(socket: &Path, args: &[&str]) -> Output {
    command(socket, args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "{output:?}");
    assert!(output.stderr.is_empty(), "{output:?}");
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn ping_prints_the_version() {
    let server = TestServer::start(MockVm::new());
    let output = tidalctl(server.socket(), &["ping"]);
    assert_eq!(
        stdout(&output),
        format!("tidal {} is up\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn shutdown_asks_the_vmm_to_stop() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let output = tidalctl(server.socket(), &["shutdown"]);
    assert_eq!(stdout(&output), "the VMM is shutting down\n");
    assert_eq!(mock.calls(), [Call::Shutdown]);
}

#[test]
fn info_json_prints_the_servers_json() {
    let server = TestServer::start(MockVm::new());
    let output = tidalctl(server.socket(), &["info", "--json"]);
    let text = stdout(&output);
    let info: VmInfo = serde_json::from_str(&text).unwrap();
    assert_eq!(info, sample_info());
    let raw = server.send("GET", "/api/v1/vm.info", None).body;
    assert_eq!(text, format!("{}\n", String::from_utf8_lossy(&raw)));
}

#[test]
fn info_prints_a_summary() {
    let server = TestServer::start(MockVm::new());
    let output = tidalctl(server.socket(), &["info"]);
    assert_eq!(
        stdout(&output),
        "state:      Running\n\
         cpus:       2\n\
         memory:     3 GiB (boot 1 GiB, hotplugged 2 GiB, max 9 GiB)\n\
         dimm slots: 8 (block size 128 MiB)\n\
         node 0:     2 GiB (boot 1 GiB, hotplugged 1 GiB, max 5 GiB)\n\
         node 1:     1 GiB (boot 0 B, hotplugged 1 GiB, max 4 GiB); shared, 2 MiB huge \
         pages, prefault, host node 1\n"
    );
}

#[test]
fn memory_prints_a_table() {
    let server = TestServer::start(MockVm::new());
    let output = tidalctl(server.socket(), &["memory"]);
    assert_eq!(
        stdout(&output),
        "ID     SLOT  NODE  BASE         SIZE   STATE      LAST_OST\n\
         dimm0  0     0     0x100000000  1 GiB  added      insert ok\n\
         dimm1  1     1     0x140000000  1 GiB  inserting  -\n"
    );
}

#[test]
fn resize_sends_the_size_in_bytes() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let output = tidalctl(server.socket(), &["resize", "--memory", "2G"]);
    assert_eq!(stdout(&output), "guest memory resized to 2 GiB\n");
    assert_eq!(
        mock.calls(),
        [Call::Resize(ResizeRequest {
            desired_ram: Some(2_147_483_648),
            timeout_secs: None,
            force: false,
            wait: true,
            ..ResizeRequest::default()
        })]
    );
}

#[test]
fn resize_of_a_node_is_a_resize_zone() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let output = tidalctl(
        server.socket(),
        &["resize", "--node", "1", "--memory", "2G", "--timeout", "30"],
    );
    assert_eq!(stdout(&output), "node 1 resized to 2 GiB\n");
    assert_eq!(
        mock.calls(),
        [Call::ResizeZone(ResizeZoneRequest {
            id: ZoneId::Node(1),
            desired_ram: 2 << 30,
            timeout_secs: Some(30),
            force: false,
            wait: true,
        })]
    );
}

#[test]
fn resize_without_waiting_says_so() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    tidalctl(server.socket(), &["resize", "--memory", "2G", "--no-wait"]);
    assert_eq!(
        mock.calls(),
        [Call::Resize(ResizeRequest {
            desired_ram: Some(2 << 30),
            ..ResizeRequest::default()
        })]
    );
}

#[test]
fn resize_sends_the_timeout() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let output = tidalctl(
        server.socket(),
        &["resize", "--memory", "3G", "--timeout", "30"],
    );
    assert_eq!(stdout(&output), "guest memory resized to 3 GiB\n");
    assert_eq!(
        mock.calls(),
        [Call::Resize(ResizeRequest {
            desired_ram: Some(3 << 30),
            timeout_secs: Some(30),
            force: false,
            wait: true,
            ..ResizeRequest::default()
        })]
    );
}

#[test]
fn remove_sends_the_id_and_timeout() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let output = tidalctl(server.socket(), &["remove", "dimm3", "--timeout", "5"]);
    assert_eq!(stdout(&output), "removed dimm3\n");
    let output = tidalctl(server.socket(), &["remove", "dimm1"]);
    assert_eq!(stdout(&output), "removed dimm1\n");
    assert_eq!(
        mock.calls(),
        [
            Call::RemoveMemory(RemoveMemoryRequest {
                id: "dimm3".to_owned(),
                timeout_secs: Some(5),
            }),
            Call::RemoveMemory(RemoveMemoryRequest {
                id: "dimm1".to_owned(),
                timeout_secs: None,
            }),
        ]
    );
}

/// Runs `tidalctl events` with `args`, has the mock emit its sample events, reads the line
/// tidalctl prints for each as it prints it, then stops the server, which must end tidalctl
/// quietly with nothing more printed.
fn follow_events(args: &[&str]) -> Vec<String> {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let mut child = command(server.socket(), &["events"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    mock.wait_for_calls(1);
    let mut printed = BufReader::new(child.stdout.take().unwrap());
    let lines = sample_events()
        .iter()
        .map(|event| {
            assert_eq!(mock.emit(event), 1);
            let mut line = String::new();
            printed.read_line(&mut line).unwrap();
            line
        })
        .collect();

    server.stop();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(output.stderr.is_empty(), "{output:?}");
    let mut rest = String::new();
    printed.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "");
    lines
}

#[test]
fn events_json_prints_each_events_line() {
    let lines = follow_events(&["--json"]);
    let events: Vec<HotplugEvent> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(events, sample_events());
    for (line, event) in lines.iter().zip(&events) {
        assert_eq!(
            *line,
            format!("{}\n", serde_json::to_string(event).unwrap())
        );
    }
}

#[test]
fn events_prints_a_line_per_event() {
    assert_eq!(
        follow_events(&[]),
        [
            "2026-11-29T21:30:00.000Z #1 dimm2 slot 2: empty -> inserting\n",
            "2026-11-29T21:30:00.042Z #2 dimm2 slot 2: inserting -> added \
             _OST(event 0x1, status 0x0)\n",
            "2026-11-29T21:30:03.202Z #3 dimm1 slot 1: added -> removing \
             _OST(event 0x3, status 0x84)\n",
            "2026-11-29T21:30:04.500Z #4 dimm1 slot 1: removing -> empty \
             _OST(event 0x3, status 0x0)\n",
        ]
    );
}

#[test]
fn add_sends_size_and_node() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let output = tidalctl(server.socket(), &["add", "--size", "512M", "--node", "1"]);
    assert_eq!(
        stdout(&output),
        "plugged dimm2: 512 MiB on node 1 at 0x180000000 (added)\n"
    );
    tidalctl(server.socket(), &["add", "--size", "1G", "--force"]);
    tidalctl(server.socket(), &["resize", "--memory", "8G", "--force"]);
    assert_eq!(
        mock.calls(),
        [
            Call::AddMemory(AddMemoryRequest {
                size: 512 << 20,
                node: 1,
                force: false,
            }),
            Call::AddMemory(AddMemoryRequest {
                size: 1 << 30,
                node: 0,
                force: true,
            }),
            Call::Resize(ResizeRequest {
                desired_ram: Some(8 << 30),
                timeout_secs: None,
                force: true,
                wait: true,
                ..ResizeRequest::default()
            })
        ]
    );
}

#[test]
fn a_server_error_is_printed_with_exit_code_1() {
    let mock = MockVm::new();
    mock.fail_with(ApiError::new(
        ErrorKind::Conflict,
        "another hotplug operation is in flight",
    ));
    let server = TestServer::start(mock);
    let output = tidalctl(server.socket(), &["resize", "--memory", "2G"]);
    assert_eq!(
        stderr(&output),
        "tidalctl: another hotplug operation is in flight\n"
    );
}

#[test]
fn a_missing_server_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let output = tidalctl(&socket, &["ping"]);
    let message = stderr(&output);
    assert!(
        message.starts_with(&format!(
            "tidalctl: cannot connect to API socket {}: ",
            socket.display()
        )),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1);
}

#[test]
fn a_bad_size_is_refused_before_any_request() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let output = tidalctl(server.socket(), &["resize", "--memory", "2X"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let message = String::from_utf8(output.stderr).unwrap();
    assert!(message.contains("invalid size '2X'"), "{message}");
    assert_eq!(mock.calls(), []);
}

#[test]
fn events_since_prints_the_held_events_after_it_first() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    for event in sample_events() {
        mock.emit(&event);
    }
    let mut child = command(server.socket(), &["events", "--since", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    mock.wait_for_calls(1);
    assert_eq!(mock.calls(), [Call::Subscribe(Some(2))]);
    let mut printed = BufReader::new(child.stdout.take().unwrap());
    let seqs: Vec<String> = (0..2)
        .map(|_| {
            let mut line = String::new();
            printed.read_line(&mut line).unwrap();
            line.split(' ').nth(1).unwrap().to_owned()
        })
        .collect();
    assert_eq!(seqs, ["#3", "#4"]);
    server.stop();
    assert!(child.wait().unwrap().success());
}
