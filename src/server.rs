//! The [`LoadBalancer`] facade: turns a [`LoadBalancerConfig`] into a running Pingora server.
//!
//! It owns the wiring and nothing else: the backend [`Registry`], pingora's load balancer
//! (selection + health-check background service, fed by [`RegistryDiscovery`]), the proxy
//! service on `bind_address:port` and the admin service on `admin_address`. Running blocks until
//! a shutdown signal: Unix signals for the binary (SIGTERM graceful, SIGINT fast, SIGQUIT
//! upgrade), or [`RunningLoadBalancer::stop`] for embedders and tests.

use std::collections::{BTreeSet, HashMap};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pingora::server::configuration::Opt;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::{Backend, Backends, LoadBalancer as Pool};

use crate::access_log::AccessLog;
use crate::admin::{AdminApp, AdminState};
use crate::backend::{BackendServer, Registry};
use crate::balance::{BalanceConfig, Balancer};
use crate::breaker::BreakerSettings;
use crate::client::TrustedProxies;
use crate::config::{ConfigError, LoadBalancerConfig};
use crate::downstream::{ClientLimits, CountedApp, GuardedApp};
use crate::health::{ActiveHealthCheck, HealthCheckSettings, Thresholds};
use crate::metrics::Metrics;
use crate::proxy::{Proxy, ProxySettings, StatusSet};
use crate::ratelimit::RateLimiter;
use crate::retry::{Backoff, RetryPolicy};

/// Feeds pingora's load balancer the registry's current backends.
pub struct RegistryDiscovery {
    registry: Arc<Registry>,
}

#[async_trait]
impl ServiceDiscovery for RegistryDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let backends = self
            .registry
            .snapshot()
            .iter()
            .map(|s| s.to_backend())
            .collect();
        Ok((backends, HashMap::new()))
    }
}

