//! `tidalctl`: controls a running Tidal VM through its API socket, or the host memory pool
//! through its own (`tidalctl pool`). Prints a summary for people or, with `--json`, the
//! server's JSON as is.

mod pool;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tidal_api::size::{format_size, parse_size};
use tidal_api::{
    AddMemoryRequest, ApiClient, ClientError, DimmInfo, DimmState, Endpoint, HotplugEvent,
    LaggedRecord, MemoryBackendInfo, OstStatus, PingResponse, RemoveMemoryRequest, ResizeRequest,
    ResizeZoneRequest, VmInfo, VmState, ZoneId,
};

#[derive(Debug, Parser)]
#[command(
    name = "tidalctl",
    version,
    about = "Controls a running Tidal VM through its API socket, or the host memory pool"
)]
struct Cli {
    /// The VMM's API socket (as given to tidal's --api-socket); every command but `pool`
    /// needs it.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// Print the server's JSON answer as is instead of a summary (for `events`, each event's
    /// JSON line).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Call(Call),
    /// Follow the hotplug events, one line each, until the VMM ends the stream (or Ctrl-C).
    Events {
        /// First the events after this one (its seq) that the VMM still holds.
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
    },
    /// The host memory pool (tidal-pool): its ledger, moves, resizes by priority, events.
    Pool(pool::PoolCommand),
}

/// A command that is one request and its answer.
#[derive(Debug, Subcommand)]
enum Call {
    /// Check that the VMM answers and show its version.
    Ping,
    /// End the VM and the VMM at once, without asking the guest (see `poweroff` in the guest
    /// for an orderly stop).
    Shutdown,
    /// Show the VM's state, vCPUs and memory totals.
    Info,
    /// List the DIMMs: id, slot, node, base, size, state and the guest's last _OST report.
    Memory,
    /// Grow or shrink the guest's memory, or one NUMA node's, to a total; waits for the guest
    /// unless --no-wait.
    Resize {
        /// Total memory wanted: bytes, or a number with K, M, G or T (powers of 1024).
        #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
        memory: u64,
        /// Resize only this NUMA node: --memory is then the node's total (vm.resize-zone).
        #[arg(long, value_name = "N")]
        node: Option<u32>,
        #[command(flatten)]
        wait: Wait,
        /// Answer once the guest has been told, without waiting for its answer.
        #[arg(long)]
        no_wait: bool,
        /// Grow even when the host has less memory available than that takes.
        #[arg(long)]
        force: bool,
    },
    /// Plug one DIMM; waits for the guest to accept it.
    Add {
        /// Size of the DIMM: bytes, or a number with K, M, G or T (powers of 1024).
        #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
        size: u64,
        /// NUMA node of the new memory.
        #[arg(long, value_name = "N", default_value_t = 0)]
        node: u32,
        /// Add it even when the host has less memory available than that.
        #[arg(long)]
        force: bool,
    },
    /// Eject one DIMM; waits until the guest has let it go.
    Remove {
        /// The DIMM's id, as `tidalctl memory` lists it.
        id: String,
        #[command(flatten)]
        wait: Wait,
    },
}

/// How long a command that waits for the guest gives it.
#[derive(Debug, Args)]
pub(crate) struct Wait {
    /// Seconds to wait for the guest's answer (to each DIMM); the VMM's default when absent.
    #[arg(long = "timeout", value_name = "SECS")]
    pub(crate) timeout_secs: Option<u64>,
}

pub(crate) fn parse_size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|error| error.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tidalctl: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), ClientError> {
    match &cli.command {
        Command::Pool(command) => pool::run(command, cli.json),
        Command::Call(call) => run_call(&vm_client(cli), call, cli.json),
        Command::Events { since } => follow_events(&vm_client(cli), *since, cli.json),
    }
}

/// The client of the VMM's API socket; without `--api-socket`, a usage error (exit status 2).
fn vm_client(cli: &Cli) -> ApiClient {
    match &cli.api_socket {
        Some(socket) => ApiClient::new(socket),
        None => Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "this command needs --api-socket PATH (the VMM's API socket)",
            )
            .exit(),
    }
}

fn run_call(client: &ApiClient, call: &Call, json: bool) -> Result<(), ClientError> {
    let (endpoint, body) = request(call)?;
    let answer = client.call(endpoint, body)?;
    if json {
        if !answer.is_empty() {
            println!("{}", String::from_utf8_lossy(&answer));
        }
    } else {
        print!("{}", summary(call, &answer)?);
    }
    Ok(())
}

