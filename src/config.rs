//! TEMPORARY stub (replaced by the config branch).
#![allow(missing_docs)]
use crate::backend::BackendServer;
use crate::balance::{HashKey, Strategy};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct CircuitBreakerConfig {
    pub failure_threshold: u32,
    pub recovery_threshold: u32,
    pub timeout: Duration,
    pub half_open_max_calls: u32,
}
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PingoraConfig;
#[derive(Debug, Clone, PartialEq)]
pub struct LoadBalancerConfig {
    pub strategy: Strategy,
    pub hash_key: HashKey,
    pub port: u16,
    pub bind_address: IpAddr,
    pub admin_address: SocketAddr,
    pub health_check_interval: Duration,
    pub health_check_timeout: Duration,
    pub health_check_path: String,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub max_retries: u32,
    pub retry_backoff: Duration,
    pub enable_sticky_sessions: bool,
    pub session_cookie_name: String,
    pub session_timeout: Duration,
    pub enable_ssl: bool,
    pub ssl_cert_file: Option<PathBuf>,
    pub ssl_key_file: Option<PathBuf>,
    pub request_timeout: Duration,
    pub max_idle_conns: usize,
    pub max_idle_conns_per_host: usize,
    pub circuit_breaker_enabled: bool,
    pub circuit_breaker: CircuitBreakerConfig,
    pub metrics_enabled: bool,
    pub logging_enabled: bool,
    pub graceful_shutdown: bool,
    pub shutdown_timeout: Duration,
    pub pingora: PingoraConfig,
    pub backends: Vec<BackendServer>,
}
impl Default for LoadBalancerConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::RoundRobin,
            hash_key: HashKey::ClientIp,
            port: 8080,
            bind_address: "0.0.0.0".parse().unwrap(),
            admin_address: "127.0.0.1:9090".parse().unwrap(),
            health_check_interval: Duration::from_secs(30),
            health_check_timeout: Duration::from_secs(5),
            health_check_path: "/health".into(),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            max_retries: 3,
            retry_backoff: Duration::from_millis(100),
            enable_sticky_sessions: false,
            session_cookie_name: "LB_SESSION_ID".into(),
            session_timeout: Duration::from_secs(7200),
            enable_ssl: false,
            ssl_cert_file: None,
            ssl_key_file: None,
            request_timeout: Duration::from_secs(30),
            max_idle_conns: 1024,
            max_idle_conns_per_host: 0,
            circuit_breaker_enabled: false,
            circuit_breaker: CircuitBreakerConfig {
                failure_threshold: 5,
                recovery_threshold: 3,
                timeout: Duration::from_secs(30),
                half_open_max_calls: 10,
            },
            metrics_enabled: true,
            logging_enabled: true,
            graceful_shutdown: true,
            shutdown_timeout: Duration::from_secs(30),
            pingora: PingoraConfig,
            backends: vec![],
        }
    }
}
#[derive(Debug)]
pub struct ConfigError(pub Vec<String>);
impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}
impl std::error::Error for ConfigError {}
impl ConfigError {
    pub fn messages(&self) -> &[String] {
        &self.0
    }
}
impl LoadBalancerConfig {
    pub fn from_yaml_str(_y: &str) -> Result<Self, ConfigError> {
        Ok(Self::default())
    }
    pub fn from_file(_p: &Path) -> Result<Self, ConfigError> {
        Ok(Self::default())
    }
    pub fn apply_env(&mut self, _env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        Ok(())
    }
    pub fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }
    pub fn server_conf(&self) -> Result<pingora::server::configuration::ServerConf, ConfigError> {
        let mut c = pingora::server::configuration::ServerConf::default();
        c.threads = 2;
        c.grace_period_seconds = Some(0);
        c.graceful_shutdown_timeout_seconds = Some(0);
        c.max_retries = self.max_retries as usize + 1;
        Ok(c)
    }
}
