//! The server against clients that misbehave: a head too big or too slow, a body too slow,
//! clients that go away halfway, more clients than it serves at once. None of them may keep
//! it from answering the others.

use std::thread;
use std::time::{Duration, Instant};

use tidal_api::server::MAX_HEADER_BYTES;
use tidal_api::{ResizeRequest, ServerLimits, VmState};

use crate::mock::{error_message, sample_events, Call, MockVm, TestServer};
use crate::raw::{head, request_with_body, RawConnection};

const PING: &str = "/api/v1/vmm.ping";
const RESIZE: &str = "/api/v1/vm.resize";

/// Timeouts a test can wait out; the rest as the VMM has them.
fn short_timeouts() -> ServerLimits {
    ServerLimits {
        header_read_timeout: Duration::from_millis(200),
        body_read_timeout: Duration::from_millis(300),
        ..ServerLimits::default()
    }
}

/// Timeouts no test waits for, so that only a client's going away can free its connection.
fn no_timeouts(max_connections: usize) -> ServerLimits {
    ServerLimits {
        header_read_timeout: Duration::from_secs(600),
        body_read_timeout: Duration::from_secs(600),
        max_connections,
        ..ServerLimits::default()
    }
}

/// Pings with a client that gives up after 10 s, far longer than any answer should take.
fn ping(server: &TestServer) -> Result<(), tidal_api::ClientError> {
    let client = server.client.clone().with_timeout(Duration::from_secs(10));
    client.ping().map(drop)
}

/// Pings until a connection is served: a server whose slots are all taken answers 503 for a
/// while. Gives up after 10 s, by which a gone client's connection is long closed.
fn ping_once_served(server: &TestServer) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match ping(server) {
            Ok(()) => return,
            Err(tidal_api::ClientError::Api { status, .. })
                if status == 503 && std::time::Instant::now() < deadline =>
            {
                thread::sleep(Duration::from_millis(50));
            }
            Err(error) => panic!("ping failed: {error}"),
        }
    }
}

#[test]
fn a_head_over_the_size_limit_is_answered_431_and_the_connection_closed() {
    let server = TestServer::start(MockVm::new());
    let padded_head = |size: usize| {
        let pad = format!("X-Pad: {}\r\n", "x".repeat(size));
        head("GET", PING, &pad)
    };

    let mut connection = RawConnection::connect(server.socket());
    connection.send(padded_head(MAX_HEADER_BYTES + 4096).as_bytes());
    let response = connection.read_response();
    assert_eq!(response.status, 431);
    assert!(response.body.is_empty());
    assert_eq!(connection.read_until_closed(), b"");

    // Just under the limit is fine.
    let mut connection = RawConnection::connect(server.socket());
    connection.send(padded_head(MAX_HEADER_BYTES - 200).as_bytes());
    assert_eq!(connection.read_response().status, 200);
}

#[test]
fn a_head_that_does_not_arrive_in_time_is_cut_off_without_an_answer() {
    let limits = short_timeouts();
    let server = TestServer::start_with_limits(MockVm::new(), limits);
    let whole_head = head("GET", PING, "");
    for (what, sent) in [
        ("nothing", ""),
        ("half a request line", "GET /api/v1/vm"),
        (
            "half the headers",
            "GET /api/v1/vmm.ping HTTP/1.1\r\nHost: local",
        ),
    ] {
        let started = Instant::now();
        let mut connection = RawConnection::connect(server.socket());
        connection.send(sent.as_bytes());
        assert_eq!(connection.read_until_closed(), b"", "{what}");
        assert!(started.elapsed() >= limits.header_read_timeout, "{what}");
    }

    // A byte every 20 ms would take over a second: the timeout counts for the whole head.
    let started = Instant::now();
    let mut connection = RawConnection::connect(server.socket());
    let _trickle = connection.trickle(whole_head.as_bytes(), Duration::from_millis(20));
    assert_eq!(connection.read_until_closed(), b"", "a trickled head");
    assert!(started.elapsed() >= limits.header_read_timeout);

    // A kept-alive connection idle between requests stays open (Cloud Hypervisor's client
    // keeps one for the VM's life), and its next request that stalls halfway is cut off.
    let mut connection = RawConnection::connect(server.socket());
    for _ in 0..2 {
        connection.send(whole_head.as_bytes());
        assert_eq!(connection.read_response().status, 200);
        std::thread::sleep(limits.header_read_timeout * 3);
    }
    let started = Instant::now();
    connection.send(b"GET /api/v1/vmm.ping HTTP/1.1\r\n");
    assert_eq!(connection.read_until_closed(), b"", "a later head cut off");
    assert!(started.elapsed() >= limits.header_read_timeout);

    ping(&server).unwrap();
}

