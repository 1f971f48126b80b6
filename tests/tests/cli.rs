//! Bad command lines: tidal must refuse each with a non-zero exit and one clear line on stderr,
//! before any KVM work (so these run anywhere, no test host needed).

use std::time::Duration;

use tidal_tests::{run_tidal, GuestImages};

/// Runs tidal with `args`, expects a refusal, and returns its one-line error message.
fn refused(args: &[&str]) -> String {
    let out = run_tidal(args, Duration::from_secs(30));
    assert!(
        !out.status.success(),
        "tidal {args:?} succeeded; it should have refused\nstderr:\n{}",
        out.stderr
    );
    assert!(
        out.status.code().is_some(),
        "tidal {args:?} died of a signal ({}) instead of exiting with an error\nstderr:\n{}",
        out.status,
        out.stderr
    );
    assert!(
        !out.stderr.contains("panicked"),
        "tidal {args:?} panicked:\n{}",
        out.stderr
    );
    // One line, besides clap's own "For more information, try '--help'." hint.
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information, try"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "tidal {args:?} should print exactly one error line, it printed:\n{}",
        out.stderr
    );
    lines[0].to_owned()
}

/// Asserts that `message` mentions at least one of `words` (case-insensitive).
fn assert_mentions(message: &str, words: &[&str]) {
    let lower = message.to_lowercase();
    assert!(
        words.iter().any(|w| lower.contains(&w.to_lowercase())),
        "the error {message:?} should mention one of {words:?}"
    );
}

fn kernel() -> String {
    GuestImages::find().kernel.to_string_lossy().into_owned()
}

#[test]
fn missing_kernel_file_is_refused() {
    let message = refused(&["--kernel", "/nonexistent/vmlinuz"]);
    assert_mentions(&message, &["/nonexistent/vmlinuz"]);
}

#[test]
fn a_file_that_is_not_a_kernel_is_refused() {
    let message = refused(&["--kernel", "/etc/hostname"]);
    assert_mentions(&message, &["/etc/hostname", "kernel", "bzimage"]);
}

#[test]
fn zero_memory_is_refused() {
    let message = refused(&["--kernel", &kernel(), "--memory", "size=0"]);
    assert_mentions(&message, &["size", "memory"]);
}

#[test]
fn memory_with_an_unknown_unit_is_refused() {
    let message = refused(&["--kernel", &kernel(), "--memory", "size=12Q"]);
    assert_mentions(&message, &["size", "memory", "12Q"]);
}

#[test]
fn zero_cpus_are_refused() {
    let message = refused(&["--kernel", &kernel(), "--cpus", "0"]);
    assert_mentions(&message, &["cpu"]);
}

#[test]
fn a_thousand_cpus_are_refused() {
    let message = refused(&["--kernel", &kernel(), "--cpus", "1000"]);
    assert_mentions(&message, &["cpu"]);
}
