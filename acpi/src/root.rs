//! The root of the table tree: the RSDP, which the guest finds at a known address, points at
//! the XSDT, which lists every other table (the FADT then leads to the DSDT).

use acpi_tables::rsdp::Rsdp;

use crate::table::{self, bytes_of, OEM_ID};

/// Length of the ACPI 2.0+ RSDP.
pub(crate) fn rsdp_len() -> usize {
    Rsdp::len()
}

/// A version-2 RSDP pointing at the XSDT (no RSDT: 64-bit guests use the XSDT).
pub(crate) fn rsdp(xsdt_address: u64) -> Vec<u8> {
    bytes_of(&Rsdp::new(OEM_ID, xsdt_address))
}

/// Length of an XSDT listing `entries` tables.
pub(crate) fn xsdt_len(entries: usize) -> usize {
    table::HEADER_LEN + entries * std::mem::size_of::<u64>()
}

/// The XSDT: the 64-bit addresses of the tables it lists.
pub(crate) fn xsdt(table_addresses: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = table_addresses
        .iter()
        .flat_map(|address| address.to_le_bytes())
        .collect();
    table::with_header(*b"XSDT", 1, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::checks::{assert_sums_to_zero, assert_valid_table, u32_at, u64_at};

    #[test]
    fn rsdp_v2_checksums_and_pointer() {
        let rsdp = rsdp(0xe_0030);
        assert_eq!(rsdp.len(), rsdp_len());
        assert_eq!(rsdp.len(), 36);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(rsdp[15], 2, "revision");
        assert_sums_to_zero(&rsdp[..20]);
        assert_sums_to_zero(&rsdp);
        assert_eq!(u32_at(&rsdp, 20), 36, "length");
        assert_eq!(u64_at(&rsdp, 24), 0xe_0030, "XSDT address");
    }

    #[test]
    fn xsdt_lists_addresses() {
        let xsdt = xsdt(&[0x1000, 0x2000_0000_0000]);
        assert_valid_table(&xsdt, b"XSDT");
        assert_eq!(xsdt.len(), xsdt_len(2));
        assert_eq!(u64_at(&xsdt, 36), 0x1000);
        assert_eq!(u64_at(&xsdt, 44), 0x2000_0000_0000);
    }
}
