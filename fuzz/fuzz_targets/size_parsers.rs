//! What users type for sizes: the VMM's `--memory` option (`tidal_vmm::config::parse_memory`),
//! its `--numa` option (`tidal_vmm::numa::parse_node`), and the sizes in them and in
//! `tidalctl`'s arguments (`tidal_api::size`), fed any text.
//!
//! Whatever the text, each parser answers with a value or an error and never panics; an
//! accepted size prints (`format_size`) as text that parses back to the same value; and an
//! accepted `--memory` or `--numa` prints back as an option that parses to the same
//! configuration, memory backend included. The first eight bytes, as a number, must print and parse back too.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tidal_api::size::{format_size, parse_size};
use tidal_vmm::config::{parse_memory, MemoryConfig};
use tidal_vmm::memory::backend::MemoryBackend;
use tidal_vmm::numa::{parse_node, NodeConfig};

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
        let printed = print_memory(&memory.0, &memory.1);
        let reparsed = parse_memory(&printed).map_err(|e| e.to_string());
        assert_eq!(
            reparsed,
            Ok(memory),
            "{text:?} was accepted, but its print {printed:?} is not the same"
        );
    }

    if let Ok(node) = parse_node(&text) {
        let printed = print_node(&node);
        let reparsed = parse_node(&printed).map_err(|e| e.to_string());
        assert_eq!(
            reparsed,
            Ok(node),
            "{text:?} was accepted, but its print {printed:?} is not the same"
        );
    }
});

/// `--numa` as a user would write the node, vCPUs one by one.
fn print_node(node: &NodeConfig) -> String {
    let list = |items: Vec<String>| format!("[{}]", items.join(","));
    let cpus = list(node.cpus.iter().map(u8::to_string).collect());
    let mut text = format!(
        "id={},cpus={cpus},memory={},hotplug_size={}",
        node.id,
        format_size(node.memory),
        format_size(node.hotplug_size)
    );
    if node.hotpluggable {
        text += ",hotpluggable=on";
    }
    with_backend(&mut text, &node.backend);
    if !node.distances.is_empty() {
        let distances = node.distances.iter().map(|(to, d)| format!("{to}@{d}"));
        text += &format!(",distance={}", list(distances.collect()));
    }
    text
}

/// The first eight bytes as a number, if there are eight.
fn leading_number(data: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(..8)?.try_into().ok()?))
}

/// `--memory` as a user would write the configuration, sizes as the VMM prints them.
fn print_memory(memory: &MemoryConfig, backend: &MemoryBackend) -> String {
    let mut text = format!("size={}", format_size(memory.size));
    if memory.hotplug_size > 0 {
        text += &format!(
            ",hotplug_size={},slots={}",
            format_size(memory.hotplug_size),
            memory.slots
        );
    }
    with_backend(&mut text, backend);
    text
}

/// Appends the backend's keys, if it has any.
fn with_backend(text: &mut String, backend: &MemoryBackend) {
    let keys = backend.to_string();
    if !keys.is_empty() {
        *text += ",";
        *text += &keys;
    }
}
