//! Durations as people write them: `250ms`, `30s`, `1m30s`, or a plain number of seconds (as in
//! the OpenFaaS gateway's environment variables), and back.

use std::time::Duration;

/// `30s`, `250ms`, `1500us`: what [`parse_duration`] reads back to the same duration.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    let units = [(1_000_000_000, "s"), (1_000_000, "ms"), (1_000, "us")];
    units
        .iter()
        .find(|(size, _)| nanos % size == 0)
        .map_or(format!("{nanos}ns"), |(size, unit)| {
            format!("{}{unit}", nanos / size)
        })
}

/// Parses Go-style durations (`1m30s`, `250ms`, `1.5s`, `2h`); a plain number means seconds,
/// as in the OpenFaaS gateway's environment variables.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    let bad = || format!("{text:?} is not a duration (write e.g. \"250ms\", \"30s\", \"1m30s\")");
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        let part = Duration::try_from_secs_f64(value * scale).map_err(|_| bad())?;
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = tail;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("8"), Ok(Duration::from_secs(8)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in [
            "",
            "s",
            "10x",
            "-1s",
            "1m-",
            "abc",
            "20000000000000000000",
            "NaN",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_are_written_back_exactly() {
        for d in ["30s", "250ms", "1500us", "7ns", "0s"] {
            assert_eq!(format_duration(parse_duration(d).unwrap()), d);
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    }
}
