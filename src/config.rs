//! Placeholder: config.
/// Placeholder.
pub struct LoadBalancerConfig;
