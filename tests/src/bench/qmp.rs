//! A small blocking client for QEMU's machine protocol (QMP) over its Unix socket, enough to
//! plug and unplug DIMMs: it reads the greeting, negotiates capabilities, executes commands and
//! keeps the asynchronous events that arrive in between, so a caller can wait for one (such as
//! `DEVICE_DELETED`) later. Every read has a deadline: nothing here blocks forever.
//!
//! The protocol: one JSON object a line each way. QEMU greets with `{"QMP": {...}}`; a command
//! `{"execute": NAME, "arguments": {...}, "id": N}` is answered by `{"return": ..., "id": N}` or
//! `{"error": {"class": ..., "desc": ...}, "id": N}`; events `{"event": NAME, "data": {...},
//! "timestamp": {...}}` may come at any time, also before a command's answer.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thiserror::Error;

/// Why a QMP exchange failed.
#[derive(Debug, Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {}: {source}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("QMP socket I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("QEMU closed the QMP connection")]
    Closed,
    #[error("QEMU sent a line that is not JSON: {line:?}: {source}")]
    Json {
        line: String,
        source: serde_json::Error,
    },
    #[error("expected {expected} from QEMU, got {got}")]
    Unexpected { expected: String, got: String },
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("no {what} from QEMU within {timeout:?} (events received meanwhile: {events:?})")]
    Timeout {
        what: String,
        timeout: Duration,
        events: Vec<String>,
    },
}

