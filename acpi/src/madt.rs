//! The MADT: where the interrupt controllers are. One enabled local APIC per vCPU, the I/O
//! APIC, and LINT1 of every local APIC wired as NMI. No PCAT_COMPAT flag: a hardware-reduced
//! platform has no 8259 PICs.

use acpi_tables::madt::{EnabledStatus, IoApic as IoApicEntry, ProcessorLocalApic};
use acpi_tables::{Aml, AmlSink};

use crate::table::{self, bytes_of};
use crate::{AcpiConfig, AcpiError};

/// MADT revision (ACPI 6.3 and later).
const MADT_REVISION: u8 = 5;
/// MADT flags: no PCAT_COMPAT (bit 0).
const MADT_FLAGS: u32 = 0;
/// Most vCPUs the 8-bit local APIC entries can describe: APIC id 0xFF means "broadcast".
pub(crate) const MAX_CPUS: u32 = 255;

/// MADT structure type of a Local APIC NMI entry (missing from `acpi_tables`).
const LOCAL_APIC_NMI: u8 = 4;
/// Processor UID that means "every processor".
const ALL_PROCESSORS: u8 = 0xff;
/// MPS INTI flags "conforms to the bus": NMI is edge-triggered, active high.
const CONFORMING: u16 = 0;
/// The local APIC pin the NMI is wired to.
const LINT1: u8 = 1;

/// A Local APIC NMI structure (ACPI 6.5, 5.2.12.7): which LINT pin of which processor's
/// local APIC receives NMIs.
struct LocalApicNmi {
    processor_uid: u8,
    flags: u16,
    lint: u8,
}

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        const LENGTH: u8 = 6;
        sink.byte(LOCAL_APIC_NMI);
        sink.byte(LENGTH);
        sink.byte(self.processor_uid);
        sink.word(self.flags);
        sink.byte(self.lint);
    }
}

/// The MADT for `config`'s vCPUs and I/O APIC.
pub(crate) fn madt(config: &AcpiConfig) -> Result<Vec<u8>, AcpiError> {
    if config.cpus == 0 || config.cpus > MAX_CPUS {
        return Err(AcpiError::CpuCount(config.cpus));
    }
    let mut body = Vec::new();
    body.extend_from_slice(&config.lapic_address.to_le_bytes());
    body.extend_from_slice(&MADT_FLAGS.to_le_bytes());
    for cpu in 0..config.cpus {
        let id = u8::try_from(cpu).map_err(|_| AcpiError::CpuCount(config.cpus))?;
        ProcessorLocalApic::new(id, id, EnabledStatus::Enabled).to_aml_bytes(&mut body);
    }
    let ioapic = config.ioapic;
    IoApicEntry::new(ioapic.id, ioapic.address, ioapic.gsi_base).to_aml_bytes(&mut body);
    body.extend(bytes_of(&LocalApicNmi {
        processor_uid: ALL_PROCESSORS,
        flags: CONFORMING,
        lint: LINT1,
    }));
    Ok(table::with_header(*b"APIC", MADT_REVISION, &body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::checks::{assert_valid_table, subtables, u32_at};
    use crate::tests::config;

    /// The MADT's interrupt controller structures as (type, bytes) pairs.
    fn structures(madt: &[u8]) -> Vec<(u8, &[u8])> {
        subtables(madt, 44)
    }

    fn local_apics(madt: &[u8]) -> Vec<(u8, u8, u32)> {
        structures(madt)
            .into_iter()
            .filter(|(kind, _)| *kind == 0)
            .map(|(_, entry)| (entry[2], entry[3], u32_at(entry, 4)))
            .collect()
    }

    #[test]
    fn one_enabled_local_apic_per_cpu() {
        for cpus in [1u8, 16, 255] {
            let madt = madt(&config(u32::from(cpus))).unwrap();
            assert_valid_table(&madt, b"APIC");
            let expected: Vec<_> = (0..cpus).map(|i| (i, i, 1)).collect();
            assert_eq!(local_apics(&madt), expected, "{cpus} vCPUs");
        }
    }

    #[test]
    fn header_ioapic_and_nmi() {
        let madt = madt(&config(2)).unwrap();
        assert_eq!(u32_at(&madt, 36), 0xfee0_0000, "local APIC address");
        assert_eq!(u32_at(&madt, 40), 0, "flags: no PCAT_COMPAT");
        let structures = structures(&madt);
        let ioapics: Vec<_> = structures.iter().filter(|(kind, _)| *kind == 1).collect();
        assert_eq!(ioapics.len(), 1);
        let ioapic = ioapics[0].1;
        assert_eq!(ioapic[2], 0, "I/O APIC id");
        assert_eq!(u32_at(ioapic, 4), 0xfec0_0000);
        assert_eq!(u32_at(ioapic, 8), 0, "GSI base");
        let nmis: Vec<_> = structures.iter().filter(|(kind, _)| *kind == 4).collect();
        assert_eq!(nmis.len(), 1);
        assert_eq!(nmis[0].1, &[4, 6, 0xff, 0, 0, 1]);
    }

    #[test]
    fn cpu_count_out_of_range_is_an_error() {
        assert_eq!(madt(&config(0)), Err(AcpiError::CpuCount(0)));
        assert_eq!(madt(&config(256)), Err(AcpiError::CpuCount(256)));
    }
}
