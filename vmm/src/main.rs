//! The `tidal` binary: parse the command line, build the VM, run it, and turn the outcome into
//! an exit code and, on error, one line on stderr.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use tidal_devices::ExitReason;
use tidal_vmm::config::{Cli, VmConfig};
use tidal_vmm::vm::{self, Vm};

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::new()
        .filter_level(cli.log_level)
        .parse_default_env()
        .format_timestamp_millis()
        .init();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tidal: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<(), String> {
    let config = VmConfig::try_from(cli).map_err(|e| e.to_string())?;
    if let Some(dir) = &cli.dump_acpi {
        return dump_acpi(&config, dir);
    }
    let vm = Vm::new(&config).map_err(|e| e.to_string())?;
    match vm.run().map_err(|e| e.to_string())? {
        ExitReason::PowerOff => log::info!("guest powered off"),
        ExitReason::Reset => log::info!("guest reset; Tidal does not restart guests"),
        ExitReason::Failed => return Err("the VM failed".into()),
    }
    Ok(())
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
