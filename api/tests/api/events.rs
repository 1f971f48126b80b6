//! The events stream: events reach the client as they happen, one JSON line each, a client that
//! goes away is unsubscribed, and a stopping server ends the stream instead of waiting for it.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tidal_api::{ClientError, HotplugEvent};

use crate::mock::{sample_events, Call, MockVm, PanickingVm, TestServer};

#[test]
fn events_arrive_in_order_as_they_happen() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let mut events = server.client.events().unwrap();
    assert_eq!(mock.calls(), [Call::Subscribe]);
    // One at a time: each is read before the next happens.
    for event in sample_events() {
        assert_eq!(mock.emit(&event), 1);
        assert_eq!(events.next().unwrap().unwrap(), event);
    }
}

#[test]
fn the_stream_is_ndjson_and_ends_when_the_server_stops() {
    let mock = MockVm::new();
    let response =
        TestServer::start(mock.clone()).stream_until_stopped(&mock, "GET", "/api/v1/events");
    // A whole answer (the stream ended rather than being cut off with the connection) with a
    // line per event.
    assert_eq!(response.status, 200);
    assert_eq!(response.headers["content-type"], "application/x-ndjson");
    let events = sample_events();
    let lines: String = events
        .iter()
        .map(|event| format!("{}\n", serde_json::to_string(event).unwrap()))
        .collect();
    assert_eq!(String::from_utf8_lossy(&response.body), lines);
    assert_eq!(
        mock.emit(&events[0]),
        0,
        "the ended stream's sink returns false"
    );
}

#[test]
fn the_client_sees_the_end_of_the_stream() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let mut events = server.client.events().unwrap();
    let event = &sample_events()[0];
    mock.emit(event);
    server.stop();
    assert_eq!(&events.next().unwrap().unwrap(), event);
    assert!(events.next().is_none());
}

#[test]
fn a_client_that_goes_away_is_unsubscribed() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let mut events = server.client.events().unwrap();
    let event = &sample_events()[0];
    assert_eq!(mock.emit(event), 1);
    assert_eq!(&events.next().unwrap().unwrap(), event);

    drop(events);
    // The server notices the closed connection on its own time; the next event after that
    // finds the sink's reader gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while mock.emit(event) != 0 {
        assert!(Instant::now() < deadline, "the sink still accepts events");
        thread::sleep(Duration::from_millis(10));
    }
    // The server is fine and serves new subscribers.
    let mut events = server.client.events().unwrap();
    assert_eq!(mock.emit(event), 1);
    assert_eq!(&events.next().unwrap().unwrap(), event);
}

#[test]
fn every_subscriber_gets_every_event() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let streams = [
        server.client.events().unwrap(),
        server.client.events().unwrap(),
    ];
    let events = sample_events();
    for event in &events {
        assert_eq!(mock.emit(event), 2);
    }
    for stream in streams {
        let received: Vec<HotplugEvent> = stream.take(events.len()).map(Result::unwrap).collect();
        assert_eq!(received, events);
    }
}

#[test]
fn a_failed_subscription_is_an_error_answer() {
    let server = TestServer::start(Arc::new(PanickingVm));
    let error = server.client.events().unwrap_err();
    let ClientError::Api { status, message } = error else {
        panic!("{error:?}");
    };
    assert_eq!(status, 500);
    assert!(
        message.starts_with("the VMM failed to handle the request"),
        "{message}"
    );
}
