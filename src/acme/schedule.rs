//! When to order a certificate, pure: renewal about 30 days before expiry, and the backoff
//! between failed attempts.

use std::time::{Duration, SystemTime};

/// How long before its expiry a certificate is renewed (for one valid at least three times as
/// long; see [`renewal_time`]).
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

/// The wait after the first failed attempt; it doubles with each further failure...
pub const BACKOFF_MIN: Duration = Duration::from_secs(60);

/// ...up to this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// When a certificate valid from `not_before` to `not_after` is renewed: [`RENEW_BEFORE`]
/// before it expires, or, for a certificate valid less than three times that (a short-lived
/// one), when a third of its lifetime is left.
pub fn renewal_time(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    not_after
        .checked_sub(RENEW_BEFORE.min(lifetime / 3))
        .unwrap_or(not_before)
}

/// The wait before the next attempt after `failures` failed ones in a row (at least 1):
/// [`BACKOFF_MIN`] doubling per failure, capped at [`BACKOFF_MAX`].
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    BACKOFF_MIN.saturating_mul(1 << doublings).min(BACKOFF_MAX)
}

/// What the service holds: the names and validity of the certificate it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Held {
    pub(super) names: Vec<String>,
    pub(super) not_before: SystemTime,
    pub(super) not_after: SystemTime,
}

impl Held {
    /// How long until a new certificate is due, at `now`, for `domains`: zero when this one
    /// does not cover them all, or its renewal time has come.
    pub(super) fn due_in(&self, domains: &[String], now: SystemTime) -> Duration {
        if !domains.iter().all(|d| self.names.contains(d)) {
            return Duration::ZERO;
        }
        renewal_time(self.not_before, self.not_after)
            .duration_since(now)
            .unwrap_or_default()
    }
}

/// The names (lower case) and validity of the first certificate of a PEM chain.
pub(super) fn held(chain_pem: &[u8]) -> Option<Held> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem).ok()?;
    let cert = pem.parse_x509().ok()?;
    let time = |t: x509_parser::time::ASN1Time| {
        u64::try_from(t.timestamp())
            .ok()
            .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
    };
    let validity = cert.validity();
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(Held {
        names,
        not_before: time(validity.not_before)?,
        not_after: time(validity.not_after)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn renews_30_days_before_expiry_or_at_a_third_left() {
        let t0 = SystemTime::UNIX_EPOCH + 1000 * DAY;
        assert_eq!(renewal_time(t0, t0 + 90 * DAY), t0 + 60 * DAY);
        assert_eq!(renewal_time(t0, t0 + 365 * DAY), t0 + 335 * DAY);
        assert_eq!(renewal_time(t0, t0 + 6 * DAY), t0 + 4 * DAY);
        assert_eq!(renewal_time(t0, t0), t0);
        assert_eq!(
            renewal_time(t0 + DAY, t0),
            t0,
            "backwards validity: due now"
        );
    }

    #[test]
    fn backoff_doubles_from_a_minute_to_an_hour() {
        let mins: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs() / 60).collect();
        assert_eq!(mins, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(0), BACKOFF_MIN);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn due_when_a_name_is_missing_or_renewal_has_come() {
        let t0 = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let h = Held {
            names: vec!["a.example".into(), "b.example".into()],
            not_before: t0,
            not_after: t0 + 90 * DAY,
        };
        let domains = |d: &[&str]| d.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(h.due_in(&domains(&["a.example"]), t0), 60 * DAY);
        assert_eq!(
            h.due_in(&domains(&["b.example", "a.example"]), t0 + 59 * DAY),
            DAY
        );
        assert_eq!(
            h.due_in(&domains(&["a.example"]), t0 + 61 * DAY),
            Duration::ZERO
        );
        assert_eq!(h.due_in(&domains(&["c.example"]), t0), Duration::ZERO);
    }

    #[test]
    fn reads_names_and_validity_from_a_chain() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["A.example".to_string(), "b.example".into()])
                .unwrap();
        let now = SystemTime::now();
        params.not_before = (now - DAY).into();
        params.not_after = (now + 10 * DAY).into();
        let pem = params.self_signed(&key).unwrap().pem();
        let h = held(pem.as_bytes()).unwrap();
        assert_eq!(h.names, ["a.example", "b.example"]);
        let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs(h.not_after), secs(now + 10 * DAY));
        assert_eq!(secs(h.not_before), secs(now - DAY));
        assert!(held(b"not pem").is_none());
    }
}
