//! What users type for sizes: the VMM's `--memory` option (`tidal_vmm::config::parse_memory`)
//! and the sizes in it and in `tidalctl`'s arguments (`tidal_api::size`), fed any text.
//!
//! Whatever the text, each parser answers with a value or an error and never panics; an
//! accepted size prints (`format_size`) as text that parses back to the same value; and an
//! accepted `--memory` prints back as an option that parses to the same configuration. The
//! first eight bytes, as a number, must print and parse back too.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tidal_api::size::{format_size, parse_size};
use tidal_vmm::config::{parse_memory, MemoryConfig};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    for bytes in [parse_size(&text).ok(), leading_number(data)]
        .into_iter()
        .flatten()
    {
        let printed = format_size(bytes);
        assert_eq!(
            parse_size(&printed),
            Ok(bytes),
            "{bytes} printed as {printed:?}"
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
    let size = format!("size={}", format_size(memory.size));
    if memory.hotplug_size == 0 {
        return size;
    }
    format!(
        "{size},hotplug_size={},slots={}",
        format_size(memory.hotplug_size),
        memory.slots
    )
}