#[test]
fn a_body_that_does_not_arrive_in_time_is_answered_408() {
    let limits = short_timeouts();
    let mock = MockVm::new();
    let server = TestServer::start_with_limits(mock.clone(), limits);
    let body = format!(r#"{{"desired_ram": 1073741824}}{}"#, " ".repeat(200));
    let declared = format!("Content-Length: {}\r\n", body.len());
    let first_half = &body[..body.len() / 2];

    // Half the body, then nothing.
    let mut stalled = RawConnection::connect(server.socket());
    stalled.send(head("PUT", RESIZE, &declared).as_bytes());
    stalled.send(first_half.as_bytes());
    // A byte every 20 ms, never stopping for long, would take 4 s in all: the timeout counts
    // for the whole body, not between its bytes.
    let mut trickled = RawConnection::connect(server.socket());
    trickled.send(head("PUT", RESIZE, &declared).as_bytes());
    let _trickle = trickled.trickle(body.as_bytes(), Duration::from_millis(20));

    for (what, connection) in [("stalled", &mut stalled), ("trickled", &mut trickled)] {
        let response = connection.read_response();
        assert_eq!(response.status, 408, "{what}");
        assert_eq!(
            error_message(&response),
            "request body not received within 300ms"
        );
        assert_eq!(connection.read_until_closed(), b"", "{what}");
    }
    assert_eq!(mock.calls(), []);
    ping(&server).unwrap();
}

#[test]
fn answers_that_take_longer_than_the_timeouts_are_not_cut_off() {
    let limits = short_timeouts();
    let mock = MockVm::new();
    mock.hold();
    let server = TestServer::start_with_limits(mock.clone(), limits);
    let mut events = server.client.events().unwrap();
    thread::scope(|scope| {
        let resize = scope.spawn(|| {
            server.client.resize(&ResizeRequest {
                desired_ram: Some(2 << 30),
                timeout_secs: None,
                force: false,
                ..ResizeRequest::default()
            })
        });
        mock.wait_for_calls(2);
        // Well past both timeouts: only the time to answer is left, and it is not limited.
        let longest = limits.header_read_timeout.max(limits.body_read_timeout);
        thread::sleep(3 * longest);
        assert!(!resize.is_finished());
        mock.release();
        resize.join().unwrap().unwrap();
    });
    let event = &sample_events()[0];
    assert_eq!(mock.emit(event), 1);
    assert_eq!(&events.next().unwrap().unwrap(), event);
}

#[test]
fn clients_that_go_away_halfway_leave_the_server_serving() {
    // One connection at a time and no timeouts: a connection the server failed to drop when
    // its client went away would keep every later one waiting.
    let mock = MockVm::new();
    let server = TestServer::start_with_limits(mock.clone(), no_timeouts(1));
    let body = r#"{"desired_ram": 1073741824}"#;
    let declared = format!("Content-Length: {}\r\n", body.len());
    let halves = [
        "".to_owned(),
        "GET /api/v1/vm".to_owned(),
        "GET /api/v1/vmm.ping HTTP/1.1\r\nHost: local".to_owned(),
        head("PUT", RESIZE, &declared),
        format!("{}{}", head("PUT", RESIZE, &declared), &body[..10]),
        // A whole request whose answer nobody reads.
        head("GET", "/api/v1/vm.info", ""),
    ];
    for half in halves.iter().cycle().take(200) {
        let mut connection = RawConnection::connect(server.socket());
        connection.send_unless_closed(half.as_bytes());
    }
    ping_once_served(&server);
    assert_eq!(server.client.info().unwrap().state, VmState::Running);
    assert!(mock.calls().iter().all(|call| *call == Call::Info));
}

#[test]
fn a_client_gone_before_its_resize_is_answered_does_not_hold_the_server() {
    let mock = MockVm::new();
    mock.hold();
    // One connection at a time: the resize's must be dropped for the ping to be served.
    let server = TestServer::start_with_limits(mock.clone(), no_timeouts(1));
    let mut connection = RawConnection::connect(server.socket());
    connection.send(request_with_body("PUT", RESIZE, r#"{"desired_ram": 1073741824}"#).as_bytes());
    mock.wait_for_calls(1);
    drop(connection);

    ping(&server).unwrap();
    // The guest takes its time; the VMM's answer then goes nowhere, and the server is fine.
    mock.release();
    let request = ResizeRequest {
        desired_ram: Some(2 << 30),
        timeout_secs: None,
        force: false,
        ..ResizeRequest::default()
    };
    server.client.resize(&request).unwrap();
    assert_eq!(mock.calls().len(), 2);
}

/// Two connections kept alive, each with an answer, so that a server limited to two has taken
/// both.
fn take_both_slots(server: &TestServer) -> Vec<RawConnection> {
    (0..2)
        .map(|_| {
            let mut connection = RawConnection::connect(server.socket());
            connection.send(head("GET", PING, "").as_bytes());
            assert_eq!(connection.read_response().status, 200);
            connection
        })
        .collect()
}

#[test]
fn clients_over_the_connection_limit_wait_a_moment_for_a_free_connection() {
    let server = TestServer::start_with_limits(MockVm::new(), no_timeouts(2));
    let mut kept = take_both_slots(&server);

    thread::scope(|scope| {
        let waiting = scope.spawn(|| ping(&server));
        // Time for a wrongly served ping to be answered, well within the wait for a slot.
        thread::sleep(Duration::from_millis(300));
        assert!(!waiting.is_finished(), "a third connection was served");

        drop(kept.pop());
        waiting.join().unwrap().unwrap();
    });
    // The connection still open was not disturbed.
    let connection = &mut kept[0];
    connection.send(head("GET", PING, "").as_bytes());
    assert_eq!(connection.read_response().status, 200);
}

#[test]
fn clients_over_the_connection_limit_are_answered_503_once_the_wait_is_over() {
    let server = TestServer::start_with_limits(MockVm::new(), no_timeouts(2));
    let mut kept = take_both_slots(&server);
    // Two wait for a slot (as many as are served) and are refused after the wait; the fifth
    // finds no room to wait and is refused at once, maybe before its request is sent: it
    // only reads.
    let mut over: Vec<RawConnection> = (0..3)
        .map(|_| RawConnection::connect(server.socket()))
        .collect();
    let refused_at_once = over.pop().unwrap().read_response();
    for connection in &mut over {
        connection.send(head("GET", PING, "").as_bytes());
    }
    let started = std::time::Instant::now();
    for mut connection in over {
        let answer = connection.read_response();
        assert_eq!(answer.status, 503, "{answer:?}");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "refused before the wait"
    );
    assert_eq!(refused_at_once.status, 503, "{refused_at_once:?}");
    let error: serde_json::Value = serde_json::from_slice(&refused_at_once.body).unwrap();
    assert_eq!(
        error["error"],
        "the API server is serving 2 connections, the most it serves at once; try again later"
    );
    // The served connections were not disturbed, and a slot freed is taken again.
    kept[0].send(head("GET", PING, "").as_bytes());
    assert_eq!(kept[0].read_response().status, 200);
    drop(kept.pop());
    ping(&server).unwrap();
}
