//! Where the tables go in guest memory: one after another from the base of the ACPI area,
//! each 16-byte aligned, all below the area's limit.

use crate::AcpiError;

/// Alignment of every table (the RSDP must be 16-byte aligned for legacy scanning).
const TABLE_ALIGNMENT: u64 = 16;

/// Hands out addresses in the ACPI area in order.
pub(crate) struct TableArea {
    next: u64,
    limit: u64,
}

impl TableArea {
    /// The area `[base, limit)`. `base` must be 16-byte aligned.
    pub(crate) fn new(base: u64, limit: u64) -> Result<Self, AcpiError> {
        if !base.is_multiple_of(TABLE_ALIGNMENT) {
            return Err(AcpiError::UnalignedBase(base));
        }
        Ok(TableArea { next: base, limit })
    }

    /// Reserves `len` bytes for the table `signature` and returns their address.
    pub(crate) fn place(&mut self, signature: [u8; 4], len: usize) -> Result<u64, AcpiError> {
        let address = self.next;
        let does_not_fit = || AcpiError::DoesNotFit {
            signature: String::from_utf8_lossy(&signature).into_owned(),
            address,
            len,
            limit: self.limit,
        };
        let end = u64::try_from(len)
            .ok()
            .and_then(|len| address.checked_add(len))
            .filter(|end| *end <= self.limit)
            .ok_or_else(does_not_fit)?;
        // The next table starts aligned; an area that ends here is still fine.
        self.next = end
            .checked_next_multiple_of(TABLE_ALIGNMENT)
            .unwrap_or(u64::MAX);
        Ok(address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_consecutive_and_aligned() {
        let mut area = TableArea::new(0xe_0000, 0x10_0000).unwrap();
        assert_eq!(area.place(*b"RSDP", 36).unwrap(), 0xe_0000);
        assert_eq!(area.place(*b"XSDT", 52).unwrap(), 0xe_0030);
        assert_eq!(area.place(*b"FACP", 16).unwrap(), 0xe_0070);
        assert_eq!(area.place(*b"APIC", 1).unwrap(), 0xe_0080);
    }

    #[test]
    fn a_table_may_end_exactly_at_the_limit() {
        let mut area = TableArea::new(0x1000, 0x1040).unwrap();
        assert_eq!(area.place(*b"XSDT", 0x40).unwrap(), 0x1000);
        assert!(matches!(
            area.place(*b"DSDT", 1),
            Err(AcpiError::DoesNotFit {
                address: 0x1040,
                len: 1,
                limit: 0x1040,
                ..
            })
        ));
    }

    #[test]
    fn unaligned_base_is_rejected() {
        assert!(matches!(
            TableArea::new(0xe_0008, 0x10_0000),
            Err(AcpiError::UnalignedBase(0xe_0008))
        ));
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        let mut area = TableArea::new(u64::MAX - 15, u64::MAX).unwrap();
        assert!(area.place(*b"DSDT", 100).is_err());
    }
}
