//! The guest consoles: each serial port's UART with where its output goes (written by a thread
//! of its own, `serial_output`), and a thread that feeds the host's stdin (terminal, pipe, FIFO
//! or file) into the port set to stdio without dropping bytes when its FIFO is full.

use std::fs::File;
use std::io::{Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tidal_devices::serial::SerialConsole;
use tidal_devices::EventFdTrigger;

use crate::config::SerialMode;
use crate::seccomp::{Filters, ThreadFilter};
use crate::serial_output::{CappedFile, SerialOutput};

#[derive(Debug, Error)]
pub enum ConsoleError {
    #[error("cannot open serial output file {path}: {source}")]
    OutputFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start a console thread: {0}")]
    Spawn(std::io::Error),
}

/// One serial port's host side: the UART for the port bus, its output queue and where that
/// goes, until [`SerialPort::start`] hands the sink to the port's writer thread.
pub struct SerialPort {
    pub uart: Arc<Mutex<SerialConsole>>,
    output: SerialOutput,
    sink: Box<dyn Write + Send>,
    /// The port is stdio: the host's stdin feeds it.
    reads_stdin: bool,
    /// Its writer thread's name.
    writer: &'static str,
}

impl SerialPort {
    /// A port raising `interrupt`, its output going where `mode` says.
    pub fn new(
        interrupt: EventFdTrigger,
        mode: &SerialMode,
        writer: &'static str,
    ) -> Result<Self, ConsoleError> {
        let sink = output(mode)?;
        let queue = SerialOutput::default();
        Ok(Self {
            uart: Arc::new(Mutex::new(SerialConsole::new(
                interrupt,
                Box::new(queue.clone()),
            ))),
            output: queue,
            sink,
            reads_stdin: *mode == SerialMode::Stdio,
            writer,
        })
    }

    /// Starts the port's writer thread and, for stdio, the stdin reader, each confined by its
    /// filter when `filters` are given; returns the output queue, for
    /// [`SerialOutput::finish`].
    pub fn start(self, filters: Option<&Filters>) -> Result<SerialOutput, ConsoleError> {
        self.output
            .spawn_writer(
                self.writer,
                self.sink,
                filters.map(|f| f.console_out.clone()),
            )
            .map_err(ConsoleError::Spawn)?;
        if self.reads_stdin {
            spawn_stdin_reader(self.uart, filters.map(|f| f.console_in.clone()))?;
        }
        Ok(self.output)
    }
}

/// Where the guest's serial output is written.
fn output(mode: &SerialMode) -> Result<Box<dyn Write + Send>, ConsoleError> {
    Ok(match mode {
        SerialMode::Stdio => Box::new(std::io::stdout()),
        SerialMode::File { path, limit } => {
            let file = File::create(path).map_err(|source| ConsoleError::OutputFile {
                path: path.clone(),
                source,
            })?;
            Box::new(CappedFile::new(file, *limit))
        }
        SerialMode::Off => Box::new(std::io::sink()),
    })
}

/// How long to wait for the guest to drain the UART's receive FIFO before offering more.
const FIFO_FULL_BACKOFF: Duration = Duration::from_millis(2);

/// How long received input may sit unread before the receive interrupt is raised again. A
/// running guest drains the FIFO in its interrupt handler within microseconds; a guest that
/// masked the interrupt is left alone ([`SerialConsole::repeat_receive_interrupt`]).
const UNREAD_INPUT_TIMEOUT: Duration = Duration::from_secs(1);

/// Copies stdin into the UART until stdin ends. Runs detached: a blocking wait cannot be
/// interrupted, and the process exits without waiting for it. With `seccomp`, the thread
/// confines itself before it reads.
pub fn spawn_stdin_reader(
    serial: Arc<Mutex<SerialConsole>>,
    seccomp: Option<ThreadFilter>,
) -> Result<(), ConsoleError> {
    std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || {
            if let Some(filter) = &seccomp {
                filter.apply_or_exit();
            }
            // Unbuffered, unlike std's stdin: bytes held in a userspace buffer would be
            // invisible to the wait on the descriptor.
            // SAFETY: descriptor 0 stays open for the whole process, and ManuallyDrop keeps
            // this File from closing it.
            let mut stdin = ManuallyDrop::new(unsafe { File::from_raw_fd(libc::STDIN_FILENO) });
            let mut buf = [0u8; 64];
            let mut watch = UnreadInput::default();
            loop {
                let Ok(unread) = serial.lock().map(|uart| uart.unread()) else {
                    return;
                };
                let timeout = (unread > 0).then_some(UNREAD_INPUT_TIMEOUT);
                if !stdin_readable(timeout) {
                    match serial.lock() {
                        Ok(mut uart) => watch.look(&mut uart),
                        Err(_) => return,
                    }
                    continue;
                }
                let n = match stdin.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::warn!("console input stopped: {e}");
                        return;
                    }
                };
                let mut pending = &buf[..n];
                while !pending.is_empty() {
                    let taken = match serial.lock() {
                        Ok(mut uart) => {
                            watch.look(&mut uart);
                            let taken = uart.push_input(pending);
                            watch.pushed(&uart);
                            taken
                        }
                        Err(_) => return,
                    };
                    pending = &pending[taken..];
                    if !pending.is_empty() {
                        std::thread::sleep(FIFO_FULL_BACKOFF);
                    }
                }
            }
        })
        .map(|_| ())
        .map_err(ConsoleError::Spawn)
}

