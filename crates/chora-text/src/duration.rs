//! Durations as a person reads them. One function per format chora shows:
//!
//! | function   | 0.85 s  | 2.4 s  | 125 s   | 4,500 s        | 3 d 4 h 5 m  |
//! |------------|---------|--------|---------|----------------|--------------|
//! | [`took`]   | `850ms` | `2.4s` | `2m 5s` | `75m 0s`       | `4565m 0s`   |
//! | [`span`]   | `850ms` | `2.4s` | `2m 5s` | `1h 15m`       | `3d 4h`      |
//! | [`age`]    | `0s`    | `2s`   | `2m 5s` | `1h 15m`       | `3d 4h`      |
//! | [`uptime`] | `0s`    | `2s`   | `2m 5s` | `1h 15m 0s`    | `3d 4h 5m`   |
//!
//! `took` and `span` are precise below a minute (a step's time); `age` and
//! `uptime` count whole seconds (how long something has been there). Past a
//! minute all four write whole units from the largest one present, truncating.

use std::time::Duration;

/// How long a step took, in minutes however long: `850ms`, `2.4s`, `2m 5s`,
/// `75m 0s` (the console of `chora bootstrap` and `chora infra`).
pub fn took(d: Duration) -> String {
    match sub_minute(d) {
        Some(s) => s,
        None => units(d.as_secs(), &UNITS[2..], 2),
    }
}

/// Like [`took`] below an hour, then two units: `1h 15m`, `3d 4h` (the
/// dashboard's phase times).
pub fn span(d: Duration) -> String {
    match sub_minute(d) {
        Some(s) => s,
        None => units(d.as_secs(), &UNITS, 2),
    }
}

/// How long ago, in whole seconds, to two units: `45s`, `2m 5s`, `1h 15m`,
/// `3d 4h` (the dashboard's "since" cells).
pub fn age(d: Duration) -> String {
    units(d.as_secs(), &UNITS, 2)
}

/// How long a system has been up, in whole seconds, to three units: `45s`,
/// `12m 5s`, `2h 15m 32s`, `3d 4h 5m` (`chora bootstrap status`).
pub fn uptime(d: Duration) -> String {
    units(d.as_secs(), &UNITS, 3)
}

/// `850ms` below a second, `2.4s` below a minute.
fn sub_minute(d: Duration) -> Option<String> {
    let ms = d.as_millis();
    if ms < 1000 {
        Some(format!("{ms}ms"))
    } else if ms < 60_000 {
        Some(format!("{:.1}s", d.as_secs_f64()))
    } else {
        None
    }
}

const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];

/// `secs` in `count` consecutive units of `units` (largest first), starting at
/// the largest one that is not zero (the first of `units` takes whatever is
/// left above it); `0s` for zero.
fn units(secs: u64, units: &[(u64, &str)], count: usize) -> String {
    let first = units
        .iter()
        .position(|(size, _)| secs >= *size)
        .unwrap_or(units.len() - 1);
    let mut out = String::new();
    for (i, (size, name)) in units.iter().enumerate().skip(first).take(count) {
        let n = if i == 0 {
            secs / size
        } else {
            secs % units[i - 1].0 / size
        };
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&format!("{n}{name}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn took_is_precise_below_a_minute_then_minutes_and_seconds() {
        assert_eq!(took(ms(0)), "0ms");
        assert_eq!(took(ms(999)), "999ms");
        assert_eq!(took(ms(1000)), "1.0s");
        assert_eq!(took(ms(2449)), "2.4s");
        assert_eq!(took(ms(59_999)), "60.0s");
        assert_eq!(took(ms(60_000)), "1m 0s");
        assert_eq!(took(ms(125_999)), "2m 5s");
        assert_eq!(took(s(4500)), "75m 0s");
        assert_eq!(took(s(3 * 86_400 + 4 * 3600 + 300)), "4565m 0s");
        // Sub-millisecond parts count in the tenths, as they always did.
        assert_eq!(took(Duration::from_micros(1_050_500)), "1.1s");
    }

    #[test]
    fn span_is_took_below_an_hour_then_two_units() {
        assert_eq!(span(ms(850)), "850ms");
        assert_eq!(span(ms(2400)), "2.4s");
        assert_eq!(span(ms(125_000)), "2m 5s");
        assert_eq!(span(s(3599)), "59m 59s");
        assert_eq!(span(s(3600)), "1h 0m");
        assert_eq!(span(s(4500)), "1h 15m");
        assert_eq!(span(s(86_399)), "23h 59m");
        assert_eq!(span(s(3 * 86_400 + 4 * 3600 + 300)), "3d 4h");
    }

    #[test]
    fn age_counts_whole_seconds_to_two_units() {
        assert_eq!(age(ms(0)), "0s");
        assert_eq!(age(ms(2400)), "2s");
        assert_eq!(age(s(59)), "59s");
        assert_eq!(age(s(60)), "1m 0s");
        assert_eq!(age(ms(125_999)), "2m 5s");
        assert_eq!(age(s(4500)), "1h 15m");
        assert_eq!(age(s(3 * 86_400 + 4 * 3600 + 300)), "3d 4h");
    }

    #[test]
    fn uptime_counts_whole_seconds_to_three_units() {
        assert_eq!(uptime(s(0)), "0s");
        assert_eq!(uptime(s(45)), "45s");
        assert_eq!(uptime(s(725)), "12m 5s");
        assert_eq!(uptime(s(3600)), "1h 0m 0s");
        assert_eq!(uptime(s(8132)), "2h 15m 32s");
        assert_eq!(uptime(s(3 * 86_400 + 4 * 3600 + 300)), "3d 4h 5m");
        assert_eq!(uptime(s(400 * 86_400)), "400d 0h 0m");
    }
}
