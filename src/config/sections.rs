//! The nested sections of the file: `circuit_breaker:` ([`CircuitBreakerConfig`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::serde_duration;

/// Per-backend circuit breaker settings (`circuit_breaker:`), the seed's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerConfig {
    /// Consecutive failures that open the breaker (default 5, >= 1).
    pub failure_threshold: u32,
    /// Successes in half-open state that close it again (default 3, >= 1).
    pub recovery_threshold: u32,
    /// Time an open breaker waits before going half-open (default 30s, > 0).
    #[serde(with = "serde_duration")]
    pub timeout: Duration,
    /// Concurrent probe requests admitted while half-open (default 10, >= 1).
    pub half_open_max_calls: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            recovery_threshold: 3,
            timeout: Duration::from_secs(30),
            half_open_max_calls: 10,
        }
    }
}
