//! The API's HTTP path under arbitrary bytes from a client: hyper's HTTP/1 server as the API
//! sets it up, the router, the JSON bodies and every handler, through
//! `tidal_api::fuzzing::serve_bytes` (an in-memory connection, no socket).
//!
//! Whatever arrives, nothing panics and the server either says nothing or answers in HTTP/1.1
//! (HTTP/1.0 to an HTTP/1.0 request), every answer on the connection a complete response; none
//! is a 500, since the VMM behind it here never fails that way (a 500 would mean the server
//! broke, not the VMM).

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tidal_api::fuzzing::serve_bytes;
use tidal_api::{
    AddMemoryRequest, ApiError, DimmInfo, DimmState, ErrorKind, EventJournal, HotplugEvent,
    MemoryBackendInfo, MemoryInfo, NodeMemory, OstStatus, RemoveMemoryRequest, ResizeRequest,
    ResizeZoneRequest, Subscription, VmApi, VmConfigInfo, VmInfo, VmState,
};

fuzz_target!(|data: &[u8]| {
    let answer = serve_bytes(Arc::new(FixedVm), data).expect("a tokio runtime");
    check_answer(&answer);
});

const GIB: u64 = 1 << 30;

/// A VM that answers every call at once with fixed data, and refuses some requests (by their
/// numbers) with each error a VMM gives but `Internal`, so that every handler's success and
/// error answers are reached.
struct FixedVm;

fn dimm() -> DimmInfo {
    DimmInfo {
        id: "dimm0".to_owned(),
        slot: 0,
        node: 0,
        base: 4 * GIB,
        size: GIB,
        state: DimmState::Added,
        last_ost: Some(OstStatus {
            event: 1,
            status: 0,
        }),
    }
}

/// An error for some values of `n`, chosen by its low bits.
fn refusal(n: u64) -> Result<(), ApiError> {
    let kind = match n % 8 {
        1 => ErrorKind::BadRequest,
        2 => ErrorKind::NotFound,
        3 => ErrorKind::Conflict,
        4 => ErrorKind::GuestRefused,
        5 => ErrorKind::Timeout,
        6 => ErrorKind::HostMemory,
        _ => return Ok(()),
    };
    Err(ApiError::new(kind, format!("refused {n}")))
}

impl VmApi for FixedVm {
    fn info(&self) -> VmInfo {
        VmInfo {
            config: VmConfigInfo::default(),
            state: VmState::Running,
            memory_actual_size: 2 * GIB,
            desired_ram: 2 * GIB,
            memory: MemoryInfo {
                boot: GIB,
                hotplugged: GIB,
                hotplug_size: 8 * GIB,
                slots: 32,
                block_size: 128 << 20,
                inserting: 0,
                removing: 0,
                nodes: vec![NodeMemory {
                    id: 0,
                    boot: GIB,
                    hotplugged: GIB,
                    hotplug_size: 8 * GIB,
                    backend: MemoryBackendInfo::default(),
                }],
            },
            cpus: 1,
        }
    }

    fn memory(&self) -> Vec<DimmInfo> {
        vec![dimm()]
    }

    fn resize(&self, request: ResizeRequest) -> Result<(), ApiError> {
        refusal(request.desired_ram.unwrap_or(0))
    }

    fn resize_zone(&self, request: ResizeZoneRequest) -> Result<(), ApiError> {
        refusal(request.desired_ram ^ u64::from(request.id.node().unwrap_or(u32::MAX)))
    }

    fn add_memory(&self, request: AddMemoryRequest) -> Result<DimmInfo, ApiError> {
        refusal(request.size).map(|()| dimm())
    }

    fn remove_memory(&self, request: RemoveMemoryRequest) -> Result<(), ApiError> {
        refusal(request.id.bytes().map(u64::from).sum())
    }

    /// One event (after `since`'s replay of nothing), then the stream ends, as when the VMM
    /// goes away.
    fn subscribe(&self, since: Option<u64>) -> Subscription {
        let dimm = dimm();
        let journal = EventJournal::default();
        let subscription = journal.subscribe(since);
        journal.publish(HotplugEvent {
            seq: 0,
            id: dimm.id,
            slot: dimm.slot,
            node: dimm.node,
            base: dimm.base,
            size: dimm.size,
            old_state: DimmState::Inserting,
            new_state: DimmState::Added,
            ost: dimm.last_ost,
            timestamp_us: 1,
        });
        subscription
    }

    /// Nothing to stop: the answer is all the target looks at.
    fn shutdown(&self) {}
}

/// Nothing, or a sequence of complete HTTP/1.x responses, none of them a 500.
fn check_answer(answer: &[u8]) {
    let mut rest = answer;
    while !rest.is_empty() {
        rest = response(rest).unwrap_or_else(|problem| {
            panic!(
                "{problem} in the answer {:?}",
                String::from_utf8_lossy(answer)
            )
        });
    }
}

/// Checks the response at the start of `bytes` and returns what follows it.
fn response(bytes: &[u8]) -> Result<&[u8], String> {
    let head_end = find(bytes, b"\r\n\r\n").ok_or("a response head without its end")?;
    let head = std::str::from_utf8(&bytes[..head_end]).map_err(|e| format!("{e}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    // hyper answers an HTTP/1.0 request in HTTP/1.0.
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .ok_or_else(|| format!("the status line {status_line:?}"))?;
    if status.starts_with("500") {
        return Err(format!("a server error ({status})"));
    }
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("the header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|e| format!("{e}"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let body = &bytes[head_end + 4..];
    // No body after a 1xx, 204 or 304, nor after the answer to a HEAD, which says how long
    // the GET's would be: that one is followed by the next answer or by the end.
    let bodiless = ["1", "204", "304"]
        .iter()
        .any(|code| status.starts_with(code))
        || body.is_empty()
        || body.starts_with(b"HTTP/1.");
    if bodiless {
        return Ok(body);
    }
    if chunked {
        return chunks(body);
    }
    // Neither a length nor chunks: the body runs to the end of the connection (the events
    // stream answered in HTTP/1.0, which has no chunks).
    let Some(length) = length else {
        return Ok(&[]);
    };
    body.get(length..)
        .ok_or_else(|| format!("a body shorter than its {length} bytes"))
}

/// Skips a chunked body, returning what follows it.
fn chunks(mut body: &[u8]) -> Result<&[u8], String> {
    loop {
        let line_end = find(body, b"\r\n").ok_or("a chunk size without its end")?;
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|size| usize::from_str_radix(size, 16).ok())
            .ok_or("a chunk size that is not a number")?;
        let chunk_end = line_end + 2 + size;
        if body.get(chunk_end..chunk_end + 2) != Some(b"\r\n".as_slice()) {
            return Err(format!("a chunk shorter than its {size} bytes"));
        }
        body = &body[chunk_end + 2..];
        if size == 0 {
            return Ok(body);
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
