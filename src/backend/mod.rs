//! Backends: what a backend is ([`spec`]), how to connect to it ([`peer`]: TLS, HTTP/2, the
//! pingora peer built once), what Fulcrum knows about it while running ([`state`], [`health`])
//! and the one owner of the list ([`set`]).
//!
//! Layering: this module depends on the breaker state machine and the histogram only. The
//! strategies, the health checks, metrics and the admin API read backend state; none of them is
//! imported here.

pub mod health;
pub mod peer;
pub mod set;
pub mod spec;
pub mod state;

pub use health::{HealthStatus, HealthTracker};
pub use peer::{CaBundle, PeerSettings, PeerTemplate, UpstreamProtocol};
pub use set::{block_on, BackendSet, Removal, SetDiff, SetError};
pub use spec::{BackendServer, BackendSpec, InvalidField, UpstreamUrl, Weight, MAX_WEIGHT};
pub use state::{ewma_next, state_of, BackendState, BackendStats, InFlightGuard, STATUS_CLASSES};
