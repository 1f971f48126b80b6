//! The guest's serial output, kept off the vCPU threads: the UART hands each byte to a
//! [`SerialOutput`] (a bounded queue; writing to it never waits) and the `console-out` thread
//! writes what is queued to stdout or the file. A reader that stalls (a terminal on hold, a
//! pipe nobody reads) or a sink that fails costs guest output, counted and logged, never a
//! vCPU; an output file keeps the newest output within its limit.

use std::collections::VecDeque;
use std::io::{self, Seek, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tidal_devices::repeats::Repeats;

use crate::seccomp::ThreadFilter;

/// How much guest output may wait for the writer thread: a quarter of a second of a 4 MB/s
/// console, far more than a kernel's burst of boot messages.
pub const QUEUE_CAPACITY: usize = 1 << 20;

/// How long a stopping VM waits for queued output to be written: enough for a healthy sink,
/// short enough that a stalled one does not hold the exit up.
pub const FINISH_WITHIN: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Queue {
    bytes: VecDeque<u8>,
    /// The writer holds bytes taken from the queue and not yet written.
    writing: bool,
    /// No more output is coming: the writer ends once the queue is empty.
    closing: bool,
    /// The sink, handed back by the writer as it ends: closing a descriptor is not in the
    /// writer's seccomp filter, so whoever drops the queue last closes it.
    retired: Option<Box<dyn Write + Send>>,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Bytes are queued, or the queue is closing.
    queued: Condvar,
    /// The writer wrote what it took.
    written: Condvar,
    /// Writes the queue had no room for.
    overflows: Repeats,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic ends the process (internal_error), so a poisoned lock holds sound data.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The UART's end of the queue: a `Write` that takes what fits and drops the rest.
#[derive(Clone, Default)]
pub struct SerialOutput(Arc<Shared>);

impl Write for SerialOutput {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut queue = self.0.lock();
        let room = QUEUE_CAPACITY.saturating_sub(queue.bytes.len());
        let taken = bytes.len().min(room);
        queue.bytes.extend(&bytes[..taken]);
        drop(queue);
        self.0.queued.notify_one();
        if taken < bytes.len() {
            if let Some(times) = self.0.overflows.count() {
                log::warn!(
                    "guest serial output dropped: its reader is not keeping up with the \
                     {QUEUE_CAPACITY} bytes queued ({times})"
                );
            }
        }
        // Taken or dropped, the guest's byte is done with: the UART must not retry it.
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl SerialOutput {
    /// Tells the writer that no more output comes and waits up to `within` for what is
    /// queued to be written.
    pub fn finish(&self, within: Duration) {
        let deadline = Instant::now() + within;
        let mut queue = self.0.lock();
        queue.closing = true;
        self.0.queued.notify_one();
        while !queue.bytes.is_empty() || queue.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                log::warn!(
                    "{} bytes of guest serial output were not written: the output is stalled",
                    queue.bytes.len()
                );
                return;
            }
            queue = match self.0.written.wait_timeout(queue, left) {
                Ok((queue, _)) => queue,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// Starts the thread `name` (`console-out` for COM1), which writes the queue to `sink`
    /// until [`SerialOutput::finish`]. With `seccomp`, the thread confines itself first.
    pub fn spawn_writer(
        &self,
        name: &str,
        sink: Box<dyn Write + Send>,
        seccomp: Option<ThreadFilter>,
    ) -> io::Result<()> {
        let shared = self.0.clone();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if let Some(filter) = &seccomp {
                    filter.apply_or_exit();
                }
                write_queue(&shared, sink);
            })
            .map(drop)
    }
}

/// The writer thread's loop. A sink that fails is dropped: the output after it goes nowhere
/// (the reader of a closed pipe will not come back).
fn write_queue(shared: &Shared, mut sink: Box<dyn Write + Send>) {
    let mut failed = false;
    loop {
        let chunk: Vec<u8> = {
            let mut queue = shared.lock();
            while queue.bytes.is_empty() && !queue.closing {
                queue = match shared.queued.wait(queue) {
                    Ok(queue) => queue,
                    Err(poisoned) => poisoned.into_inner(),
                };
            }
            if queue.bytes.is_empty() {
                queue.retired = Some(sink);
                return;
            }
            queue.writing = true;
            queue.bytes.drain(..).collect()
        };
        if !failed {
            if let Err(e) = sink.write_all(&chunk).and_then(|()| sink.flush()) {
                log::warn!("guest serial output stopped: {e}; later output is dropped");
                failed = true;
            }
        }
        shared.lock().writing = false;
        shared.written.notify_all();
    }
}

/// The smallest limit a [`CappedFile`] takes: room for its first line and some output.
pub const MIN_FILE_LIMIT: u64 = 4096;

/// A file that holds at most `limit` bytes (at least [`MIN_FILE_LIMIT`]), the newest: once
/// full it starts again from empty, with a first line saying how much output was dropped.
pub struct CappedFile {
    file: std::fs::File,
    limit: u64,
    /// Bytes in the file now, and of them the first line's.
    len: u64,
    first_line: u64,
    /// Output dropped so far.
    dropped: u64,
}

impl CappedFile {
    pub fn new(file: std::fs::File, limit: u64) -> Self {
        Self {
            file,
            limit: limit.max(MIN_FILE_LIMIT),
            len: 0,
            first_line: 0,
            dropped: 0,
        }
    }

    /// Empties the file and starts it with the line that says what went.
    fn restart(&mut self) -> io::Result<()> {
        self.dropped += self.len - self.first_line;
        self.file.set_len(0)?;
        self.file.rewind()?;
        let line = format!(
            "[tidal: {} bytes of earlier guest output dropped; this file keeps at most {} bytes]\n",
            self.dropped, self.limit
        );
        self.file.write_all(line.as_bytes())?;
        self.first_line = line.len() as u64;
        self.len = self.first_line;
        Ok(())
    }
}

impl Write for CappedFile {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let size = bytes.len() as u64;
        if self.len + size > self.limit && self.len > self.first_line {
            self.restart()?;
        }
        // What does not fit even now: the oldest part of `bytes` goes.
        let room = usize::try_from(self.limit - self.len).unwrap_or(usize::MAX);
        let skipped = bytes.len().saturating_sub(room);
        let written = self.file.write(&bytes[skipped..])?;
        self.len += written as u64;
        self.dropped += skipped as u64;
        Ok(skipped + written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A sink that holds every write until the test lets it go, and keeps what it got.
    struct Stalled {
        release: mpsc::Receiver<()>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stalled {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.release.recv().map_err(io::Error::other)?;
            self.got.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_reader_never_holds_the_writer_up_and_costs_only_what_overflows() {
        let (release, stalled) = mpsc::channel();
        let got = Arc::new(Mutex::new(Vec::new()));
        let output = SerialOutput::default();
        let sink = Stalled {
            release: stalled,
            got: got.clone(),
        };
        output
            .spawn_writer("console-out", Box::new(sink), None)
            .unwrap();
        let mut uart = output.clone();
        // The writer takes the first byte and stalls on it; the rest fills the queue, then
        // overflows, and every write returns at once.
        uart.write_all(b"A").unwrap();
        while !output.0.lock().writing {
            std::thread::yield_now();
        }
        let started = Instant::now();
        for _ in 0..(QUEUE_CAPACITY + 4096) {
            uart.write_all(b"B").unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the UART waited"
        );
        for _ in 0..2 {
            release.send(()).unwrap();
        }
        output.finish(Duration::from_secs(10));
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 1 + QUEUE_CAPACITY);
        assert!(got[1..].iter().all(|&b| b == b'B'));
    }

    #[test]
    fn finish_gives_up_on_a_stalled_sink() {
        let (_release, stalled) = mpsc::channel();
        let output = SerialOutput::default();
        let sink = Stalled {
            release: stalled,
            got: Arc::default(),
        };
        output
            .spawn_writer("console-out", Box::new(sink), None)
            .unwrap();
        output.clone().write_all(b"hello").unwrap();
        let started = Instant::now();
        output.finish(Duration::from_millis(100));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn an_output_file_keeps_the_newest_output_within_its_limit() {
        let dir = std::env::temp_dir().join(format!("tidal-serial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.log");
        let file = std::fs::File::create(&path).unwrap();
        let mut capped = CappedFile::new(file, MIN_FILE_LIMIT);
        for line in 0..2000 {
            capped
                .write_all(format!("line {line:04}\n").as_bytes())
                .unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() as u64 <= MIN_FILE_LIMIT, "{}", text.len());
        assert!(text.ends_with("line 1998\nline 1999\n"), "{text:?}");
        let (first, _) = text.split_once('\n').unwrap();
        let kept_lines = text.lines().count() - 1;
        let dropped = (2000 - kept_lines) * "line 0000\n".len();
        assert_eq!(
            first,
            format!(
                "[tidal: {dropped} bytes of earlier guest output dropped; this file keeps at \
                 most 4096 bytes]"
            )
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
