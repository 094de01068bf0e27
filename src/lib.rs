//! # Fulcrum
//!
//! A concurrent HTTP load balancer built on Cloudflare's [Pingora](https://github.com/cloudflare/pingora).
//!
//! The library is the product; the `fulcrum` binary is a thin command line over it. Build a
//! [`LoadBalancerConfig`] (from YAML with [`LoadBalancerConfig::from_file`], or in code), hand it
//! to [`LoadBalancer::new`], add backends with [`LoadBalancer::add_server`] and call
//! [`LoadBalancer::run`].
//!
//! Module map: [`config`] (the YAML file), [`backend`] (backends and their live counters),
//! [`balance`] (the eight selection strategies), [`health`] (active checks and the health view),
//! [`proxy`] (the request pipeline), [`admin`] (the admin listener), [`server`] (wiring it into a
//! Pingora server), [`demo`] (built-in demo backends).

#![deny(missing_docs)]
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod backend;
pub mod balance;
pub mod breaker;
pub mod client;
pub mod config;
pub mod demo;
pub mod downstream;
pub mod drain;
pub mod headers;
pub mod health;
pub mod histogram;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod responses;
pub mod retry;
pub(crate) mod rng;
pub mod server;
pub mod settings;
pub mod sticky;
pub mod time;
pub mod tls;
pub mod upstream;

pub use backend::BackendServer;
pub use balance::Strategy;
pub use config::LoadBalancerConfig;
pub use server::LoadBalancer;
