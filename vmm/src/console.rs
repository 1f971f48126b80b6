//! The guest console: where the serial port's output goes, and a thread that feeds the host's
//! stdin (terminal, pipe, FIFO or file) into the UART without dropping bytes when its FIFO is full.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tidal_devices::serial::SerialConsole;

use crate::config::SerialMode;
use crate::seccomp::ThreadFilter;

#[derive(Debug, Error)]
pub enum ConsoleError {
    #[error("cannot open serial output file {path}: {source}")]
    OutputFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the console input thread: {0}")]
    Spawn(std::io::Error),
}

/// Where the guest's serial output is written.
pub fn output(mode: &SerialMode) -> Result<Box<dyn Write + Send>, ConsoleError> {
    Ok(match mode {
        SerialMode::Stdio => Box::new(std::io::stdout()),
        SerialMode::File(path) => {
            Box::new(
                File::create(path).map_err(|source| ConsoleError::OutputFile {
                    path: path.clone(),
                    source,
                })?,
            )
        }
        SerialMode::Off => Box::new(std::io::sink()),
    })
}

/// How long to wait for the guest to drain the UART's receive FIFO before offering more.
const FIFO_FULL_BACKOFF: Duration = Duration::from_millis(2);

/// Copies stdin into the UART until stdin ends. Runs detached: a blocking read cannot be
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
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 64];
            loop {
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
                        Ok(mut uart) => uart.push_input(pending),
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
