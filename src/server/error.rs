//! [`StartError`]: why a load balancer could not be built or started.

use crate::backend::SetError;
use crate::config::ConfigError;

/// Why the load balancer could not be built or started.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// A backend could not be added or removed.
    Backend(SetError),
    /// The TLS listener could not be set up.
    Tls(String),
    /// An operating-system call failed: reserving a port, opening the access log, starting
    /// the server thread.
    Io {
        /// What Fulcrum was doing.
        doing: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

impl StartError {
    /// Wraps an I/O error that happened while doing `doing`.
    pub(crate) fn io(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let doing = doing.into();
        move |source| StartError::Io { doing, source }
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Backend(e) => write!(f, "{e}"),
            StartError::Tls(e) => write!(f, "cannot set up the TLS listener: {e}"),
            StartError::Io { doing, source } => write!(f, "cannot {doing}: {source}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Config(e) => Some(e),
            StartError::Backend(e) => Some(e),
            StartError::Tls(_) => None,
            StartError::Io { source, .. } => Some(source),
        }
    }
}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> Self {
        StartError::Config(e)
    }
}

impl From<SetError> for StartError {
    fn from(e: SetError) -> Self {
        StartError::Backend(e)
    }
}
