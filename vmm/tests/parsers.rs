//! Properties of what users type: sizes, `--memory` and `--numa`. Whatever the text, the
//! parsers answer with a value or an error and never panic, and every configuration they accept
//! is one the VMM can build (aligned, in range, with a hotplug region that fits the guest's
//! physical address space).

use proptest::prelude::*;
use tidal_api::size::{format_size, parse_size};
use tidal_vmm::config::{parse_memory, MAX_MEMORY, MAX_SLOTS, MIN_MEMORY};
use tidal_vmm::layout::{MAX_GUEST_PHYSICAL, MEMORY_BLOCK_SIZE, PAGE_SIZE};
use tidal_vmm::memory::guest::GuestMemoryLayout;
use tidal_vmm::numa::parse_node;

/// Size-like text: digits with an optional unit, sometimes with noise around it.
fn size_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<u64>(), "[kKmMgGtT]?(i?[bB])?").prop_map(|(n, unit)| format!("{n}{unit}")),
        (0u64..5000, "[kKmMgGtT]").prop_map(|(n, unit)| format!("{n}{unit}")),
        ".{0,12}",
    ]
}

/// `--memory` text: known and unknown keys with size-like values, in any order.
fn memory_text() -> impl Strategy<Value = String> {
    let pair = (
        prop_oneof!["size", "hotplug_size", "slots", "[a-z_]{1,8}"],
        prop_oneof![size_text(), (0u32..300).prop_map(|n| n.to_string())],
    )
        .prop_map(|(key, value)| format!("{key}={value}"));
    // Mostly well-formed, so that many cases are accepted and the properties get checked.
    let backend = prop_oneof![
        Just(""),
        Just(",shared=on,prefault=on"),
        Just(",hugepages=on"),
        Just(",hugepages=on,hugepage_size=1G,shared=on"),
        Just(",hugepage_size=2M"),
    ];
    let plausible =
        (1u64..8192, 0u64..2048, 0u32..300, backend).prop_map(|(boot, hotplug, slots, backend)| {
            format!("size={boot}M,hotplug_size={hotplug}G,slots={slots}{backend}")
        });
    prop_oneof![
        plausible,
        prop::collection::vec(pair, 0..4).prop_map(|pairs| pairs.join(",")),
        ".{0,40}",
    ]
}

/// `--numa` text: mostly a whole node with odd values here and there, else anything.
fn numa_text() -> impl Strategy<Value = String> {
    let distance = prop::option::of((0u32..10, 0u16..300));
    let plausible = (0u32..10, 0u8..8, 0u8..8, 0u64..4096, 0u64..4096, distance).prop_map(
        |(id, first, last, memory, hotplug, distance)| {
            let mut text = format!(
                "id={id},cpus=[{first}-{last},{last}],memory={memory}M,hotplug_size={hotplug}M"
            );
            if let Some((to, d)) = distance {
                text += &format!(",distance={to}@{d}");
            }
            text
        },
    );
    prop_oneof![plausible, ".{0,60}"]
}

proptest! {
    // A failure prints its shrunk input; it belongs in a unit test, not a file beside this one.
    #![proptest_config(ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn sizes_parse_or_fail_and_accepted_ones_print_back(text in size_text()) {
        if let Ok(bytes) = parse_size(&text) {
            prop_assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }
    }

    #[test]
    fn every_size_prints_as_text_that_parses_back(bytes in any::<u64>()) {
        prop_assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
    }

    #[test]
    fn accepted_memory_options_describe_a_buildable_guest(text in memory_text()) {
        let Ok((memory, backend)) = parse_memory(&text) else {
            return Ok(());
        };
        prop_assert!((MIN_MEMORY..=MAX_MEMORY).contains(&memory.size));
        prop_assert_eq!(memory.size % backend.page_size(), 0);
        prop_assert_eq!(memory.size % PAGE_SIZE, 0);
        let layout = GuestMemoryLayout::new(memory.size);
        prop_assert_eq!(layout.ranges().iter().map(|&(_, len)| len).sum::<u64>(), memory.size);
        if memory.hotplug_size == 0 {
            prop_assert_eq!(memory.slots, 0);
        } else {
            prop_assert_eq!(memory.hotplug_size % MEMORY_BLOCK_SIZE, 0);
            prop_assert!((1..=MAX_SLOTS).contains(&memory.slots));
            let base = layout.hotplug_region_base();
            prop_assert!(base >= layout.end());
            prop_assert!(base + memory.hotplug_size <= MAX_GUEST_PHYSICAL);
        }
    }

    #[test]
    fn accepted_numa_nodes_hold_whole_blocks_and_sorted_vcpus(text in numa_text()) {
        let Ok(node) = parse_node(&text) else {
            return Ok(());
        };
        prop_assert!(node.memory > 0 && node.memory.is_multiple_of(MEMORY_BLOCK_SIZE));
        prop_assert!(node.hotplug_size.is_multiple_of(MEMORY_BLOCK_SIZE));
        prop_assert!(!node.cpus.is_empty());
        prop_assert!(node.cpus.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
