//! The events stream: events reach the client as they happen, one JSON line each, numbered; a
//! reconnecting client has what it missed again (`since`), a client that falls behind is told
//! what it missed, a client that goes away is unsubscribed, and a stopping server ends the
//! stream instead of waiting for it.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tidal_api::journal::{HISTORY, QUEUE};
use tidal_api::MAX_EVENT_STREAMS;
use tidal_api::{ClientError, HotplugEvent};

use crate::mock::{sample_events, Call, MockVm, PanickingVm, TestServer};

#[test]
fn events_arrive_in_order_as_they_happen() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let mut events = server.client.events().unwrap();
    assert_eq!(mock.calls(), [Call::Subscribe(None)]);
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
    assert_eq!(events.next().unwrap().unwrap().id, event.id);
}

#[test]
fn a_reconnecting_client_gets_the_events_after_the_last_it_saw() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let events = sample_events();
    for event in &events {
        mock.emit(event);
    }
    let mut again = server.client.events_since(2).unwrap();
    assert_eq!(mock.calls(), [Call::Subscribe(Some(2))]);
    let replayed: Vec<HotplugEvent> = again.by_ref().take(2).map(Result::unwrap).collect();
    assert_eq!(replayed, events[2..]);
    // Then the live ones, numbered on.
    mock.emit(&events[0]);
    assert_eq!(again.next().unwrap().unwrap().seq, 5);
}

#[test]
fn a_since_past_the_history_says_how_many_are_gone() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let event = &sample_events()[0];
    let published = HISTORY as u64 + 3;
    for _ in 0..published {
        mock.emit(event);
    }
    let mut again = server.client.events_since(0).unwrap();
    assert!(matches!(again.next(), Some(Err(ClientError::Lagged(3)))));
    assert_eq!(again.next().unwrap().unwrap().seq, 4);
}

#[test]
fn a_reader_that_falls_behind_is_told_what_it_missed_and_goes_on() {
    let mock = MockVm::new();
    let server = TestServer::start(mock.clone());
    let mut events = server.client.events().unwrap();
    let event = &sample_events()[0];
    // Far more than the queue and whatever the socket buffers hold before the server's
    // writes stall: the server is left with more than it may queue for this reader.
    let published = QUEUE as u64 * 40;
    for _ in 0..published {
        mock.emit(event);
    }
    let mut seen = 0u64;
    let mut missed = 0u64;
    let mut last = 0;
    while last < published {
        match events.next().unwrap() {
            Ok(event) => {
                assert!(event.seq > last, "{} after {last}", event.seq);
                last = event.seq;
                seen += 1;
            }
            Err(ClientError::Lagged(n)) => missed += n,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(missed > 0, "the reader missed nothing of {published}");
    assert_eq!(seen + missed, published);
}

#[test]
fn a_bad_query_is_refused() {
    let server = TestServer::start(MockVm::new());
    for query in ["since=x", "since=-1", "from=3", "since=1&since=2"] {
        let response = server.send("GET", &format!("/api/v1/events?{query}"), None);
        assert_eq!(response.status, 400, "{query}");
    }
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

/// Streams have a cap of their own, below the connection cap: one past it is answered 503 at
/// once, calls are still answered meanwhile, and a stream that ends frees its place.
#[test]
fn streams_beyond_their_cap_are_refused_and_leave_room_for_calls() {
    let server = TestServer::start(MockVm::new());
    let mut streams: Vec<_> = (0..MAX_EVENT_STREAMS)
        .map(|_| server.client.events().unwrap())
        .collect();
    let error = server.client.events().unwrap_err();
    let ClientError::Api { status, message } = error else {
        panic!("{error:?}");
    };
    assert_eq!(status, 503);
    assert!(message.contains("events streams are open"), "{message}");
    server.client.ping().unwrap();
    streams.pop();
    // The server learns of the closed stream when it next writes to it, or at once from the
    // hang-up: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let reopened = loop {
        match server.client.events() {
            Ok(stream) => break stream,
            Err(e) if Instant::now() > deadline => panic!("no stream after one closed: {e:?}"),
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    };
    drop(reopened);
}
