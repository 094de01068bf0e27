//! [`StatusSet`]: the HTTP statuses that count as a failure for a backend's breaker
//! (`circuit_breaker.failure_status_codes`).

/// A set of HTTP status codes, one bit each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusSet([u64; 10]);

impl StatusSet {
    /// The set of these codes (codes of 640 and above are ignored).
    pub fn new(codes: &[u16]) -> Self {
        let mut set = Self::default();
        for &c in codes {
            if let Some(word) = set.0.get_mut(usize::from(c) / 64) {
                *word |= 1 << (c % 64);
            }
        }
        set
    }

    /// Whether `code` is in the set.
    pub fn contains(&self, code: u16) -> bool {
        self.0
            .get(usize::from(code) / 64)
            .is_some_and(|w| w & (1 << (code % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_sets() {
        let set = StatusSet::new(&[500, 502, 503, 504, 429]);
        for (code, want) in [
            (500, true),
            (501, false),
            (504, true),
            (429, true),
            (200, false),
            (599, false),
        ] {
            assert_eq!(set.contains(code), want, "{code}");
        }
        assert!(!StatusSet::new(&[700]).contains(700));
        assert!(!set.contains(u16::MAX));
    }
}
