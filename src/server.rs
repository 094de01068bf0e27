//! Placeholder: server.
/// Placeholder.
pub struct LoadBalancer;
