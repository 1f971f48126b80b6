//! Pieces of AML the device modules share: serialized AML that can sit beside other parts in a
//! scope, and the `_STA` value of a present device.

use acpi_tables::{Aml, AmlSink};

use crate::table::bytes_of;

/// `_STA` of a device that is present, enabled, shown in the UI and functioning.
pub(crate) const STA_PRESENT: u8 = 0x0f;

/// Already-serialized AML, so that parts built separately can sit side by side in a scope.
pub(crate) struct AmlBytes(Vec<u8>);

impl AmlBytes {
    /// Serializes `aml` now; the result borrows nothing.
    pub(crate) fn of(aml: &dyn Aml) -> Self {
        AmlBytes(bytes_of(aml))
    }
}

impl Aml for AmlBytes {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}
