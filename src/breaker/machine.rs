//! The breaker's whole state packed in one `u64`, and the pure transitions over it.
//!
//! A word holds the state, a generation (bumped on every state change, so a result reported for
//! a request admitted in an earlier state is recognised as stale) and what the state needs:
//! the failure streak when closed, the reopen deadline when open, the probes in flight and the
//! success streak when half-open. [`Rules::acquire`] and [`Rules::settle`] map a word to the
//! next word without side effects; [`super::CircuitBreaker`] applies them with one
//! compare-and-swap and [`BreakerMachine`] to a plain field, so both run the same code.
//!
//! Layout, lowest bit first: state (2 bits), generation (22 bits, wrapping), payload (40 bits).

use std::time::Instant;

use super::{BreakerSettings, BreakerState};

const STATE_BITS: u32 = 2;
const GEN_BITS: u32 = 22;
const GEN_MASK: u32 = (1 << GEN_BITS) - 1;
const PAYLOAD_SHIFT: u32 = STATE_BITS + GEN_BITS;
/// Largest payload: a failure streak, or a deadline in milliseconds (about 34 years).
const PAYLOAD_MAX: u64 = (1 << (64 - PAYLOAD_SHIFT)) - 1;
/// Half-open: probes in flight in the low half of the payload, successes in the high half.
const HALF_BITS: u32 = 20;

/// Largest `half_open_max_calls` and `recovery_threshold` a word counts to; larger settings act
/// as this.
pub const MAX_HALF_OPEN_COUNT: u32 = (1 << HALF_BITS) - 1;

/// What admitted a request: results are only counted in the state that admitted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// Generation of the state that admitted the request.
    generation: u32,
    /// Whether the request holds a half-open probe slot.
    probe: bool,
}

/// The state and what it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed {
        failures: u32,
    },
    /// Open until this many milliseconds after the epoch.
    Open {
        until: u64,
    },
    HalfOpen {
        probes: u32,
        successes: u32,
    },
}

/// A word, unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word {
    generation: u32,
    phase: Phase,
}

impl Word {
    fn pack(self) -> u64 {
        let (state, payload) = match self.phase {
            Phase::Closed { failures } => (0, u64::from(failures)),
            Phase::Open { until } => (1, until.min(PAYLOAD_MAX)),
            Phase::HalfOpen { probes, successes } => (
                2,
                u64::from(probes.min(MAX_HALF_OPEN_COUNT))
                    | u64::from(successes.min(MAX_HALF_OPEN_COUNT)) << HALF_BITS,
            ),
        };
        state | u64::from(self.generation & GEN_MASK) << STATE_BITS | payload << PAYLOAD_SHIFT
    }

    fn unpack(bits: u64) -> Self {
        let generation = (bits >> STATE_BITS) as u32 & GEN_MASK;
        let payload = bits >> PAYLOAD_SHIFT;
        let half = |p: u64| (p & u64::from(MAX_HALF_OPEN_COUNT)) as u32;
        let phase = match bits & 0b11 {
            0 => Phase::Closed {
                failures: payload.min(u64::from(u32::MAX)) as u32,
            },
            1 => Phase::Open { until: payload },
            _ => Phase::HalfOpen {
                probes: half(payload),
                successes: half(payload >> HALF_BITS),
            },
        };
        Self { generation, phase }
    }

    /// The next state: a new generation.
    fn enter(self, phase: Phase) -> Self {
        Self {
            generation: self.generation.wrapping_add(1) & GEN_MASK,
            phase,
        }
    }

    /// The same state with new counts.
    fn with(self, phase: Phase) -> Self {
        Self { phase, ..self }
    }
}

/// The word of a new, closed breaker.
pub(super) const CLOSED: u64 = 0;

/// The answer to a request asking to pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    /// Refused; the word stays as it is.
    Refused,
    /// Admitted with `ticket`; `next` is the new word, `None` when nothing changes.
    Admitted {
        /// Carried by the request until it reports.
        ticket: Ticket,
        /// The word after admitting, if it changed.
        next: Option<u64>,
    },
}

/// A reported result that changes the word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Settled {
    /// The word after the result.
    pub(super) next: u64,
    /// The new state, if the state changed.
    pub(super) change: Option<BreakerState>,
    /// Whether this was a closed→open transition.
    pub(super) tripped: bool,
}

/// Settings plus the instant deadlines are counted from: everything a transition needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rules {
    settings: BreakerSettings,
    epoch: Instant,
}