/// Prints each event as it arrives, until the server ends the stream. Stops quietly once
/// stdout is closed (`tidalctl events | head -3`): nobody reads any more.
fn follow_events(client: &ApiClient, since: Option<u64>, json: bool) -> Result<(), ClientError> {
    let mut events = match since {
        Some(seq) => client.events_since(seq)?,
        None => client.events()?,
    };
    let mut stdout = io::stdout().lock();
    while let Some(line) = events.next_line() {
        let line = line?;
        let text = if json {
            String::from_utf8_lossy(&line).into_owned()
        } else if let Ok(LaggedRecord { lagged }) = serde_json::from_slice(&line) {
            format!("({lagged} events skipped: this reader fell behind, or they are gone)")
        } else {
            event_summary(&from_json(&line)?)
        };
        // Stdout is line-buffered: each event shows as soon as it is written.
        if writeln!(stdout, "{text}").is_err() {
            break;
        }
    }
    Ok(())
}

/// The endpoint and JSON body a command sends.
fn request(call: &Call) -> Result<(Endpoint, Option<Vec<u8>>), ClientError> {
    Ok(match call {
        Call::Ping => (Endpoint::Ping, None),
        Call::Shutdown => (Endpoint::Shutdown, None),
        Call::Info => (Endpoint::VmInfo, None),
        Call::Memory => (Endpoint::VmMemory, None),
        Call::Resize {
            memory,
            node: None,
            wait,
            no_wait,
            force,
        } => (
            Endpoint::VmResize,
            Some(to_json(&ResizeRequest {
                desired_ram: Some(*memory),
                timeout_secs: wait.timeout_secs,
                force: *force,
                wait: !no_wait,
                ..ResizeRequest::default()
            })?),
        ),
        Call::Resize {
            memory,
            node: Some(node),
            wait,
            no_wait,
            force,
        } => (
            Endpoint::VmResizeZone,
            Some(to_json(&ResizeZoneRequest {
                id: ZoneId::Node(*node),
                desired_ram: *memory,
                timeout_secs: wait.timeout_secs,
                force: *force,
                wait: !no_wait,
            })?),
        ),
        Call::Add { size, node, force } => (
            Endpoint::VmAddMemory,
            Some(to_json(&AddMemoryRequest {
                size: *size,
                node: *node,
                force: *force,
            })?),
        ),
        Call::Remove { id, wait } => (
            Endpoint::VmRemoveMemory,
            Some(to_json(&RemoveMemoryRequest {
                id: id.clone(),
                timeout_secs: wait.timeout_secs,
            })?),
        ),
    })
}

/// What a command prints for people, from the server's answer.
fn summary(call: &Call, answer: &[u8]) -> Result<String, ClientError> {
    Ok(match call {
        Call::Ping => {
            let ping: PingResponse = from_json(answer)?;
            format!("tidal {} is up\n", ping.version)
        }
        Call::Shutdown => "the VMM is shutting down\n".to_owned(),
        Call::Info => info_summary(&from_json(answer)?),
        Call::Memory => dimm_table(&from_json::<Vec<DimmInfo>>(answer)?),
        Call::Resize { memory, node, .. } => {
            let what = node.map_or("guest memory".to_owned(), |node| format!("node {node}"));
            format!("{what} resized to {}\n", format_size(*memory))
        }
        Call::Remove { id, .. } => format!("removed {id}\n"),
        Call::Add { .. } => {
            let dimm: DimmInfo = from_json(answer)?;
            format!(
                "plugged {}: {} on node {} at {:#x} ({})\n",
                dimm.id,
                format_size(dimm.size),
                dimm.node,
                dimm.base,
                state_name(dimm.state)
            )
        }
    })
}

fn info_summary(info: &VmInfo) -> String {
    let memory = &info.memory;
    let mut text = format!(
        "state:      {}\n\
         cpus:       {}\n\
         memory:     {}\n\
         dimm slots: {} (block size {})\n",
        state_word(info.state),
        info.cpus,
        memory_line(
            info.memory_actual_size,
            memory.boot,
            memory.hotplugged,
            memory.hotplug_size
        ),
        memory.slots,
        format_size(memory.block_size),
    );
    if info.desired_ram != info.memory_actual_size {
        text += &format!(
            "on its way: {} (inserting {}, removing {})\n",
            format_size(info.desired_ram),
            format_size(memory.inserting),
            format_size(memory.removing)
        );
    }
    let plain = MemoryBackendInfo::default();
    if memory.nodes.len() > 1 || memory.nodes.iter().any(|node| node.backend != plain) {
        for node in &memory.nodes {
            let total = node.boot.saturating_add(node.hotplugged);
            text += &format!(
                "node {}:     {}{}\n",
                node.id,
                memory_line(total, node.boot, node.hotplugged, node.hotplug_size),
                backend_words(&node.backend)
            );
        }
    }
    text
}

