//! RFC 3339 timestamps, the form the faas-provider API writes times in (`since` in a logs
//! request, `timestamp` in each log message). UTC only on output; any offset on input.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2024-05-01T12:34:56.789012345Z`; times before 1970 are written as the epoch.
pub fn format(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_nanos()
    )
}

/// Reads `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `t` and `z` are accepted as well.
pub fn parse(text: &str) -> Result<SystemTime, String> {
    let bad = || format!("{text:?} is not an RFC 3339 time (like 2024-05-01T12:34:56Z)");
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = b.get(range).ok_or_else(bad)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(part.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(i, c)| b.get(i) != Some(&c))
        || !matches!(b.get(10), Some(b'T' | b't'))
    {
        return Err(bad());
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return Err(bad());
    }
    // A leap second is read as the last second of its minute.
    let second = second.min(59);
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        let fraction = &text[start..i.min(start + 9)];
        let scale = 10u32.pow(9 - fraction.len() as u32);
        nanos = fraction.parse::<u32>().map_err(|_| bad())? * scale;
    }
    let offset = match b.get(i..) {
        Some([b'Z' | b'z']) => 0,
        Some([sign @ (b'+' | b'-'), _, _, b':', _, _]) => {
            let hours = digits(i + 1..i + 3)?;
            let minutes = digits(i + 4..i + 6)?;
            let seconds = hours * 3600 + minutes * 60;
            if *sign == b'+' {
                seconds
            } else {
                -seconds
            }
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    match u64::try_from(secs) {
        Ok(secs) => Ok(UNIX_EPOCH + Duration::new(secs, nanos)),
        // Before 1970: earlier than any line defrost kept.
        Err(_) => Ok(UNIX_EPOCH),
    }
}

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of a day counted from 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants_both_ways() {
        let t = UNIX_EPOCH + Duration::new(1_714_566_896, 789_000_000);
        assert_eq!(format(t), "2024-05-01T12:34:56.789000000Z");
        assert_eq!(parse("2024-05-01T12:34:56.789Z"), Ok(t));
        assert_eq!(parse("2024-05-01T14:34:56.789+02:00"), Ok(t));
        assert_eq!(
            parse("2000-02-29T00:00:00Z"),
            Ok(UNIX_EPOCH + Duration::from_secs(951_782_400))
        );
        assert_eq!(format(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(parse("1969-12-31T23:59:59Z"), Ok(UNIX_EPOCH));
    }

    #[test]
    fn every_day_of_four_centuries_round_trips() {
        for days in (-146_097 * 2..146_097 * 2).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn malformed_times_are_refused() {
        for bad in [
            "",
            "yesterday",
            "2024-05-01",
            "2024-05-01 12:34:56Z",
            "2024-13-01T12:34:56Z",
            "2024-05-01T12:34:56",
            "2024-05-01T12:34:56.Z",
            "2024-05-01T12:34:56+0200",
            "2024-05-01T1a:34:56Z",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
