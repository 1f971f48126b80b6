//! HTTP by hand on the server's socket, for clients that misbehave: stop halfway, send too
//! much, trickle, or go away before the answer.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tidal_api::client::RawResponse;

/// How long a read waits for the server before the test fails: far beyond any limit a test
/// sets, so that a server that never answers or never closes fails the test, not hangs it.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One connection to the server, written and read byte for byte.
pub struct RawConnection {
    stream: UnixStream,
    /// What has been read and not yet returned.
    received: Vec<u8>,
}

impl RawConnection {
    pub fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket).unwrap();
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        Self {
            stream,
            received: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// [`RawConnection::send`] to a server that may have closed the connection already (it
    /// refuses connections beyond its limit at once).
    pub fn send_unless_closed(&mut self, bytes: &[u8]) {
        match self.stream.write_all(bytes) {
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) => {}
            other => other.unwrap(),
        }
    }

    /// Sends `bytes` one at a time, `pause` apart, from another thread, until they are all
    /// sent, the server closes the connection or the returned guard is dropped.
    pub fn trickle(&self, bytes: &[u8], pause: Duration) -> Trickle {
        let mut stream = self.stream.try_clone().unwrap();
        let bytes = bytes.to_vec();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::spawn({
            let stop = stop.clone();
            move || {
                for byte in bytes {
                    if stop.load(Ordering::Relaxed) || stream.write_all(&[byte]).is_err() {
                        return;
                    }
                    thread::sleep(pause);
                }
            }
        });
        Trickle {
            stop,
            thread: Some(thread),
        }
    }

    /// Reads one answer: its head, then as many body bytes as its `Content-Length` says.
    pub fn read_response(&mut self) -> RawResponse {
        let head_end = loop {
            if let Some(end) = find(&self.received, b"\r\n\r\n") {
                break end;
            }
            assert!(
                self.read_more(),
                "the connection closed after {:?}",
                String::from_utf8_lossy(&self.received)
            );
        };
        let head = String::from_utf8(self.received.drain(..head_end + 4).collect()).unwrap();
        let mut lines = head.trim_end().split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .unwrap_or_else(|| panic!("not an HTTP/1.1 status line: {status_line:?}"));
        let mut headers = HeaderMap::new();
        for line in lines {
            let (name, value) = line.split_once(':').unwrap();
            headers.append(
                HeaderName::try_from(name).unwrap(),
                HeaderValue::try_from(value.trim()).unwrap(),
            );
        }
        let length: usize = headers
            .get("content-length")
            .map_or(0, |length| length.to_str().unwrap().parse().unwrap());
        while self.received.len() < length {
            assert!(self.read_more(), "the connection closed inside a body");
        }
        RawResponse {
            status: StatusCode::from_bytes(status.as_bytes()).unwrap(),
            headers,
            body: self.received.drain(..length).collect::<Vec<u8>>().into(),
        }
    }

    /// Reads until the server closes the connection and returns what came.
    pub fn read_until_closed(&mut self) -> Vec<u8> {
        while self.read_more() {}
        std::mem::take(&mut self.received)
    }

    /// Reads what the server sent next; false once it has closed the connection. A reset
    /// counts as closed: Linux resets a Unix socket whose server closes it with bytes unread,
    /// as a server does when it stops reading a request.
    fn read_more(&mut self) -> bool {
        let mut buffer = [0; 4096];
        match self.stream.read(&mut buffer) {
            Ok(0) => false,
            Ok(count) => {
                self.received.extend_from_slice(&buffer[..count]);
                true
            }
            Err(error) if error.kind() == io::ErrorKind::ConnectionReset => false,
            Err(error) => panic!("no answer from the server: {error}"),
        }
    }
}

/// A trickle of bytes from [`RawConnection::trickle`]; dropping it stops the trickle.
pub struct Trickle {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Trickle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // A panic here would only hide the test's own failure.
            let _ = thread.join();
        }
    }
}

/// A request's line and headers, with `extra` header lines (each ending in `\r\n`) after
/// `Host`.
pub fn head(method: &str, path: &str, extra: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n")
}

/// A whole request with a JSON body.
pub fn request_with_body(method: &str, path: &str, body: &str) -> String {
    let length = format!("Content-Length: {}\r\n", body.len());
    format!("{}{body}", head(method, path, &length))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
