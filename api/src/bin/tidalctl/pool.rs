//! `tidalctl pool ...`: the host memory pool (`tidal-pool`) through its socket.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;
use tidal_api::pool::{
    DesiredRam, MoveReport, MoveRequest, PoolChange, PoolClient, PoolEvent, PoolView, Resized,
};
use tidal_api::size::format_size;
use tidal_api::{ClientError, MAX_TIMEOUT_SECS};

use crate::{event_time, parse_size_arg, table, to_json, Wait};

/// The longest a pool's answer may take: a move waits for two guests, each up to the longest
/// resize timeout, and for the donor's memory to come back.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2 * MAX_TIMEOUT_SECS + 120);

#[derive(Debug, Args)]
pub struct PoolCommand {
    /// The pool's socket (as given to tidal-pool's --socket).
    #[arg(long, value_name = "PATH", default_value = "/run/tidal-pool.sock")]
    socket: PathBuf,
    #[command(subcommand)]
    call: PoolCall,
}

#[derive(Debug, Subcommand)]
enum PoolCall {
    /// Show the budget, what is held and free, and each VM's share.
    Show,
    /// Shrink one VM and grow another by the same size, as one operation.
    Move {
        /// The VM that gives the memory.
        #[arg(long, value_name = "NAME")]
        from: String,
        /// The VM that gets it.
        #[arg(long, value_name = "NAME")]
        to: String,
        /// How much: bytes, or a number with K, M, G or T (powers of 1024).
        #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
        size: u64,
        #[command(flatten)]
        wait: Wait,
    },
    /// Resize a VM to a total, taking what the free budget lacks from VMs of lower priority.
    Resize {
        /// The VM, by its name in the pool.
        name: String,
        /// Total memory wanted: bytes, or a number with K, M, G or T (powers of 1024).
        #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
        memory: u64,
        #[command(flatten)]
        wait: Wait,
    },
    /// Follow the pool's changes, one line each, until the pool stops (or Ctrl-C).
    Events,
}

/// Runs one `tidalctl pool` command; `json` prints the pool's answer as JSON instead.
pub fn run(command: &PoolCommand, json: bool) -> Result<(), ClientError> {
    let client = PoolClient::new(&command.socket, ANSWER_TIMEOUT);
    let text = match &command.call {
        PoolCall::Show => shown(&client.show()?, json, view_table)?,
        PoolCall::Move {
            from,
            to,
            size,
            wait,
        } => {
            let request = MoveRequest {
                from: from.clone(),
                to: to.clone(),
                size: *size,
                timeout_secs: wait.timeout_secs,
            };
            shown(&client.move_memory(&request)?, json, move_summary)?
        }
        PoolCall::Resize { name, memory, wait } => {
            let request = DesiredRam {
                desired_ram: *memory,
                timeout_secs: wait.timeout_secs,
            };
            shown(&client.set_ram(name, &request)?, json, resize_summary)?
        }
        PoolCall::Events => return follow(&client, json),
    };
    print!("{text}");
    Ok(())
}

/// The answer as a JSON line with `json`, else as `summary` puts it.
fn shown<T: Serialize>(
    answer: &T,
    json: bool,
    summary: fn(&T) -> String,
) -> Result<String, ClientError> {
    if json {
        let mut line = String::from_utf8_lossy(&to_json(answer)?).into_owned();
        line.push('\n');
        Ok(line)
    } else {
        Ok(summary(answer))
    }
}

/// Prints each change as it comes, until the pool ends the stream or stdout is closed.
fn follow(client: &PoolClient, json: bool) -> Result<(), ClientError> {
    let mut stdout = io::stdout().lock();
    for event in client.events()? {
        let text = match event {
            Ok(event) if json => String::from_utf8_lossy(&to_json(&event)?).into_owned(),
            Ok(event) => event_line(&event),
            Err(ClientError::Lagged(lagged)) => {
                format!("({lagged} events skipped: this reader fell behind)")
            }
            Err(error) => return Err(error),
        };
        if writeln!(stdout, "{text}").is_err() {
            break;
        }
    }
    Ok(())
}

/// `budget 4 GiB, held 3 GiB, free 1 GiB`, then a row per VM.
fn view_table(view: &PoolView) -> String {
    let header = [
        "NAME", "PRIORITY", "BOOT", "PLUGGED", "RESERVED", "PROMISED", "MIN", "MAX", "PID",
    ]
    .map(String::from);
    let rows = view.vms.iter().map(|vm| {
        [
            vm.name.clone(),
            vm.priority.to_string(),
            format_size(vm.boot),
            format_size(vm.plugged),
            format_size(vm.reserved),
            format_size(vm.promised),
            format_size(vm.min),
            format_size(vm.max),
            vm.pid.to_string(),
        ]
    });
    format!(
        "budget {}, held {}, free {}\n{}",
        format_size(view.budget),
        format_size(view.held),
        format_size(view.free),
        table(std::iter::once(header).chain(rows))
    )
}

/// `moved 1 GiB from a to b in 11.2 s: a has 1 GiB, b 2 GiB`.
fn move_summary(report: &MoveReport) -> String {
    format!(
        "moved {} from {} to {} in {:.1} s: {} has {}, {} {}\n",
        format_size(report.size),
        report.from,
        report.to,
        Duration::from_millis(report.millis).as_secs_f64(),
        report.from,
        format_size(report.from_ram),
        report.to,
        format_size(report.to_ram)
    )
}

/// `hi resized to 2 GiB, taking 512 MiB from lo`.
fn resize_summary(resized: &Resized) -> String {
    let taken: Vec<String> = resized
        .taken
        .iter()
        .map(|taken| format!("{} from {}", format_size(taken.size), taken.from))
        .collect();
    let taking = if taken.is_empty() {
        String::new()
    } else {
        format!(", taking {}", taken.join(" and "))
    };
    format!(
        "{} resized to {}{taking}\n",
        resized.name,
        format_size(resized.ram)
    )
}

/// `2026-12-07T21:30:03.202Z #5 a reserved 1 GiB (holds 2 GiB, free 1 GiB)`, with a move's
/// receiver and a refusal's reason.
fn event_line(event: &PoolEvent) -> String {
    let mut line = format!(
        "{} #{} {} {} {}",
        event_time(event.at_ms.saturating_mul(1000)),
        event.seq,
        event.vm,
        change_word(event.what),
        format_size(event.size)
    );
    if let Some(to) = &event.to {
        line.push_str(&format!(" to {to}"));
    }
    line.push_str(&format!(
        " (holds {}, free {})",
        format_size(event.held),
        format_size(event.free)
    ));
    if let Some(message) = &event.message {
        line.push_str(&format!(": {message}"));
    }
    line
}

fn change_word(change: PoolChange) -> &'static str {
    match change {
        PoolChange::Registered => "registered with",
        PoolChange::Left => "left, giving back",
        PoolChange::Ended => "ended, giving back",
        PoolChange::Reserved => "reserved",
        PoolChange::Refused => "was refused",
        PoolChange::Committed => "plugged",
        PoolChange::Cancelled => "cancelled",
        PoolChange::Released => "released",
        PoolChange::Moved => "moved",
        PoolChange::MoveFailed => "failed to move",
    }
}