/// Why the load balancer could not be built or started.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// A backend could not be added.
    Backend(String),
    /// A listening address could not be reserved.
    Io(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Backend(e) | StartError::Io(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for StartError {}

impl From<ConfigError> for StartError {
    fn from(e: ConfigError) -> Self {
        StartError::Config(e)
    }
}

/// A load balancer: configuration plus backends, ready to run.
pub struct LoadBalancer {
    config: LoadBalancerConfig,
    registry: Arc<Registry>,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl LoadBalancer {
    /// Validates `config` and registers its backends. A port of 0 (`port` or `admin_address`)
    /// is replaced by a free port now, so [`Self::listen_addr`] and [`Self::admin_addr`] tell
    /// where the server will listen.
    pub fn new(config: LoadBalancerConfig) -> Result<Self, StartError> {
        config.validate()?;
        let breakers = config.circuit_breaker_enabled.then_some(BreakerSettings {
            failure_threshold: config.circuit_breaker.failure_threshold,
            recovery_threshold: config.circuit_breaker.recovery_threshold,
            timeout: config.circuit_breaker.timeout,
            half_open_max_calls: config.circuit_breaker.half_open_max_calls,
        });
        let registry = Arc::new(Registry::with_breakers(breakers));
        for server in &config.backends {
            registry.add(server.clone()).map_err(StartError::Backend)?;
        }
        let listen = reserve_port(SocketAddr::new(config.bind_address, config.port))?;
        let admin = reserve_port(config.admin_address)?;
        Ok(Self {
            config,
            registry,
            listen,
            admin,
        })
    }

    /// Adds a backend (the seed's `AddServer`). Its id and address must be new.
    pub fn add_server(&mut self, server: BackendServer) -> Result<(), StartError> {
        self.registry
            .add(server)
            .map(|_| ())
            .map_err(StartError::Backend)
    }

    /// Removes a backend by id; returns it if it existed.
    pub fn remove_server(&mut self, id: &str) -> Option<BackendServer> {
        self.registry.remove(id).map(|s| s.server.clone())
    }

    /// The configuration this load balancer runs with.
    pub fn config(&self) -> &LoadBalancerConfig {
        &self.config
    }

    /// The backends and their live state.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Where the proxy listens.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Where the admin listener (`/health`) listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Runs until a Unix signal stops it (the seed's `Start`): SIGTERM drains for
    /// `shutdown_timeout`, SIGINT stops at once, SIGQUIT hands the listening sockets to a new
    /// process started with `-u`. `opt` carries pingora's `-d`/`-u` flags.
    pub fn run(self, opt: Option<Opt>) -> Result<(), StartError> {
        self.run_with_signal(opt, Box::new(pingora::server::UnixShutdownSignalWatch))
    }

    /// Runs until `signal` says to stop.
    pub fn run_with_signal(
        self,
        opt: Option<Opt>,
        signal: Box<dyn ShutdownSignalWatch>,
    ) -> Result<(), StartError> {
        let (server, _pool) = self.build(opt)?;
        server.run(RunArgs {
            shutdown_signal: signal,
        });
        Ok(())
    }

    /// Starts on a background thread and returns once the proxy accepts connections (or after
    /// 10 s). The returned handle stops it.
    pub fn start(self) -> Result<RunningLoadBalancer, StartError> {
        let (listen, admin, registry) = (self.listen, self.admin, self.registry.clone());
        let notify = Arc::new(tokio::sync::Notify::new());
        let signal = NotifySignal(notify.clone());
        let (server, pool) = self.build(None)?;
        let thread = std::thread::Builder::new()
            .name("fulcrum".into())
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: Box::new(signal),
                })
            })
            .map_err(|e| StartError::Io(format!("cannot start the server thread: {e}")))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(listen).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(RunningLoadBalancer {
            listen,
            admin,
            registry,
            pool,
            notify,
            thread: Some(thread),
        })
    }

    /// Builds the pingora server with its three services; also returns the backend pool.
    fn build(self, opt: Option<Opt>) -> Result<(Server, PoolHandle), StartError> {
        let cfg = &self.config;
        let server_conf = cfg.server_conf()?;
        let mut server = Server::new_with_opt_and_conf(opt, server_conf);
        server.bootstrap();

        let pool = build_pool(cfg, &self.registry)?;
        let health = background_service("health checks", pool);
        let pool = PoolHandle::new(health.task());

        let metrics = Arc::new(Metrics::new(cfg.metrics_enabled, cfg.strategy));
        let settings = proxy_settings(cfg)?;
        let proxy = Proxy::new(
            pool.pool.clone(),
            self.registry.clone(),
            metrics.clone(),
            settings,
            random_seed(),
        );
        let proxy = pingora::proxy::http_proxy(&server.configuration, proxy);
        let limits = ClientLimits {
            header_timeout: cfg.client_header_timeout,
            idle_timeout: cfg.client_idle_timeout,
            max_header_size: cfg.max_request_header_size,
            underscores_in_headers: cfg.underscores_in_headers,
        };
        let app = CountedApp::new(GuardedApp::new(proxy, limits), metrics.clone());
        let mut proxy_service = Service::new("proxy".to_string(), app);
        proxy_service.add_tcp(&self.listen.to_string());

        let admin = AdminApp::new(AdminState {
            registry: self.registry.clone(),
            pool: pool.clone(),
            metrics: metrics.clone(),
            token: cfg.admin_token()?,
            drain_timeout: cfg.shutdown_timeout,
        });
        let mut admin_service = Service::new("admin".to_string(), admin);
        admin_service.add_tcp(&self.admin.to_string());
        admin_service.threads = Some(1);

        let health = server.add_service(health);
        let proxy = server.add_service(proxy_service);
        proxy.add_dependency(&health);
        server.add_service(admin_service);
        log::info!(
            "fulcrum listening on http://{} (strategy {}, {} backends), admin on http://{}",
            self.listen,
            cfg.strategy,
            cfg.backends.len(),
            self.admin
        );
        Ok((server, pool))
    }
}

/// The proxy's settings, from the config.
fn proxy_settings(cfg: &LoadBalancerConfig) -> Result<ProxySettings, StartError> {
    let backoff = Backoff::new(cfg.retry_backoff, cfg.retry_backoff_max)
        .map_err(|e| StartError::Config(ConfigError::new(e)))?;
    let rate_limit = match &cfg.rate_limit {
        None => None,
        Some(r) => Some(
            RateLimiter::new(r.requests_per_second, r.burst)
                .map_err(|e| StartError::Config(ConfigError::new(format!("rate_limit: {e}"))))?,
        ),
    };
    Ok(ProxySettings {
        strategy: cfg.strategy,
        hash_key: cfg.hash_key.clone(),
        connect_timeout: cfg.connect_timeout,
        request_timeout: cfg.request_timeout,
        access_log: match (cfg.logging_enabled, &cfg.access_log) {
            (false, _) => None,
            (true, None) => Some(AccessLog::stdout()),
            (true, Some(path)) => Some(AccessLog::file(path)),
        }
        .transpose()
        .map_err(|e| StartError::Io(format!("cannot open the access log: {e}")))?,
        scheme: "http",
        failure_statuses: StatusSet::new(&cfg.circuit_breaker.failure_status_codes),
        trusted_proxies: TrustedProxies::new(cfg.trusted_proxies.clone()),
        rate_limit,
        retry: RetryPolicy::new(
            cfg.max_retries,
            backoff,
            cfg.retry_budget_percent,
            random_seed(),
        ),
    })
}

