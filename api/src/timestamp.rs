//! Event times as `tidalctl` prints them: RFC 3339 in UTC with milliseconds
//! (`2026-11-29T21:30:03.202Z`). A few lines of calendar arithmetic rather than a date crate,
//! since this is all the API needs of dates.

const MS_PER_DAY: u64 = 86_400_000;

/// Formats milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn format_timestamp_ms(ms: u64) -> String {
    let (year, month, day) = civil_date(ms / MS_PER_DAY);
    let ms_of_day = ms % MS_PER_DAY;
    let seconds = ms_of_day / 1000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60,
        ms_of_day % 1000
    )
}

/// Year, month and day of the `days`th day after 1970-01-01, in the proleptic Gregorian
/// calendar: Howard Hinnant's `civil_from_days`, which counts in 400-year eras starting on
/// March 1st so that the leap day falls at the end of each year.
fn civil_date(days: u64) -> (u64, u64, u64) {
    /// Days from 0000-03-01 to 1970-01-01.
    const EPOCH_SHIFT: u64 = 719_468;
    /// Days in a 400-year era.
    const ERA_DAYS: u64 = 146_097;
    let days = days + EPOCH_SHIFT;
    let era = days / ERA_DAYS;
    let day_of_era = days % ERA_DAYS;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months counted from March: 0 is March, 11 is February.
    let march_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * march_month + 2) / 5 + 1;
    let month = if march_month < 10 {
        march_month + 3
    } else {
        march_month - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_with_milliseconds() {
        assert_eq!(format_timestamp_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_timestamp_ms(1_795_987_803_202),
            "2026-11-29T21:30:03.202Z"
        );
    }

    #[test]
    fn handles_leap_years_and_centuries() {
        assert_eq!(
            format_timestamp_ms(1_709_251_199_999),
            "2024-02-29T23:59:59.999Z"
        );
        assert_eq!(
            format_timestamp_ms(951_868_800_000),
            "2000-03-01T00:00:00.000Z"
        );
        assert_eq!(
            format_timestamp_ms(4_107_499_200_000),
            "2100-02-28T12:00:00.000Z"
        );
        assert_eq!(
            format_timestamp_ms(4_107_585_600_000),
            "2100-03-01T12:00:00.000Z"
        );
    }
}
