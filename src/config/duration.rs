//! Duration syntax: [`parse_duration`] reads Go `time.ParseDuration` strings (`100ms`, `1m30s`,
//! `1.5h`), [`format_duration`] writes them back, and [`serde_duration`] plugs both into serde
//! for the config's [`Duration`] fields. Bare numbers are rejected everywhere, so `timeout: 30`
//! never silently means seconds (or milliseconds).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// Serde support for [`Duration`] fields written as Go-style strings (`100ms`, `1m30s`): use
/// `#[serde(with = "fulcrum::config::serde_duration")]`. Bare numbers are rejected with a hint
/// to add a unit; durations serialise with [`format_duration`].
pub mod serde_duration {
    use super::*;

    /// Writes `d` as [`format_duration`] does.
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }

    /// Reads a duration string with [`parse_duration`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    /// The same for `Option<Duration>` fields: `null` (or a missing key, with
    /// `#[serde(default)]`) is `None`.
    pub mod option {
        use super::*;

        /// Writes `Some(d)` as [`format_duration`] does, `None` as null.
        pub fn serialize<S: serde::Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => s.serialize_some(&format_duration(*d)),
                None => s.serialize_none(),
            }
        }

        /// Reads null as `None`, anything else with [`parse_duration`].
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            d.deserialize_option(OptionVisitor)
        }

        struct OptionVisitor;

        impl<'de> Visitor<'de> for OptionVisitor {
            type Value = Option<Duration>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a duration with a unit, such as \"100ms\", \"30s\" or \"1m30s\", or null",
                )
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                super::deserialize(d).map(Some)
            }
        }
    }

    struct DurationVisitor;

    impl DurationVisitor {
        fn bare<E: de::Error>(v: impl fmt::Display) -> E {
            E::custom(format!(
                "invalid duration {v}: add a unit, e.g. \"{v}s\" (units: ns, us, ms, s, m, h)"
            ))
        }
    }

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration with a unit, such as \"100ms\", \"30s\" or \"1m30s\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Err(Self::bare(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            Err(Self::bare(v))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Err(Self::bare(v))
        }
    }
}

/// Parses a Go `time.ParseDuration` string: one or more `<number><unit>` pairs, numbers may
/// have a fraction, units `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`: `100ms`, `1m30s`,
/// `1.5h`. A leading `+` is allowed. Negative durations and bare numbers (even `0`) are
/// errors. Fraction digits beyond nanosecond precision are truncated.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: String| format!("invalid duration {s:?}: {why}");
    const UNITS: &str = "ns, us, ms, s, m, h";
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() {
        return Err(bad(format!("expected a number with a unit ({UNITS})")));
    }
    if rest.starts_with('-') {
        return Err(bad("must not be negative".into()));
    }
    if rest.bytes().any(|b| b.is_ascii_digit())
        && rest.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        return Err(bad(format!(
            "add a unit, e.g. \"{rest}s\" (units: {UNITS})"
        )));
    }
    let mut total: u128 = 0;
    let too_large = || bad("too large".into());
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => a.split_at(a.bytes().take_while(u8::is_ascii_digit).count()),
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(bad(format!("expected a number at {rest:?}")));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            "" => {
                return Err(bad(format!(
                    "missing unit after {:?} ({UNITS})",
                    &rest[..rest.len() - after.len()]
                )))
            }
            u => return Err(bad(format!("unknown unit {u:?}; expected one of {UNITS}"))),
        };
        let mut whole: u128 = 0;
        for b in int.bytes() {
            whole = whole
                .checked_mul(10)
                .and_then(|w| w.checked_add(u128::from(b - b'0')))
                .ok_or_else(too_large)?;
        }
        // 18 fraction digits fit a u64; a nanosecond is at most the 12th digit of an hour.
        let frac = &frac[..frac.len().min(18)];
        let frac_num: u128 = frac.bytes().fold(0, |n, b| n * 10 + u128::from(b - b'0'));
        let frac_nanos = frac_num * scale / 10u128.pow(frac.len() as u32);
        total = whole
            .checked_mul(scale)
            .and_then(|n| n.checked_add(frac_nanos))
            .and_then(|n| n.checked_add(total))
            .ok_or_else(too_large)?;
        rest = after;
    }
    u64::try_from(total)
        .map(Duration::from_nanos)
        .map_err(|_| too_large())
}

/// Formats a duration the way [`parse_duration`] reads it, largest units first and zero parts
/// left out: `2h`, `1m30s`, `100ms`, `1s500ms`, `0s`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    let parts = [
        (secs / 3600, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (u64::from(nanos / 1_000_000), "ms"),
        (u64::from(nanos / 1_000 % 1_000), "us"),
        (u64::from(nanos % 1_000), "ns"),
    ];
    parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        let ms = Duration::from_millis;
        let ok: &[(&str, Duration)] = &[
            ("100ms", ms(100)),
            ("30s", Duration::from_secs(30)),
            ("2h", Duration::from_secs(7200)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5h", Duration::from_secs(5400)),
            ("1h2m3s4ms5us6ns", Duration::new(3723, 4_005_006)),
            ("1.5s", ms(1500)),
            (".5s", ms(500)),
            ("1.s", Duration::from_secs(1)),
            ("+5s", Duration::from_secs(5)),
            ("0s", Duration::ZERO),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("10μs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("0.000000001s", Duration::from_nanos(1)),
            ("1.0000000019s", Duration::from_nanos(1_000_000_001)),
            ("1s1s", Duration::from_secs(2)),
        ];
        for (s, want) in ok {
            assert_eq!(parse_duration(s), Ok(*want), "{s}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "expected a number with a unit"),
            ("30", "add a unit, e.g. \"30s\""),
            ("1.5", "add a unit"),
            ("0", "add a unit"),
            ("5x", "unknown unit \"x\""),
            ("-1s", "must not be negative"),
            ("s", "expected a number"),
            (".s", "expected a number"),
            ("1s2", "missing unit after \"2\""),
            ("1 s", "unknown unit \" s\""),
            ("1d", "unknown unit \"d\""),
            ("99999999999999999999999999h", "too large"),
            ("6000000h", "too large"),
        ];
        for (s, want) in bad {
            let err = parse_duration(s).unwrap_err();
            assert!(err.contains(want), "{s:?}: {err}");
            assert!(err.starts_with(&format!("invalid duration {s:?}")), "{err}");
        }
    }

    #[test]
    fn formats_durations_and_reads_them_back() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(100), "100ms"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_millis(1500), "1s500ms"),
            (Duration::new(3723, 4_005_006), "1h2m3s4ms5us6ns"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(d), want);
            assert_eq!(parse_duration(want), Ok(d));
        }
    }
}
