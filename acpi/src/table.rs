//! The standard 36-byte header that every ACPI table except the RSDP starts with, and the
//! OEM identity Tidal puts in it. One place computes lengths and checksums.

use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;

/// OEM ID in every table header and the RSDP.
pub(crate) const OEM_ID: [u8; 6] = *b"TIDAL ";
/// OEM table ID in every table header.
pub(crate) const OEM_TABLE_ID: [u8; 8] = *b"TIDALVMM";
/// OEM revision in every table header.
pub(crate) const OEM_REVISION: u32 = 1;
/// Length of the standard table header.
const HEADER_LEN_U32: u32 = 36;
/// Length of the standard table header, for byte arithmetic.
pub(crate) const HEADER_LEN: usize = HEADER_LEN_U32 as usize;

/// A table: `body` behind a header with the right length and checksum.
pub(crate) fn with_header(signature: [u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut table = Sdt::new(
        signature,
        HEADER_LEN_U32,
        revision,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    table.append_slice(body);
    table.as_slice().to_vec()
}

/// The bytes an AML object (or a table from `acpi_tables`) serializes to.
pub(crate) fn bytes_of(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
pub(crate) mod checks {
    //! Assertions shared by the table tests.

    /// Asserts the header's length field matches and the bytes sum to zero.
    pub(crate) fn assert_valid_table(bytes: &[u8], signature: &[u8; 4]) {
        assert_eq!(&bytes[0..4], signature);
        let length = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
        assert_eq!(
            length as usize,
            bytes.len(),
            "length field of {signature:?}"
        );
        assert_sums_to_zero(bytes);
    }

    /// Asserts the bytes sum to zero modulo 256 (a valid ACPI checksum).
    pub(crate) fn assert_sums_to_zero(bytes: &[u8]) {
        let sum = bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b));
        assert_eq!(sum, 0, "checksum");
    }

    /// Whether `needle` occurs in `haystack`.
    pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    }

    /// The (type, bytes) subtables that follow a table's fixed part of `fixed_len` bytes, each
    /// starting with a type byte and a length byte (MADT, SRAT).
    pub(crate) fn subtables(table: &[u8], fixed_len: usize) -> Vec<(u8, &[u8])> {
        let mut rest = &table[fixed_len..];
        let mut subtables = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(rest[1]);
            subtables.push((rest[0], &rest[..len]));
            rest = &rest[len..];
        }
        subtables
    }

    /// Reads a little-endian u32 at `offset`.
    pub(crate) fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    /// Reads a little-endian u64 at `offset`.
    pub(crate) fn u64_at(bytes: &[u8], offset: usize) -> u64 {
        u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_carries_length_checksum_and_identity() {
        let table = with_header(*b"TEST", 3, &[1, 2, 3, 4, 5]);
        checks::assert_valid_table(&table, b"TEST");
        assert_eq!(table.len(), HEADER_LEN + 5);
        assert_eq!(table[8], 3);
        assert_eq!(&table[10..16], &OEM_ID);
        assert_eq!(&table[16..24], &OEM_TABLE_ID);
        assert_eq!(&table[36..], &[1, 2, 3, 4, 5]);
    }
}