/// Pingora's load balancer over the registry: the configured strategy, active health checks
/// every `health_check_interval`, all backends checked in parallel.
fn build_pool(
    cfg: &LoadBalancerConfig,
    registry: &Arc<Registry>,
) -> Result<Pool<Balancer>, StartError> {
    let discovery = RegistryDiscovery {
        registry: registry.clone(),
    };
    let mut backends = Backends::new(Box::new(discovery));
    backends.set_health_check(Box::new(ActiveHealthCheck::new(HealthCheckSettings {
        path: cfg.health_check_path.clone(),
        timeout: cfg.health_check_timeout,
        thresholds: Thresholds {
            healthy: cfg.healthy_threshold,
            unhealthy: cfg.unhealthy_threshold,
        },
    })));
    let balance = BalanceConfig {
        strategy: cfg.strategy,
        seed: random_seed(),
    };
    let mut pool = Pool::from_backends_with_config(backends, Some(balance));
    pool.health_check_frequency = Some(cfg.health_check_interval);
    pool.parallel_health_check = true;
    // Fill the selector now, so the proxy never sees an empty backend set at startup.
    refresh(&pool)?;
    Ok(pool)
}

/// Rebuilds the pool's backend set and selector from the registry, at once, from outside any
/// async runtime. Discovery reads memory only, so this never waits on I/O.
fn refresh(pool: &Pool<Balancer>) -> Result<(), StartError> {
    PoolHandle::block_on(pool.update())
}

/// The running pool and the lock that keeps its rebuilds in order: pingora's `update` must not
/// overlap, or an older backend set could be stored last (a removed backend coming back).
#[derive(Clone)]
pub struct PoolHandle {
    /// Pingora's load balancer over the registry.
    pub pool: Arc<Pool<Balancer>>,
    rebuild: Arc<tokio::sync::Mutex<()>>,
}

impl PoolHandle {
    /// A handle on `pool`.
    pub fn new(pool: Arc<Pool<Balancer>>) -> Self {
        Self {
            pool,
            rebuild: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Rebuilds the backend set and selector from the registry (inside an async runtime).
    pub async fn refresh(&self) -> pingora::Result<()> {
        let _one_at_a_time = self.rebuild.lock().await;
        self.pool.update().await
    }

    /// [`Self::refresh`] from outside any async runtime.
    pub fn refresh_blocking(&self) -> Result<(), StartError> {
        Self::block_on(self.refresh())
    }

    fn block_on<F: std::future::Future<Output = pingora::Result<()>>>(
        f: F,
    ) -> Result<(), StartError> {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| StartError::Io(format!("cannot create a runtime: {e}")))?
            .block_on(f)
            .map_err(|e| StartError::Backend(format!("cannot load the backends: {e}")))
    }
}

/// A seed that differs between processes (request ids, random strategies).
fn random_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32) ^ (&nanos as *const u64 as u64)
}

/// Replaces port 0 by a port that is free now. (Pingora binds listeners itself, by address.)
fn reserve_port(addr: SocketAddr) -> Result<SocketAddr, StartError> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    TcpListener::bind(addr)
        .and_then(|l| l.local_addr())
        .map_err(|e| StartError::Io(format!("cannot find a free port on {}: {e}", addr.ip())))
}

/// A shutdown signal fired through a [`tokio::sync::Notify`] (see [`RunningLoadBalancer::stop`]).
struct NotifySignal(Arc<tokio::sync::Notify>);

#[async_trait]
impl ShutdownSignalWatch for NotifySignal {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::FastShutdown
    }
}

/// A load balancer running on a background thread (from [`LoadBalancer::start`]).
pub struct RunningLoadBalancer {
    listen: SocketAddr,
    admin: SocketAddr,
    registry: Arc<Registry>,
    pool: PoolHandle,
    notify: Arc<tokio::sync::Notify>,
    thread: Option<JoinHandle<()>>,
}

impl RunningLoadBalancer {
    /// Where the proxy listens.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Where the admin listener listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The backends and their live state.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Adds a backend while running; it takes traffic from the next request on.
    pub fn add_server(&self, server: BackendServer) -> Result<(), StartError> {
        self.registry.add(server).map_err(StartError::Backend)?;
        self.pool.refresh_blocking()
    }

    /// Removes a backend while running; requests already sent to it finish.
    pub fn remove_server(&self, id: &str) -> Result<Option<BackendServer>, StartError> {
        let removed = self.registry.remove(id).map(|s| s.server.clone());
        self.pool.refresh_blocking()?;
        Ok(removed)
    }

    /// Stops the server and waits for it to exit.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.notify.notify_one();
            if thread.join().is_err() {
                log::error!("the server thread panicked");
            }
        }
    }
}

impl Drop for RunningLoadBalancer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
