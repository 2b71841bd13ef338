//! Fixed-format date and time text, parsed and printed without a general-purpose parser:
//! the hot paths (CSV import, JSON encode for Kafka) touch every row.

/// Microseconds per second.
pub const MICROS_PER_SECOND: i64 = 1_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn digits(bytes: &[u8]) -> Option<u32> {
    let mut value = 0u32;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(b - b'0');
    }
    Some(value)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parses `YYYY-MM-DD` into days since the epoch.
pub fn parse_date(text: &str) -> Option<i32> {
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let year = i64::from(digits(&b[0..4])?);
    let month = digits(&b[5..7])?;
    let day = digits(&b[8..10])?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    i32::try_from(days_from_civil(year, month, day)).ok()
}

/// Parses `YYYY-MM-DD HH:MM:SS` (or with `T`, and an optional `.ffffff` fraction) into
/// microseconds since the epoch, read as UTC.
pub fn parse_timestamp_micros(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 19 || (b[10] != b' ' && b[10] != b'T') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let days = i64::from(parse_date(&text[..10])?);
    let hour = digits(&b[11..13])?;
    let minute = digits(&b[14..16])?;
    let second = digits(&b[17..19])?;
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut micros = 0i64;
    if b.len() > 19 {
        let fraction = &b[19..];
        if fraction[0] != b'.' || fraction.len() < 2 || fraction.len() > 7 {
            return None;
        }
        let value = i64::from(digits(&fraction[1..])?);
        micros = value * 10i64.pow(6 - (fraction.len() as u32 - 1));
    }
    let seconds = days * SECONDS_PER_DAY
        + i64::from(hour) * 3600
        + i64::from(minute) * 60
        + i64::from(second);
    Some(seconds * MICROS_PER_SECOND + micros)
}

/// Writes `value`'s last two decimal digits at `at`.
fn two_digits(text: &mut [u8], at: usize, value: u32) {
    text[at] = b'0' + (value / 10 % 10) as u8;
    text[at + 1] = b'0' + (value % 10) as u8;
}

/// `YYYY-MM-DD` of a day since the epoch (years clamped to 0000–9999).
fn date_text(days: i64) -> [u8; 10] {
    let (year, month, day) = civil_from_days(days);
    let year = year.clamp(0, 9999) as u32;
    let mut text = *b"0000-00-00";
    two_digits(&mut text, 0, year / 100);
    two_digits(&mut text, 2, year % 100);
    two_digits(&mut text, 5, month);
    two_digits(&mut text, 8, day);
    text
}

/// Appends `YYYY-MM-DD`.
pub fn write_date(out: &mut Vec<u8>, days: i32) {
    out.extend_from_slice(&date_text(i64::from(days)));
}

/// Appends `YYYY-MM-DD HH:MM:SS` (and `.ffffff` when there is a sub-second part).
pub fn write_timestamp_micros(out: &mut Vec<u8>, micros: i64) {
    out.extend_from_slice(EventTimeText::new(micros).as_str().as_bytes());
    let fraction = micros.rem_euclid(MICROS_PER_SECOND);
    if fraction != 0 {
        out.extend_from_slice(format!(".{fraction:06}").as_bytes());
    }
}

/// `YYYY-MM-DD HH:MM:SS` for microseconds since the epoch, to the whole second (below it,
/// truncated): an event time as the source writes it and the result store keeps it.
pub fn event_time_text(micros: i64) -> String {
    EventTimeText::new(micros).as_str().to_string()
}

/// [`event_time_text`] without an allocation: the 19 bytes in place (the store writes one
/// per scored row).
#[derive(Clone, Copy)]
pub struct EventTimeText([u8; 19]);

impl EventTimeText {
    pub fn new(micros: i64) -> Self {
        let seconds = micros.div_euclid(MICROS_PER_SECOND);
        let of_day = seconds.rem_euclid(SECONDS_PER_DAY) as u32;
        let mut text = *b"0000-00-00 00:00:00";
        text[..10].copy_from_slice(&date_text(seconds.div_euclid(SECONDS_PER_DAY)));
        two_digits(&mut text, 11, of_day / 3600);
        two_digits(&mut text, 14, of_day / 60 % 60);
        two_digits(&mut text, 17, of_day % 60);
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or("0000-00-00 00:00:00")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_times_as_text() {
        for (micros, text) in [
            (0i64, "1970-01-01 00:00:00"),
            (-1, "1969-12-31 23:59:59"),
            (1_546_300_818_000_000, "2019-01-01 00:00:18"),
            (1_546_300_818_999_999, "2019-01-01 00:00:18"),
            (1_582_934_400_123_456, "2020-02-29 00:00:00"),
            (253_402_300_799_000_000, "9999-12-31 23:59:59"),
        ] {
            assert_eq!(event_time_text(micros), text, "{micros}");
        }
        let mut out = Vec::new();
        write_timestamp_micros(&mut out, 1_582_934_400_123_456);
        assert_eq!(out, b"2020-02-29 00:00:00.123456");
    }

    #[test]
    fn known_dates() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2019-01-01"), Some(17_897));
        assert_eq!(parse_date("1956-12-03"), Some(-4777));
        assert_eq!(parse_date("2020-02-29"), Some(18_321));
        assert_eq!(parse_date("2019-02-29"), None);
        assert_eq!(parse_date("2019-13-01"), None);
        assert_eq!(parse_date("2019-1-01"), None);
    }

    #[test]
    fn timestamp_agrees_with_sparkov_unix_time() {
        // First row of the reference data: unix_time 1546301102.
        assert_eq!(
            parse_timestamp_micros("2019-01-01 00:05:02"),
            Some(1_546_301_102 * MICROS_PER_SECOND)
        );
        assert_eq!(
            parse_timestamp_micros("2019-01-01T00:05:02.5"),
            Some(1_546_301_102 * MICROS_PER_SECOND + 500_000)
        );
        assert_eq!(parse_timestamp_micros("2019-01-01 24:05:02"), None);
        assert_eq!(parse_timestamp_micros("2019-01-01"), None);
    }

    #[test]
    fn print_parse_round_trip() {
        for micros in [0, 1_546_301_102_000_000, -1_000_000, 1_577_836_799_000_001] {
            let mut out = Vec::new();
            write_timestamp_micros(&mut out, micros);
            let text = String::from_utf8(out).expect("ascii");
            assert_eq!(parse_timestamp_micros(&text), Some(micros), "{text}");
        }
        for days in [-30_000, -1, 0, 17_897, 20_000] {
            let mut out = Vec::new();
            write_date(&mut out, days);
            let text = String::from_utf8(out).expect("ascii");
            assert_eq!(parse_date(&text), Some(days), "{text}");
        }
    }

    #[test]
    fn event_time_text_is_the_sources_format_to_the_second() {
        assert_eq!(
            event_time_text(1_546_301_102_000_000),
            "2019-01-01 00:05:02"
        );
        assert_eq!(
            event_time_text(1_546_301_102_999_999),
            "2019-01-01 00:05:02"
        );
        assert_eq!(event_time_text(-1), "1969-12-31 23:59:59");
        for micros in (946_684_800_000_000_i64..4_102_444_800_000_000).step_by(7_777_777_777_777) {
            let text = event_time_text(micros);
            let back = parse_timestamp_micros(&text).expect("parses back");
            assert_eq!(
                back,
                micros - micros.rem_euclid(MICROS_PER_SECOND),
                "{text}"
            );
        }
    }
}
