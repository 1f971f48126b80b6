//! Memory sizes as users write them (`512M`, `2G`, `4096`) and as Tidal prints them
//! (`512 MiB`): one syntax for `tidalctl` and the VMM's `--memory`, whose parser uses this one.

use thiserror::Error;

/// Why a size was not understood. Each message quotes what the user wrote.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SizeError {
    #[error("empty size")]
    Empty,
    #[error("invalid size '{0}': expected bytes or a number with a K, M, G or T suffix")]
    Invalid(String),
    #[error("size '{0}' is too large")]
    TooLarge(String),
}

/// Suffixes and their shifts, largest first: powers of 1024.
const UNITS: [(char, u32); 4] = [('T', 40), ('G', 30), ('M', 20), ('K', 10)];

/// Parses a byte count: plain digits, or digits with a K/M/G/T suffix (case-insensitive,
/// powers of 1024), optionally followed by `B` or `iB` (`2G`, `2GB` and `2GiB` are the same).
/// A space may stand before the unit, so what [`format_size`] prints parses back.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(SizeError::Empty);
    }
    let upper = trimmed.to_ascii_uppercase();
    let number = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (digits, shift) = UNITS
        .iter()
        .find_map(|&(suffix, shift)| number.strip_suffix(suffix).map(|d| (d, shift)))
        .unwrap_or((number, 0));
    let digits = digits.trim_end();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SizeError::Invalid(trimmed.to_owned()));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|value| value.checked_mul(1 << shift))
        .ok_or_else(|| SizeError::TooLarge(trimmed.to_owned()))
}

/// Formats bytes for people in the largest binary unit that shows them exactly
/// (`2 GiB`, `1536 MiB`, `4097 B`), so a printed size is never rounded.
pub fn format_size(bytes: u64) -> String {
    UNITS
        .iter()
        .find(|&&(_, shift)| bytes != 0 && bytes.is_multiple_of(1 << shift))
        .map_or_else(
            || format!("{bytes} B"),
            |&(suffix, shift)| format!("{} {suffix}iB", bytes >> shift),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bytes_and_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size(" 2G "), Ok(2 << 30));
        assert_eq!(parse_size("2GB"), Ok(2 << 30));
        assert_eq!(parse_size("2gib"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn rejects_what_is_not_a_size() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("  "), Err(SizeError::Empty));
        for text in ["G", "12Q", "-1G", "1.5G", "1 2G", "0x10", "B", "1KM"] {
            assert_eq!(
                parse_size(text),
                Err(SizeError::Invalid(text.to_owned())),
                "{text}"
            );
        }
    }

    #[test]
    fn rejects_sizes_that_overflow() {
        assert_eq!(
            parse_size("16777216T"),
            Err(SizeError::TooLarge("16777216T".to_owned()))
        );
        assert_eq!(
            parse_size("99999999999999999999"),
            Err(SizeError::TooLarge("99999999999999999999".to_owned()))
        );
        assert_eq!(parse_size("16777215T"), Ok(16_777_215 << 40));
    }

    #[test]
    fn error_messages_quote_the_input() {
        assert_eq!(
            parse_size("2X").unwrap_err().to_string(),
            "invalid size '2X': expected bytes or a number with a K, M, G or T suffix"
        );
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(4097), "4097 B");
        assert_eq!(format_size(4096), "4 KiB");
        assert_eq!(format_size(1536 << 20), "1536 MiB");
        assert_eq!(format_size(2 << 30), "2 GiB");
        assert_eq!(format_size(3 << 40), "3 TiB");
    }

    #[test]
    fn formatted_sizes_parse_back() {
        for bytes in [0, 4097, 4096, 1536 << 20, 2 << 30, 3 << 40] {
            assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }
    }
}
