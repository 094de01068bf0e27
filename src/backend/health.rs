//! The health view each backend carries: [`HealthTracker`] (one atomic status read by every
//! request, plus the last check's time and error) over the pure [`HealthMachine`]
//! (unknown → healthy/unhealthy with rise and fall thresholds). The active checks that feed it
//! live in [`crate::health`], which reads backend state; this module knows nothing of them.
//!
//! Transitions, given `healthy_threshold` (rise) and `unhealthy_threshold` (fall):
//!
//! | state | check passes | check fails |
//! |---|---|---|
//! | unknown | healthy | unhealthy |
//! | healthy | healthy (fail count reset) | unhealthy after `unhealthy_threshold` consecutive fails |
//! | unhealthy | healthy after `healthy_threshold` consecutive passes | unhealthy (pass count reset) |
//!
//! An unknown backend receives traffic; an unhealthy one does not.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// A backend's health as Fulcrum reports it (the seed's `HealthStatus`, plus `unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// No health-check result yet. Receives traffic.
    Unknown,
    /// Passing its health checks.
    Healthy,
    /// Failing its health checks. Receives no traffic.
    Unhealthy,
}

impl HealthStatus {
    /// `unknown`, `healthy` or `unhealthy`, as in `/health`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
        }
    }

    /// Whether a backend in this state may receive requests.
    pub fn admits(self) -> bool {
        self != Self::Unhealthy
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Healthy,
            2 => Self::Unhealthy,
            _ => Self::Unknown,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Unknown => 0,
            Self::Healthy => 1,
            Self::Unhealthy => 2,
        }
    }
}

/// Consecutive results needed to change state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Passes that turn an unhealthy backend healthy (`healthy_threshold`).
    pub healthy: u32,
    /// Failures that turn a healthy backend unhealthy (`unhealthy_threshold`).
    pub unhealthy: u32,
}

/// The pure health state machine (see the module docs for its table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthMachine {
    status: HealthStatus,
    /// Consecutive results that disagree with `status`.
    streak: u32,
}

impl Default for HealthMachine {
    fn default() -> Self {
        Self {
            status: HealthStatus::Unknown,
            streak: 0,
        }
    }
}

impl HealthMachine {
    /// Current state.
    pub fn status(&self) -> HealthStatus {
        self.status
    }

    /// Feeds one check result; returns the new state when it changed.
    pub fn observe(&mut self, passed: bool, t: Thresholds) -> Option<HealthStatus> {
        let (agrees, needed, target) = match (self.status, passed) {
            (HealthStatus::Unknown, true) => (false, 1, HealthStatus::Healthy),
            (HealthStatus::Unknown, false) => (false, 1, HealthStatus::Unhealthy),
            (HealthStatus::Healthy, p) => (p, t.unhealthy, HealthStatus::Unhealthy),
            (HealthStatus::Unhealthy, p) => (!p, t.healthy, HealthStatus::Healthy),
        };
        if agrees {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak < needed.max(1) {
            return None;
        }
        self.status = target;
        self.streak = 0;
        Some(target)
    }
}

/// What the last health check of a backend said.
#[derive(Debug, Clone, Default)]
pub struct LastCheck {
    /// When it finished.
    pub at: Option<SystemTime>,
    /// Why it failed; `None` when it passed.
    pub error: Option<String>,
}

/// A backend's health, shared between the checker (writes) and requests (read one atomic).
#[derive(Debug, Default)]
pub struct HealthTracker {
    status: AtomicU8,
    detail: Mutex<(HealthMachine, LastCheck)>,
}

impl HealthTracker {
    /// Current state (one atomic load; called for every request).
    pub fn status(&self) -> HealthStatus {
        HealthStatus::from_u8(self.status.load(Ordering::Relaxed))
    }

    /// The last check's time and error.
    pub fn last_check(&self) -> LastCheck {
        match self.detail.lock() {
            Ok(d) => d.1.clone(),
            Err(poisoned) => poisoned.into_inner().1.clone(),
        }
    }

    /// Records one check result at `now`; returns the new state when it changed.
    pub fn record(
        &self,
        result: std::result::Result<(), String>,
        now: SystemTime,
        t: Thresholds,
    ) -> Option<HealthStatus> {
        let mut detail = match self.detail.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        let changed = detail.0.observe(result.is_ok(), t);
        detail.1 = LastCheck {
            at: Some(now),
            error: result.err(),
        };
        self.status
            .store(detail.0.status().to_u8(), Ordering::Relaxed);
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use HealthStatus::*;

    #[test]
    fn machine_transitions() {
        let t = Thresholds {
            healthy: 2,
            unhealthy: 3,
        };
        // (results fed in order, state after each)
        let cases: &[(&str, &[bool], &[HealthStatus])] = &[
            ("first pass", &[true], &[Healthy]),
            ("first fail", &[false], &[Unhealthy]),
            (
                "fall after 3 consecutive fails",
                &[true, false, false, false],
                &[Healthy, Healthy, Healthy, Unhealthy],
            ),
            (
                "a pass resets the fail streak",
                &[true, false, false, true, false, false, false],
                &[
                    Healthy, Healthy, Healthy, Healthy, Healthy, Healthy, Unhealthy,
                ],
            ),
            (
                "rise after 2 consecutive passes",
                &[false, true, true],
                &[Unhealthy, Unhealthy, Healthy],
            ),
            (
                "a fail resets the pass streak",
                &[false, true, false, true, true],
                &[Unhealthy, Unhealthy, Unhealthy, Unhealthy, Healthy],
            ),
        ];
        for (name, results, states) in cases {
            let mut m = HealthMachine::default();
            assert_eq!(m.status(), Unknown);
            for (i, (r, want)) in results.iter().zip(states.iter()).enumerate() {
                let before = m.status();
                let changed = m.observe(*r, t);
                assert_eq!(m.status(), *want, "{name}: step {i}");
                assert_eq!(
                    changed,
                    (before != *want).then_some(*want),
                    "{name}: step {i}"
                );
            }
        }
    }

    #[test]
    fn thresholds_of_one_flip_immediately() {
        let t = Thresholds {
            healthy: 1,
            unhealthy: 1,
        };
        let mut m = HealthMachine::default();
        for (r, want) in [(true, Healthy), (false, Unhealthy), (true, Healthy)] {
            m.observe(r, t);
            assert_eq!(m.status(), want);
        }
    }

    #[test]
    fn tracker_keeps_last_check() {
        let tracker = HealthTracker::default();
        let t = Thresholds {
            healthy: 1,
            unhealthy: 1,
        };
        assert!(tracker.status().admits());
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        assert_eq!(
            tracker.record(Err("refused".into()), at, t),
            Some(Unhealthy)
        );
        assert!(!tracker.status().admits());
        let last = tracker.last_check();
        assert_eq!(
            (last.at, last.error.as_deref()),
            (Some(at), Some("refused"))
        );
        assert_eq!(tracker.record(Ok(()), at, t), Some(Healthy));
        assert_eq!(tracker.last_check().error, None);
    }
}
