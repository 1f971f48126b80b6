//! Medians and ranges: a few runs of emulated guests vary a lot, so the report gives the median
//! (one slow run does not move it) with the whole range beside it.

use serde::Serialize;

/// The median, smallest and largest of some runs' values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let (&min, &max) = (sorted.first()?, sorted.last()?);
        let mid = sorted.len() / 2;
        let median = if sorted.len().is_multiple_of(2) {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        } else {
            sorted[mid]
        };
        Some(Summary { median, min, max })
    }
}

/// `a / b`, or `None` when that means nothing (`b` zero, either not finite).
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && b != 0.0).then(|| a / b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarizes_odd_and_even_counts() {
        assert_eq!(
            Summary::of(&[3.0, 1.0, 2.0]),
            Some(Summary {
                median: 2.0,
                min: 1.0,
                max: 3.0
            })
        );
        assert_eq!(
            Summary::of(&[4.0, 1.0, 2.0, 10.0]).map(|s| s.median),
            Some(3.0)
        );
        assert_eq!(
            Summary::of(&[5.0]).map(|s| (s.min, s.max)),
            Some((5.0, 5.0))
        );
        assert_eq!(Summary::of(&[]), None);
    }

    #[test]
    fn ratios_only_of_numbers() {
        assert_eq!(ratio(1.0, 4.0), Some(0.25));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }
}
