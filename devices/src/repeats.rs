//! Log lines the guest can cause, kept few: a guest that repeats something the host logs
//! (writes a register in a loop, retries a failing eject) must not be able to fill the host's
//! logs or slow its vCPU down with logging.
//!
//! A [`Repeats`] counts one kind of occurrence and says which to log: the 1st, 2nd, 4th, 8th,
//! ... (each time the count doubles), so `n` occurrences make at most `log2(n) + 1` lines, and
//! each line says how many there have been.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// How many times one kind of guest-caused occurrence has happened.
#[derive(Debug, Default)]
pub struct Repeats(AtomicU64);

impl Repeats {
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Counts one more occurrence; `Some` with the count when this one is to be logged.
    pub fn count(&self) -> Option<Times> {
        let n = self.0.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        n.is_power_of_two().then_some(Times(n))
    }
}

/// The count of a logged occurrence, worded for the end of its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Times(pub u64);

impl fmt::Display for Times {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            1 => write!(
                f,
                "first time; repeats are logged each time their count doubles"
            ),
            n => write!(f, "{n} times so far"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_each_time_the_count_doubles() {
        let repeats = Repeats::new();
        let logged: Vec<u64> = (0..1000)
            .filter_map(|_| repeats.count())
            .map(|t| t.0)
            .collect();
        assert_eq!(logged, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]);
    }

    #[test]
    fn says_how_many() {
        assert_eq!(
            Times(1).to_string(),
            "first time; repeats are logged each time their count doubles"
        );
        assert_eq!(Times(64).to_string(), "64 times so far");
    }
}
