//! What users type for sizes: the VMM's `--memory` option and its sizes
//! (`tidal_vmm::config::parse_memory`, `tidal_vmm::size`) and `tidalctl`'s sizes
//! (`tidal_api::size`), fed any text.
//!
//! Whatever the text, each parser answers with a value or an error and never panics; a size
//! either parser accepts prints (with its own `format_size`) as text that parses back to the
//! same value; a size the VMM accepts means the same to `tidalctl`, whose syntax is the VMM's
//! and more; and an accepted `--memory` prints back as an option that parses to the same
//! configuration. The first eight bytes, as a number, must print and parse back too.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tidal_api::size as api;
use tidal_vmm::config::{parse_memory, MemoryConfig};
use tidal_vmm::size as vmm;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    let by_vmm = vmm::parse_size(&text);
    let by_api = api::parse_size(&text);
    if let Ok(bytes) = by_vmm {
        assert_eq!(
            by_api.clone().ok(),
            Some(bytes),
            "the VMM reads {text:?} as {bytes}, tidalctl as {by_api:?}"
        );
    }
    for bytes in [by_vmm.ok(), by_api.ok(), leading_number(data)]
        .into_iter()
        .flatten()
    {
        let printed = vmm::format_size(bytes);
        assert_eq!(
            vmm::parse_size(&printed),
            Ok(bytes),
            "the VMM printed {printed:?}"
        );
        let printed = api::format_size(bytes);
        assert_eq!(
            api::parse_size(&printed),
            Ok(bytes),
            "tidalctl printed {printed:?}"
        );
    }

    if let Ok(memory) = parse_memory(&text) {
        let printed = print_memory(&memory);
        let reparsed = parse_memory(&printed).map_err(|e| e.to_string());
        assert_eq!(
            reparsed,
            Ok(memory),
            "{text:?} was accepted, but its print {printed:?} is not the same"
        );
    }
});

/// The first eight bytes as a number, if there are eight.
fn leading_number(data: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(..8)?.try_into().ok()?))
}

/// `--memory` as a user would write the configuration, sizes as the VMM prints them.
fn print_memory(memory: &MemoryConfig) -> String {
    let size = format!("size={}", vmm::format_size(memory.size));
    if memory.hotplug_size == 0 {
        return size;
    }
    format!(
        "{size},hotplug_size={},slots={}",
        vmm::format_size(memory.hotplug_size),
        memory.slots
    )
}