impl Rules {
    /// Rules for `settings`, deadlines counted in milliseconds from `epoch`.
    pub(super) fn new(settings: BreakerSettings, epoch: Instant) -> Self {
        let clamp = |n: u32| n.clamp(1, MAX_HALF_OPEN_COUNT);
        let settings = BreakerSettings {
            half_open_max_calls: clamp(settings.half_open_max_calls),
            recovery_threshold: clamp(settings.recovery_threshold),
            ..settings
        };
        Self { settings, epoch }
    }

    /// The same epoch with other settings, so deadlines already in a word keep their meaning.
    pub(super) fn with_settings(&self, settings: BreakerSettings) -> Self {
        Self::new(settings, self.epoch)
    }

    /// The settings, clamped.
    pub(super) fn settings(&self) -> BreakerSettings {
        self.settings
    }

    /// `t` in whole milliseconds since the epoch (0 before it). A deadline and the time it is
    /// compared with are rounded the same way, so it never passes more than 1 ms early.
    fn millis(&self, t: Instant) -> u64 {
        let ms = t.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX).min(PAYLOAD_MAX)
    }

    fn open(&self, from: Word, now: Instant) -> Word {
        let until = now
            .checked_add(self.settings.timeout)
            .map_or(PAYLOAD_MAX, |t| self.millis(t));
        from.enter(Phase::Open { until })
    }

    /// The state of `bits` at `now` (an open breaker whose timeout has passed is half-open).
    pub(super) fn state(&self, bits: u64, now: Instant) -> BreakerState {
        match Word::unpack(bits).phase {
            Phase::Open { until } if self.millis(now) >= until => BreakerState::HalfOpen,
            phase => state_of(phase),
        }
    }

    /// A request asks to pass at `now`.
    pub(super) fn acquire(&self, bits: u64, now: Instant) -> Admission {
        let word = Word::unpack(bits);
        let probe = |w: Word| Admission::Admitted {
            ticket: Ticket {
                generation: w.generation,
                probe: true,
            },
            next: Some(w.pack()),
        };
        match word.phase {
            Phase::Closed { .. } => Admission::Admitted {
                ticket: Ticket {
                    generation: word.generation,
                    probe: false,
                },
                next: None,
            },
            Phase::Open { until } if self.millis(now) < until => Admission::Refused,
            Phase::Open { .. } => probe(word.enter(Phase::HalfOpen {
                probes: 1,
                successes: 0,
            })),
            Phase::HalfOpen { probes, .. } if probes >= self.settings.half_open_max_calls => {
                Admission::Refused
            }
            Phase::HalfOpen { probes, successes } => probe(word.with(Phase::HalfOpen {
                probes: probes + 1,
                successes,
            })),
        }
    }

    /// A request admitted with `ticket` reports `success` (`None`: no outcome, only its probe
    /// slot is released). `None` when the word does not change: the result is stale (admitted in
    /// an earlier state) or changes nothing.
    pub(super) fn settle(
        &self,
        bits: u64,
        ticket: Ticket,
        success: Option<bool>,
        now: Instant,
    ) -> Option<Settled> {
        let word = Word::unpack(bits);
        if ticket.generation != word.generation {
            return None;
        }
        let (next, tripped) = match (word.phase, success) {
            (Phase::Closed { failures: 0 }, Some(true)) | (Phase::Closed { .. }, None) => {
                return None
            }
            (Phase::Closed { .. }, Some(true)) => (word.with(Phase::Closed { failures: 0 }), false),
            (Phase::Closed { failures }, Some(false)) => {
                let failures = failures.saturating_add(1);
                if failures >= self.settings.failure_threshold {
                    (self.open(word, now), true)
                } else {
                    (word.with(Phase::Closed { failures }), false)
                }
            }
            (Phase::HalfOpen { probes, successes }, success) => {
                let probes = if ticket.probe {
                    probes.saturating_sub(1)
                } else {
                    probes
                };
                let next = match success {
                    Some(false) => self.open(word, now),
                    Some(true) if successes + 1 >= self.settings.recovery_threshold => {
                        word.enter(Phase::Closed { failures: 0 })
                    }
                    Some(true) => word.with(Phase::HalfOpen {
                        probes,
                        successes: successes + 1,
                    }),
                    None => word.with(Phase::HalfOpen { probes, successes }),
                };
                (next, false)
            }
            // no request is admitted while open, so no ticket carries an open generation
            (Phase::Open { .. }, _) => return None,
        };
        let next_bits = next.pack();
        (next_bits != bits).then(|| Settled {
            next: next_bits,
            change: (next.generation != word.generation).then_some(state_of(next.phase)),
            tripped,
        })
    }
}

