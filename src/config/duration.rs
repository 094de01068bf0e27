//! Duration syntax, by humantime: [`parse_duration`] reads `100ms`, `1m30s`, `1.5h`, `2d`
//! (units `ns`, `us`, `ms`, `s`, `m`, `h`, `d`, `w` and their long forms), [`format_duration`]
//! writes them back, and [`serde_duration`] plugs both into serde for the config's [`Duration`]
//! fields. Bare numbers (even `0`) and negative durations are refused here, so `timeout: 30`
//! never silently means seconds (or milliseconds).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// Why a duration string was refused; its message quotes the input and says what to write.
#[derive(Debug, Clone, PartialEq)]
pub enum InvalidDuration {
    /// A number without a unit (`30`).
    NoUnit(String),
    /// A negative duration (`-1s`).
    Negative(String),
    /// Anything else humantime refuses (unknown unit, missing number, too large).
    Syntax(String, humantime::DurationError),
}

impl fmt::Display for InvalidDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoUnit(s) => write!(
                f,
                "invalid duration {s:?}: add a unit, e.g. \"{s}s\" (units: ns, us, ms, s, m, h, d)"
            ),
            Self::Negative(s) => write!(f, "invalid duration {s:?}: must not be negative"),
            Self::Syntax(s, e) => write!(f, "invalid duration {s:?}: {e}"),
        }
    }
}

impl std::error::Error for InvalidDuration {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Syntax(_, e) => Some(e),
            _ => None,
        }
    }
}

/// Parses a duration with a unit: one or more `<number><unit>` parts (`100ms`, `1m30s`,
/// `1.5h`), as [`humantime::parse_duration`] reads them, refusing bare numbers and negatives.
pub fn parse_duration(s: &str) -> Result<Duration, InvalidDuration> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(InvalidDuration::NoUnit(s.to_string()));
    }
    if s.trim_start().starts_with('-') {
        return Err(InvalidDuration::Negative(s.to_string()));
    }
    humantime::parse_duration(s).map_err(|e| InvalidDuration::Syntax(s.to_string(), e))
}

/// Formats a duration the way [`parse_duration`] reads it: `2h`, `1m 30s`, `100ms`, `0s`.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Serde support for [`Duration`] fields written with a unit (`100ms`, `1m30s`): use
/// `#[serde(with = "fulcrum::config::serde_duration")]`, or `serde_duration::option` for
/// `Option<Duration>`. Bare numbers are refused with a hint to add a unit; durations serialise
/// with [`format_duration`].
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
        use serde::{Deserialize, Serialize};

        use super::*;

        /// Writes `Some(d)` as [`format_duration`] does, `None` as null.
        pub fn serialize<S: serde::Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            d.map(format_duration).serialize(s)
        }

        /// Reads null as `None`, anything else with [`parse_duration`].
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            #[derive(Deserialize)]
            struct Given(#[serde(with = "super")] Duration);
            Ok(Option::<Given>::deserialize(d)?.map(|g| g.0))
        }
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration with a unit, such as \"100ms\", \"30s\" or \"1m30s\"")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Err(E::custom(InvalidDuration::NoUnit(v.to_string())))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            Err(E::custom(InvalidDuration::NoUnit(v.to_string())))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Err(E::custom(InvalidDuration::NoUnit(v.to_string())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        let ok: &[(&str, Duration)] = &[
            ("100ms", ms(100)),
            ("5s", s(5)),
            ("2h", s(7200)),
            ("1m30s", s(90)),
            ("1m 30s", s(90)),
            ("1.5h", s(5400)),
            ("1.5s", ms(1500)),
            ("1h2m3s4ms5us6ns", Duration::new(3723, 4_005_006)),
            ("0s", Duration::ZERO),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("2d", s(2 * 86400)),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(*want), "{text}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "value was empty"),
            ("30", "add a unit, e.g. \"30s\""),
            ("1.5", "add a unit"),
            ("0", "add a unit"),
            ("5x", "unknown time unit \"x\""),
            ("-1s", "must not be negative"),
            ("s", "expected number"),
            ("99999999999999999999999999h", "too large"),
        ];
        for (text, want) in bad {
            let err = parse_duration(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(
                err.starts_with(&format!("invalid duration {text:?}")),
                "{err}"
            );
        }
    }

    #[test]
    fn formats_durations_and_reads_them_back() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(100), "100ms"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(90), "1m 30s"),
            (Duration::from_secs(7200), "2h"),
            (Duration::new(3723, 4_005_006), "1h 2m 3s 4ms 5us 6ns"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(d), want);
            assert_eq!(parse_duration(want), Ok(d));
        }
    }
}
