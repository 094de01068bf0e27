//! [`LoadBalancerConfig::validate`]: the semantic checks serde cannot express (ranges, relations
//! between keys, features not supported yet, backend ids and addresses), all run, all reported.

use std::collections::HashMap;
use std::path::{Path, MAIN_SEPARATOR};
use std::str::FromStr;

use super::{
    format_duration, ConfigError, LoadBalancerConfig, MAX_RETRIES_LIMIT, MIN_SESSION_SECRET_LEN,
    REQUEST_HEADER_SIZE_RANGE,
};

impl LoadBalancerConfig {
    /// Runs every semantic check and reports all failures.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let mut err = |m: String| errors.push(m);
        let positive = [
            ("health_check_interval", self.health_check_interval),
            (
                "health_check_timeout",
                self.effective_health_check_timeout(),
            ),
            ("session_timeout", self.session_timeout),
            ("request_timeout", self.request_timeout),
            ("websocket_idle_timeout", self.websocket_idle_timeout),
            ("connect_timeout", self.connect_timeout),
            ("client_header_timeout", self.client_header_timeout),
            ("client_idle_timeout", self.client_idle_timeout),
            ("circuit_breaker.timeout", self.circuit_breaker.timeout),
        ];
        for (key, d) in positive {
            if d.is_zero() {
                err(format!("{key}: must be greater than 0s"));
            }
        }
        // Only a timeout the user set can be too long: the default follows the interval.
        if let Some(timeout) = self.health_check_timeout {
            if timeout > self.health_check_interval {
                err(format!(
                    "health_check_timeout: {} is longer than health_check_interval ({}); a \
                     check must finish before the next one starts",
                    format_duration(timeout),
                    format_duration(self.health_check_interval)
                ));
            }
        }
        if let Err(e) = check_health_path(&self.health_check_path) {
            err(format!("health_check_path: {e}"));
        }
        let mut at_least_one = vec![
            ("healthy_threshold", self.healthy_threshold),
            ("unhealthy_threshold", self.unhealthy_threshold),
            (
                "circuit_breaker.failure_threshold",
                self.circuit_breaker.failure_threshold,
            ),
            (
                "circuit_breaker.recovery_threshold",
                self.circuit_breaker.recovery_threshold,
            ),
            (
                "circuit_breaker.half_open_max_calls",
                self.circuit_breaker.half_open_max_calls,
            ),
        ];
        if let Some(r) = &self.rate_limit {
            at_least_one.push(("rate_limit.requests_per_second", r.requests_per_second));
            at_least_one.push(("rate_limit.burst", r.burst));
        }
        for (key, n) in at_least_one {
            if n == 0 {
                err(format!("{key}: must be at least 1"));
            }
        }
        if self.max_retries > MAX_RETRIES_LIMIT {
            err(format!(
                "max_retries: must be at most {MAX_RETRIES_LIMIT}, got {}",
                self.max_retries
            ));
        }
        // Likewise only a cap the user set: the default follows retry_backoff.
        if let Some(max) = self.retry_backoff_max {
            if max < self.retry_backoff {
                err(format!(
                    "retry_backoff_max: {} is smaller than retry_backoff ({}); the cap must be \
                     at least the first retry's delay",
                    format_duration(max),
                    format_duration(self.retry_backoff)
                ));
            }
        }
        if self.retry_budget_percent > 100 {
            err(format!(
                "retry_budget_percent: must be at most 100, got {}",
                self.retry_budget_percent
            ));
        }
        if !REQUEST_HEADER_SIZE_RANGE.contains(&self.max_request_header_size) {
            err(format!(
                "max_request_header_size: must be between {} and {} bytes, got {}",
                REQUEST_HEADER_SIZE_RANGE.start(),
                REQUEST_HEADER_SIZE_RANGE.end(),
                self.max_request_header_size
            ));
        }
        for (i, &code) in self.circuit_breaker.failure_status_codes.iter().enumerate() {
            if !(100..=599).contains(&code) {
                err(format!(
                    "circuit_breaker.failure_status_codes[{i}]: must be an HTTP status code \
                     100-599, got {code}"
                ));
            }
        }
        if !is_token(&self.session_cookie_name) {
            err(format!(
                "session_cookie_name: {:?} is not a valid cookie name (RFC 6265: letters, digits \
                 and !#$%&'*+-.^_`|~, not empty)",
                self.session_cookie_name
            ));
        }
        let mut session_errors = Vec::new();
        self.check_sessions(&mut session_errors);
        session_errors.into_iter().for_each(&mut err);
        let mut tls_errors = Vec::new();
        self.check_tls(&mut tls_errors);
        tls_errors.into_iter().for_each(&mut err);
        if self.max_idle_conns_per_host != 0 {
            err(
                "max_idle_conns_per_host: not supported: Pingora keeps idle upstream connections \
                 in one LRU shared by all backends; size it with max_idle_conns"
                    .to_string(),
            );
        }
        let (admin_ip, bind_ip) = (self.admin_address.ip(), self.bind_address);
        if self.port != 0
            && self.admin_address.port() == self.port
            && (admin_ip == bind_ip || admin_ip.is_unspecified() || bind_ip.is_unspecified())
        {
            // Lead with the key the user most likely set: port, when admin_address is default.
            err(
                if self.admin_address == LoadBalancerConfig::default().admin_address {
                    format!(
                        "port: {} is the admin listener's port (admin_address defaults to {}); \
                     choose another port or set admin_address",
                        self.port, self.admin_address
                    )
                } else {
                    format!(
                        "admin_address: {} uses the traffic listener's port (port: {})",
                        self.admin_address, self.port
                    )
                },
            );
        }
        if let Some(path) = &self.access_log {
            if let Err(e) = check_access_log(path) {
                err(format!("access_log: {e}"));
            }
        }
        if let Err(e) = self.admin_token() {
            errors.extend(e.into_messages());
        }
        self.pingora.check(&mut errors);
        self.check_backends(&mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::from_messages(errors))
        }
    }

    /// The session keys: a known store, its secret when it needs one, a sane bound.
    fn check_sessions(&self, errors: &mut Vec<String>) {
        let store = self.session_store.as_str();
        let known = store == "memory" || store == "cookie" || store.starts_with("redis://");
        if !known {
            // a URL may hold a password: show only what comes before its "//"
            let shown = match store.split_once("//") {
                Some((scheme, _)) => format!("{scheme}//..."),
                None => format!("{store:?}"),
            };
            errors.push(format!(
                "session_store: {shown}: expected memory, cookie or redis://HOST:PORT/DB"
            ));
        }
        if self.max_sessions == 0 {
            errors.push("max_sessions: must be at least 1".into());
        }
        if self.session_secret.is_some() && self.session_secret_file.is_some() {
            errors.push(
                "session_secret: cannot be set together with session_secret_file; set only one"
                    .into(),
            );
        }
        if let Some(secret) = &self.session_secret {
            if secret.expose().len() < MIN_SESSION_SECRET_LEN {
                errors.push(format!(
                    "session_secret: must be at least {MIN_SESSION_SECRET_LEN} characters"
                ));
            }
        }
        if self.enable_sticky_sessions
            && store == "cookie"
            && self.session_secret.is_none()
            && self.session_secret_file.is_none()
        {
            errors.push(
                "session_store: cookie needs session_secret or session_secret_file (every \
                 instance must share the key)"
                    .into(),
            );
        }
    }

    /// The TLS keys agree with each other and with the listeners. Whether the files exist and
    /// hold a matching certificate and key is [`Settings`](crate::settings::Settings)' job
    /// (I/O, like DNS).
    fn check_tls(&self, errors: &mut Vec<String>) {
        match (&self.ssl_cert_file, &self.ssl_key_file) {
            (Some(_), None) => {
                errors.push("ssl_key_file: missing: ssl_cert_file needs its private key".into())
            }
            (None, Some(_)) => errors
                .push("ssl_cert_file: missing: ssl_key_file needs its certificate chain".into()),
            _ => {}
        }
        let has_certs = self.ssl_cert_file.is_some()
            || !self.tls_certificates.is_empty()
            || self.acme.is_some();
        if self.enable_ssl && !has_certs {
            errors.push(
                "enable_ssl: true needs a certificate: set ssl_cert_file and ssl_key_file, \
                 tls_certificates, or acme"
                    .into(),
            );
        }
        if let Some(acme) = &self.acme {
            acme.check(self.enable_ssl, errors);
        }
        if !self.enable_ssl {
            let given = [
                ("ssl_cert_file", self.ssl_cert_file.is_some()),
                ("tls_certificates", !self.tls_certificates.is_empty()),
                ("redirect_http_to_https", self.redirect_http_to_https),
            ];
            for (key, _) in given.iter().filter(|(_, set)| *set) {
                errors.push(format!(
                    "{key}: set, but enable_ssl is false; set enable_ssl: true to serve https"
                ));
            }
            return;
        }
        let tls = self.tls_listen_port;
        if tls != 0 && tls == self.port {
            errors.push(format!(
                "tls_listen_port: {tls} is also port, the plain HTTP listener's; choose another"
            ));
        }
        let admin = self.admin_address;
        if tls != 0
            && admin.port() == tls
            && (admin.ip() == self.bind_address
                || admin.ip().is_unspecified()
                || self.bind_address.is_unspecified())
        {
            errors.push(format!(
                "tls_listen_port: {tls} is the admin listener's port (admin_address {admin})"
            ));
        }
    }

    /// Ids unique, every field well-formed. No DNS here: resolving each host once, and refusing
    /// two backends at one address, is [`Settings`](crate::settings::Settings)' job.
    fn check_backends(&self, errors: &mut Vec<String>) {
        let mut ids: HashMap<&str, usize> = HashMap::new();
        for (i, b) in self.backends.iter().enumerate() {
            let label = format!("backends[{i}] (id {:?})", b.id);
            match ids.get(b.id.as_str()) {
                Some(j) => errors.push(format!("{label}: id: duplicates backends[{j}]")),
                None => {
                    ids.insert(&b.id, i);
                }
            }
            if let Err(e) = b.check() {
                errors.push(format!("{label}: {e}"));
            }
        }
    }
}

/// Health-check paths are sent as the request target, so they must be an origin-form path.
fn check_health_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("must start with '/', got {path:?}"));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "must not contain spaces or control characters: {path:?}"
        ));
    }
    http::uri::PathAndQuery::from_str(path)
        .map(|_| ())
        .map_err(|e| format!("not a valid request path {path:?}: {e}"))
}

/// The access log must name a file in a directory that exists; the file is not created here.
fn check_access_log(path: &Path) -> Result<(), String> {
    let shown = path.display();
    if path.as_os_str().is_empty() {
        return Err("must not be empty; leave it out (or null) to log to stdout".to_string());
    }
    if path.is_dir()
        || path.file_name().is_none()
        || path.as_os_str().to_string_lossy().ends_with(MAIN_SEPARATOR)
    {
        return Err(format!("{shown} is a directory; give a file path"));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "directory {} does not exist (for {shown}); create it first",
            dir.display()
        ));
    }
    Ok(())
}

/// RFC 6265 cookie-name = RFC 7230 token.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests;