/// Whether stdin has something to read (data, its end, or an error for `read` to report)
/// within `timeout` (`None`: no limit).
fn stdin_readable(timeout: Option<Duration>) -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout_ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    // SAFETY: `fd` is one valid pollfd that outlives the call, and the count passed is 1.
    let ready = unsafe { libc::poll(&mut fd, 1, timeout_ms) };
    match ready {
        0 => false,
        n if n > 0 => true,
        // Interrupted by a signal: look again. Any other error: let `read` report it.
        _ => std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted,
    }
}

/// Notices input the guest leaves unread in the UART and raises the receive interrupt again
/// ([`SerialConsole::repeat_receive_interrupt`]), saying so once each time it happens.
#[derive(Default)]
struct UnreadInput {
    /// Unread bytes when last looked at or pushed.
    unread: usize,
    /// Since when the guest has not read any of them.
    since: Option<Instant>,
    /// Whether the interrupt was repeated since the guest last read.
    repeated: bool,
}

impl UnreadInput {
    fn look(&mut self, uart: &mut SerialConsole) {
        let now = Instant::now();
        let unread = uart.unread();
        if unread == 0 || unread < self.unread {
            self.since = Some(now);
            if self.repeated {
                log::info!("the guest reads its console input again");
            }
            self.repeated = false;
        }
        self.unread = unread;
        let since = *self.since.get_or_insert(now);
        if unread > 0
            && now.duration_since(since) >= UNREAD_INPUT_TIMEOUT
            && uart.repeat_receive_interrupt()
        {
            if !self.repeated {
                log::warn!(
                    "the guest left {unread} bytes of console input unread for {:?}; raising \
                     its serial receive interrupt again",
                    now.duration_since(since)
                );
            }
            self.repeated = true;
            self.since = Some(now);
        }
    }

    fn pushed(&mut self, uart: &SerialConsole) {
        self.unread = uart.unread();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidal_devices::serial::COM1_PORT;
    use tidal_devices::EventFdTrigger;
    use vm_device::bus::PioAddress;
    use vm_device::MutDevicePio;

    #[test]
    fn repeats_the_interrupt_only_after_input_sat_unread_for_the_timeout() {
        let interrupt = EventFdTrigger::new().unwrap();
        let line = interrupt.event_fd().try_clone().unwrap();
        let mut uart = SerialConsole::new(interrupt, Box::new(std::io::sink()));
        // The guest's driver enables the receive interrupt (IER bit 0).
        uart.pio_write(PioAddress(COM1_PORT), 1, &[0x01]);
        let mut watch = UnreadInput::default();
        watch.look(&mut uart);
        uart.push_input(b"echo hi\n");
        watch.pushed(&uart);
        assert!(line.read().is_ok(), "the edge of the new input");

        watch.look(&mut uart);
        assert!(line.read().is_err(), "too early to repeat it");
        std::thread::sleep(UNREAD_INPUT_TIMEOUT);
        watch.look(&mut uart);
        assert!(line.read().is_ok(), "repeated after the timeout");
        assert!(watch.repeated);
    }
}
