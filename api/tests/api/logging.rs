//! What the server logs: every request at debug level, every error answer at info level.

use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::mock::{MockVm, TestServer};

/// Keeps every record. Installed by the one test below; the other tests of this binary log into
/// it too, so that test looks for paths only it requests.
struct Recorder(Mutex<Vec<(Level, String)>>);

impl Log for Recorder {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        let line = record.args().to_string();
        self.0.lock().unwrap().push((record.level(), line));
    }

    fn flush(&self) {}
}

static RECORDER: Recorder = Recorder(Mutex::new(Vec::new()));

#[test]
fn requests_are_logged_at_debug_and_errors_at_info() {
    log::set_logger(&RECORDER).unwrap();
    log::set_max_level(LevelFilter::Debug);
    let server = TestServer::start(MockVm::new());
    server.send("GET", "/api/v1/vmm.ping?logging-test", None);
    server.send("GET", "/logging-test", None);

    let records = RECORDER.0.lock().unwrap().clone();
    let has = |level, text: &str| records.contains(&(level, text.to_owned()));
    assert!(has(
        Level::Debug,
        "API request: GET /api/v1/vmm.ping?logging-test"
    ));
    assert!(has(Level::Debug, "API request: GET /logging-test"));
    assert!(has(
        Level::Info,
        "API request GET /logging-test failed with 404 Not Found: \
         no such endpoint: GET /logging-test"
    ));
}