fn state_word(state: VmState) -> &'static str {
    match state {
        VmState::Running => "Running",
        VmState::Shutdown => "Shutdown",
    }
}

/// `; shared, 2 MiB huge pages, prefault, host node 1`; nothing for the default backend.
fn backend_words(backend: &MemoryBackendInfo) -> String {
    let mut words = Vec::new();
    if backend.shared {
        words.push("shared".to_owned());
    }
    if let Some(page) = backend.hugepage_size {
        words.push(format!("{} huge pages", format_size(page)));
    }
    if backend.prefault {
        words.push("prefault".to_owned());
    }
    if let Some(node) = backend.host_node {
        words.push(format!("host node {node}"));
    }
    if words.is_empty() {
        String::new()
    } else {
        format!("; {}", words.join(", "))
    }
}

/// `4 GiB (boot 1 GiB, hotplugged 3 GiB, max 9 GiB)`.
fn memory_line(total: u64, boot: u64, hotplugged: u64, hotplug_size: u64) -> String {
    format!(
        "{} (boot {}, hotplugged {}, max {})",
        format_size(total),
        format_size(boot),
        format_size(hotplugged),
        format_size(boot.saturating_add(hotplug_size))
    )
}

/// One line per DIMM under a header.
fn dimm_table(dimms: &[DimmInfo]) -> String {
    let header = ["ID", "SLOT", "NODE", "BASE", "SIZE", "STATE", "LAST_OST"].map(String::from);
    let rows = dimms.iter().map(|dimm| {
        [
            dimm.id.clone(),
            dimm.slot.to_string(),
            dimm.node.to_string(),
            format!("{:#x}", dimm.base),
            format_size(dimm.size),
            state_name(dimm.state).to_owned(),
            dimm.last_ost.map_or_else(|| "-".to_owned(), ost_text),
        ]
    });
    table(std::iter::once(header).chain(rows))
}

/// Rows as lines, the columns as wide as their widest cell.
pub(crate) fn table<const N: usize>(rows: impl IntoIterator<Item = [String; N]>) -> String {
    let rows: Vec<[String; N]> = rows.into_iter().collect();
    let mut widths = [0; N];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    rows.iter()
        .map(|row| {
            let line: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            format!("{}\n", line.join("  ").trim_end())
        })
        .collect()
}

/// An event's time as RFC 3339 in UTC, to the millisecond; the raw number if it is out of range.
pub(crate) fn event_time(micros: u64) -> String {
    i64::try_from(micros)
        .ok()
        .and_then(|micros| jiff::Timestamp::from_microsecond(micros).ok())
        .map_or_else(|| format!("@{micros}us"), |time| format!("{time:.3}"))
}

/// `2026-11-29T21:30:03.202Z dimm1 slot 1: added -> removing`, then the guest's `_OST` report
/// if it caused the change.
fn event_summary(event: &HotplugEvent) -> String {
    let mut line = format!(
        "{} #{} {} slot {}: {} -> {}",
        event_time(event.timestamp_us),
        event.seq,
        event.id,
        event.slot,
        state_name(event.old_state),
        state_name(event.new_state)
    );
    if let Some(OstStatus { event, status }) = event.ost {
        line.push_str(&format!(" _OST(event {event:#x}, status {status:#x})"));
    }
    line
}

fn state_name(state: DimmState) -> &'static str {
    match state {
        DimmState::Empty => "empty",
        DimmState::Inserting => "inserting",
        DimmState::Added => "added",
        DimmState::Failed => "failed",
        DimmState::Removing => "removing",
    }
}

/// `insert ok`, `eject 0x84`: the notification the guest answered and its status.
fn ost_text(ost: OstStatus) -> String {
    let event = match ost.event {
        1 => "insert".to_owned(),
        3 => "eject".to_owned(),
        other => format!("event {other}"),
    };
    match ost.status {
        0 => format!("{event} ok"),
        status => format!("{event} {status:#x}"),
    }
}

pub(crate) fn to_json(body: &impl Serialize) -> Result<Vec<u8>, ClientError> {
    serde_json::to_vec(body).map_err(ClientError::Encode)
}

fn from_json<T: DeserializeOwned>(answer: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(answer).map_err(ClientError::Decode)
}
