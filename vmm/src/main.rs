//! The `tidal` binary: parse the command line, build the VM, run it, and turn the outcome into
//! an exit code and, on error, one line on stderr.
//!
//! Exit codes (README.md, "Exit"): 0 the guest powered off or reset; 1 an error; 2 a command
//! line clap rejects; 3 the guest kernel panicked; 128 + N stopped by signal N (SIGHUP 129,
//! SIGINT 130, SIGTERM 143); 70 after an internal error (a panic).

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use tidal_devices::ExitReason;
use tidal_vmm::config::{Cli, VmConfig};
use tidal_vmm::vm::{self, Vm, VmExit};
use tidal_vmm::{internal_error, signals};

/// The exit code when the guest kernel panicked.
const GUEST_PANICKED: u8 = 3;

fn main() -> ExitCode {
    internal_error::stop_on_panic();
    // First of all, while this is the only thread: every thread started later inherits the
    // mask, so SIGTERM, SIGINT and SIGHUP only ever reach the VM's event loop.
    let blocked = signals::block_stop_signals();
    let cli = Cli::parse();
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .parse_default_env()
        .format_timestamp_millis()
        .init();
    let outcome = blocked.map_err(|e| e.to_string()).and_then(|()| run(&cli));
    match outcome {
        Ok(code) => code,
        Err(message) => {
            eprintln!("tidal: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<ExitCode, String> {
    let config = VmConfig::try_from(cli).map_err(|e| e.to_string())?;
    if let Some(dir) = &cli.dump_acpi {
        dump_acpi(&config, dir)?;
        return Ok(ExitCode::SUCCESS);
    }
    let vm = Vm::new(&config).map_err(|e| e.to_string())?;
    Ok(match vm.run().map_err(|e| e.to_string())? {
        VmExit::Ended(ExitReason::PowerOff) => {
            log::info!("guest powered off");
            ExitCode::SUCCESS
        }
        VmExit::Ended(ExitReason::Reset) => {
            log::info!("guest reset; Tidal does not restart guests");
            ExitCode::SUCCESS
        }
        VmExit::Ended(ExitReason::Shutdown) => ExitCode::SUCCESS,
        // Said by the panic hook, when it happened.
        VmExit::Ended(ExitReason::InternalError) => {
            ExitCode::from(internal_error::INTERNAL_ERROR_EXIT_CODE)
        }
        VmExit::Ended(ExitReason::Failed) => return Err("the VM failed".into()),
        // Logged when it happened (error level), before the VM stopped.
        VmExit::Ended(ExitReason::GuestPanicked) => ExitCode::from(GUEST_PANICKED),
        VmExit::Signal(signal) => {
            log::info!("stopped by {}", signal.name());
            ExitCode::from(signal.exit_code())
        }
    })
}

/// Writes each ACPI table as DIR/<SIGNATURE>.dat, the form `iasl -d` reads.
fn dump_acpi(config: &VmConfig, dir: &Path) -> Result<(), String> {
    let tables = vm::acpi_tables(config).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    for table in &tables.tables {
        let name = format!("{}.dat", String::from_utf8_lossy(&table.signature));
        let path = dir.join(name);
        std::fs::write(&path, &table.bytes)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}