fn state_of(phase: Phase) -> BreakerState {
    match phase {
        Phase::Closed { .. } => BreakerState::Closed,
        Phase::Open { .. } => BreakerState::Open,
        Phase::HalfOpen { .. } => BreakerState::HalfOpen,
    }
}

/// The state of a published word, without a clock (an open breaker past its timeout shows as
/// open until a request asks).
pub(super) fn published_state(bits: u64) -> BreakerState {
    state_of(Word::unpack(bits).phase)
}

/// The pure breaker state machine, for one owner: every method takes the current time, so
/// tests drive it transition by transition without sleeping.
#[derive(Debug, Clone)]
pub struct BreakerMachine {
    rules: Rules,
    word: u64,
    trips: u64,
}

impl BreakerMachine {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            rules: Rules::new(settings, Instant::now()),
            word: CLOSED,
            trips: 0,
        }
    }

    /// The state at `now` (an open breaker whose timeout has passed is half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        self.rules.state(self.word, now)
    }

    /// Closed→open transitions so far.
    pub fn trips(&self) -> u64 {
        self.trips
    }

    /// Half-open probes in flight.
    pub fn probes_in_flight(&self) -> u32 {
        match Word::unpack(self.word).phase {
            Phase::HalfOpen { probes, .. } => probes,
            _ => 0,
        }
    }

    /// Asks to send one request at `now`; `None` means refused.
    pub fn try_acquire(&mut self, now: Instant) -> Option<Ticket> {
        match self.rules.acquire(self.word, now) {
            Admission::Refused => None,
            Admission::Admitted { ticket, next } => {
                self.word = next.unwrap_or(self.word);
                Some(ticket)
            }
        }
    }

    /// Reports the outcome of a request admitted with `ticket` (`None` = no outcome, e.g. the
    /// client went away: only the probe slot is released). Returns the new state if it changed.
    pub fn record(
        &mut self,
        ticket: Ticket,
        success: Option<bool>,
        now: Instant,
    ) -> Option<BreakerState> {
        let settled = self.rules.settle(self.word, ticket, success, now)?;
        self.word = settled.next;
        self.trips += u64::from(settled.tripped);
        settled.change
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_at_the_limits() {
        let max = MAX_HALF_OPEN_COUNT;
        for (generation, phase) in [
            (0, Phase::Closed { failures: 0 }),
            (GEN_MASK, Phase::Closed { failures: u32::MAX }),
            (7, Phase::Open { until: 0 }),
            (GEN_MASK, Phase::Open { until: PAYLOAD_MAX }),
            (
                1,
                Phase::HalfOpen {
                    probes: max,
                    successes: 0,
                },
            ),
            (
                2,
                Phase::HalfOpen {
                    probes: 0,
                    successes: max,
                },
            ),
            (
                3,
                Phase::HalfOpen {
                    probes: max,
                    successes: max,
                },
            ),
        ] {
            let w = Word { generation, phase };
            assert_eq!(Word::unpack(w.pack()), w);
        }
        assert_eq!(
            Word::unpack(CLOSED),
            Word {
                generation: 0,
                phase: Phase::Closed { failures: 0 }
            }
        );
        let last = Word {
            generation: GEN_MASK,
            phase: Phase::Closed { failures: 0 },
        };
        assert_eq!(
            last.enter(Phase::Open { until: 1 }).generation,
            0,
            "generation wraps"
        );
    }

    #[test]
    fn deadlines_round_the_same_way_as_the_clock() {
        let epoch = Instant::now();
        let settings = BreakerSettings {
            failure_threshold: 1,
            recovery_threshold: 1,
            timeout: std::time::Duration::from_micros(10_500),
            half_open_max_calls: 1,
        };
        let rules = Rules::new(settings, epoch);
        let at = |us: u64| epoch + std::time::Duration::from_micros(us);
        let Admission::Admitted { ticket, .. } = rules.acquire(CLOSED, at(200)) else {
            panic!("closed admits");
        };
        let open = rules.settle(CLOSED, ticket, Some(false), at(200)).unwrap();
        assert_eq!(
            (open.change, open.tripped),
            (Some(BreakerState::Open), true)
        );
        // reopens at 10.7 ms, i.e. in the 10th millisecond: refused before it, admitted in it
        assert_eq!(rules.acquire(open.next, at(9_999)), Admission::Refused);
        assert!(matches!(
            rules.acquire(open.next, at(10_000)),
            Admission::Admitted { .. }
        ));
        assert_eq!(rules.state(open.next, at(10_700)), BreakerState::HalfOpen);
    }
}