/// A QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    stream: UnixStream,
    /// Bytes received and not yet split into messages.
    received: Vec<u8>,
    /// Events received while waiting for something else, oldest first.
    events: VecDeque<Value>,
    /// The `id` of the next command.
    next_id: u64,
    /// How long a command's answer may take.
    timeout: Duration,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation, so commands can be
    /// executed. `timeout` bounds each command's answer (and the greeting).
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.to_owned(),
            source,
        })?;
        stream.set_write_timeout(Some(timeout))?;
        let mut qmp = Qmp {
            stream,
            received: Vec::new(),
            events: VecDeque::new(),
            next_id: 1,
            timeout,
        };
        let greeting = qmp.read_message(Instant::now() + timeout, "the QMP greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Unexpected {
                expected: "the QMP greeting".to_owned(),
                got: greeting.to_string(),
            });
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Executes `command` and returns its `"return"` value; its `"error"` becomes
    /// [`QmpError::Command`]. Events that arrive before the answer are kept for
    /// [`Qmp::wait_event`].
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.stream.write_all(line.as_bytes())?;
        let what = format!("answer to {command}");
        let deadline = Instant::now() + self.timeout;
        loop {
            let mut message = self.read_message(deadline, &what)?;
            if message.get("event").is_some() {
                self.events.push_back(message);
                continue;
            }
            if message.get("id") != Some(&json!(id)) {
                return Err(QmpError::Unexpected {
                    expected: format!("the {what} (id {id})"),
                    got: message.to_string(),
                });
            }
            if let Some(value) = message.get_mut("return") {
                return Ok(value.take());
            }
            let error = message.get("error").ok_or_else(|| QmpError::Unexpected {
                expected: format!("\"return\" or \"error\" in the {what}"),
                got: message.to_string(),
            })?;
            let text = |key: &str| error.get(key).and_then(Value::as_str).unwrap_or("?");
            return Err(QmpError::Command {
                command: command.to_owned(),
                class: text("class").to_owned(),
                desc: text("desc").to_owned(),
            });
        }
    }

    /// Returns the first event, received earlier or within `timeout`, for which `wanted` is
    /// true; the others are kept. `what` names the event in a timeout error.
    pub fn wait_event(
        &mut self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<Value, QmpError> {
        if let Some(event) = self
            .events
            .iter()
            .position(&wanted)
            .and_then(|at| self.events.remove(at))
        {
            return Ok(event);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let message = match self.read_message(deadline, what) {
                Err(QmpError::Timeout { what, .. }) => {
                    return Err(QmpError::Timeout {
                        what,
                        timeout,
                        events: self.event_names(),
                    })
                }
                other => other?,
            };
            if message.get("event").is_none() {
                return Err(QmpError::Unexpected {
                    expected: format!("an event ({what})"),
                    got: message.to_string(),
                });
            }
            if wanted(&message) {
                return Ok(message);
            }
            self.events.push_back(message);
        }
    }

    /// The names of the events kept, for error messages.
    fn event_names(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|event| event["event"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    /// The next message, waiting until `deadline` at most.
    fn read_message(&mut self, deadline: Instant, what: &str) -> Result<Value, QmpError> {
        loop {
            if let Some(end) = self.received.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.received.drain(..=end).collect();
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                return serde_json::from_slice(line).map_err(|source| QmpError::Json {
                    line: String::from_utf8_lossy(line).into_owned(),
                    source,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(QmpError::Timeout {
                    what: what.to_owned(),
                    timeout: self.timeout,
                    events: self.event_names(),
                });
            }
            self.stream.set_read_timeout(Some(deadline - now))?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(QmpError::Closed),
                Ok(n) => self.received.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;
    use std::thread;

    /// A fake QEMU on a socket in a fresh directory: greets, then answers each command line
    /// with `respond(command, id)`, a list of lines to send.
    fn fake_qemu(
        respond: impl Fn(&str, &Value) -> Vec<String> + Send + 'static,
    ) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut writer = stream.try_clone().expect("clone");
            writer
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
                .expect("greet");
            for line in BufReader::new(stream).lines() {
                let request: Value = serde_json::from_str(&line.expect("line")).expect("json");
                let command = request["execute"].as_str().expect("execute").to_owned();
                for reply in respond(&command, &request["id"]) {
                    writer
                        .write_all(format!("{reply}\r\n").as_bytes())
                        .expect("reply");
                }
            }
        });
        (dir, path)
    }

    fn event(name: &str, device: &str) -> String {
        json!({"event": name, "data": {"device": device}, "timestamp": {"seconds": 1}}).to_string()
    }

    #[test]
    fn executes_commands_and_keeps_interleaved_events() {
        let (_dir, path) = fake_qemu(|command, id| match command {
            "qmp_capabilities" => vec![json!({"return": {}, "id": id}).to_string()],
            "device_del" => vec![
                event("ACPI_DEVICE_OST", "dimm1"),
                json!({"return": {}, "id": id}).to_string(),
                event("DEVICE_DELETED", "dimm0"),
                event("DEVICE_DELETED", "dimm1"),
            ],
            _ => vec![
                json!({"error": {"class": "GenericError", "desc": "nope"}, "id": id}).to_string(),
            ],
        });
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).expect("connect");
        assert_eq!(
            qmp.execute("device_del", Some(json!({"id": "dimm1"})))
                .expect("device_del"),
            json!({})
        );
        let deleted = qmp
            .wait_event("DEVICE_DELETED", Duration::from_secs(5), |e| {
                e["event"] == "DEVICE_DELETED" && e["data"]["device"] == "dimm1"
            })
            .expect("event");
        assert_eq!(deleted["data"]["device"], "dimm1");
        // The events that were not asked for are still there.
        let ost = qmp
            .wait_event("OST", Duration::from_secs(5), |e| {
                e["event"] == "ACPI_DEVICE_OST"
            })
            .expect("kept event");
        assert_eq!(ost["data"]["device"], "dimm1");
        match qmp.execute("object-del", None) {
            Err(QmpError::Command { class, desc, .. }) => {
                assert_eq!((class.as_str(), desc.as_str()), ("GenericError", "nope"));
            }
            other => panic!("expected a command error, got {other:?}"),
        }
    }

    #[test]
    fn gives_up_waiting_for_an_event() {
        let (_dir, path) = fake_qemu(|_, id| vec![json!({"return": {}, "id": id}).to_string()]);
        let mut qmp = Qmp::connect(&path, Duration::from_secs(5)).expect("connect");
        let started = Instant::now();
        match qmp.wait_event("DEVICE_DELETED", Duration::from_millis(200), |_| true) {
            Err(QmpError::Timeout { what, timeout, .. }) => {
                assert_eq!(what, "DEVICE_DELETED");
                assert_eq!(timeout, Duration::from_millis(200));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn refuses_what_is_not_qemu() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).expect("bind");
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\n")
                .expect("write");
            thread::sleep(Duration::from_secs(1));
        });
        assert!(matches!(
            Qmp::connect(&path, Duration::from_secs(5)),
            Err(QmpError::Json { .. })
        ));
        assert!(matches!(
            Qmp::connect(&dir.path().join("absent.sock"), Duration::from_secs(1)),
            Err(QmpError::Connect { .. })
        ));
    }
}
