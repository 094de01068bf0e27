//! The [`LoadBalancer`] facade: turns a [`LoadBalancerConfig`] into a running Pingora server.
//!
//! It owns the wiring and nothing else: the [`BackendSet`] (members, pingora's selector and
//! health registry), the health-check service, the proxy service on `bind_address:port`, the
//! admin service on `admin_address`, and the [`Reloader`] that applies a changed configuration
//! in place (SIGHUP, `POST /api/reload`, [`RunningLoadBalancer::reload_config`]). Running
//! blocks until a shutdown signal: Unix signals for the binary (SIGTERM graceful, SIGINT fast,
//! SIGQUIT upgrade), or [`RunningLoadBalancer::stop`] for embedders and tests.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;
use pingora::server::configuration::Opt;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::access_log::{AccessLog, AccessLogWriter};
use crate::admin::{AdminApp, AdminState};
use crate::backend::{block_on, BackendServer, BackendSet, SetError};
use crate::balance::{BalanceConfig, Balancer};
use crate::config::{ConfigError, LoadBalancerConfig};
use crate::downstream::{CountedApp, GuardedApp};
use crate::drain::{DrainService, DrainingSignal, OpenConnections};
use crate::health::{ActiveHealthCheck, HealthService};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::reload::{proxy_settings, Live, ReloadError, ReloadOnHangup, ReloadReport, Reloader};
use crate::rng::random_seed;
use crate::settings::Settings;

/// Why the load balancer could not be built or started.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is invalid.
    Config(ConfigError),
    /// A backend could not be added or removed.
    Backend(SetError),
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
            StartError::Io { doing, source } => write!(f, "cannot {doing}: {source}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Config(e) => Some(e),
            StartError::Backend(e) => Some(e),
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

/// A load balancer: configuration plus backends, ready to run.
pub struct LoadBalancer {
    config: LoadBalancerConfig,
    settings: Settings,
    /// The file reloads read (see [`Self::reloading_from`]).
    file: Option<PathBuf>,
    health: ActiveHealthCheck,
    /// Set by [`Self::exit_when_drained`]: a graceful stop exits the process once drained.
    drain_exit: Option<Arc<AtomicBool>>,
    backends: Arc<BackendSet<Balancer>>,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl LoadBalancer {
    /// Validates `config` into [`Settings`] (resolving each backend once) and adds its
    /// backends. A port of 0 (`port` or `admin_address`) is replaced by a free port now, so
    /// [`Self::listen_addr`] and [`Self::admin_addr`] tell where the server will listen.
    pub fn new(config: LoadBalancerConfig) -> Result<Self, StartError> {
        let settings = Settings::try_from(&config)?;
        let health = ActiveHealthCheck::new(settings.health.clone());
        let backends = Arc::new(backend_set(&settings, &health));
        block_on(async {
            for spec in &settings.backends {
                backends.add(spec.clone()).await?;
            }
            Ok::<_, SetError>(())
        })??;
        let listen = reserve_port(SocketAddr::new(config.bind_address, config.port))?;
        let admin = reserve_port(config.admin_address)?;
        Ok(Self {
            config,
            settings,
            file: None,
            health,
            drain_exit: None,
            backends,
            listen,
            admin,
        })
    }

    /// Reloads (SIGHUP, `POST /api/reload`) re-read `file`, the file this configuration came
    /// from. Without it a reload only reports that there is no file.
    pub fn reloading_from(mut self, file: impl Into<PathBuf>) -> Self {
        self.file = Some(file.into());
        self
    }

    /// Adds a backend (the seed's `AddServer`). Its id and address must be new.
    pub fn add_server(&mut self, server: BackendServer) -> Result<(), StartError> {
        block_on(self.backends.add_server(server))??;
        Ok(())
    }

    /// Removes a backend by id; returns it if it existed.
    pub fn remove_server(&mut self, id: &str) -> Result<Option<BackendServer>, StartError> {
        remove_blocking(&self.backends, id, Duration::ZERO)
    }

    /// The configuration this load balancer runs with.
    pub fn config(&self) -> &LoadBalancerConfig {
        &self.config
    }

    /// The backends and their live state.
    pub fn backends(&self) -> &Arc<BackendSet<Balancer>> {
        &self.backends
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

    /// After a graceful stop (SIGTERM, or the old side of an upgrade), exit the process as soon
    /// as the last client connection has closed, or at `shutdown_timeout`, instead of waiting
    /// out pingora's whole grace period. For the `fulcrum` binary; an embedder that wants
    /// [`Self::run`] to return keeps the default (no exit).
    pub fn exit_when_drained(mut self) -> Self {
        self.drain_exit = Some(Arc::new(AtomicBool::new(false)));
        self
    }

    /// Runs until `signal` says to stop.
    pub fn run_with_signal(
        self,
        opt: Option<Opt>,
        signal: Box<dyn ShutdownSignalWatch + Send + Sync>,
    ) -> Result<(), StartError> {
        let signal: Box<dyn ShutdownSignalWatch> = match &self.drain_exit {
            Some(graceful) => Box::new(DrainingSignal::new(signal, graceful.clone())),
            None => signal,
        };
        let server = self.build(opt)?;
        server.run(RunArgs {
            shutdown_signal: signal,
        });
        Ok(())
    }

    /// Starts on a background thread and returns once the proxy accepts connections (or after
    /// 10 s). The returned handle stops it.
    pub fn start(self) -> Result<RunningLoadBalancer, StartError> {
        let (listen, admin, backends) = (self.listen, self.admin, self.backends.clone());
        let notify = Arc::new(tokio::sync::Notify::new());
        let signal = NotifySignal(notify.clone());
        let (server, reloader) = self.build_with_reloader(None, false)?;
        let thread = std::thread::Builder::new()
            .name("fulcrum".into())
            .spawn(move || {
                server.run(RunArgs {
                    shutdown_signal: Box::new(signal),
                })
            })
            .map_err(StartError::io("start the server thread"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(listen).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(RunningLoadBalancer {
            listen,
            admin,
            backends,
            reloader,
            notify,
            thread: Some(thread),
        })
    }

    /// Builds the pingora server with its services: health checks, access-log writer, proxy,
    /// admin, reload on SIGHUP. Nothing here starts a thread or a runtime: pingora starts the
    /// services after any fork into the background.
    fn build(self, opt: Option<Opt>) -> Result<Server, StartError> {
        self.build_with_reloader(opt, true)
            .map(|(server, _)| server)
    }

    /// [`Self::build`], returning the reloader too. `hangup` installs the SIGHUP listener:
    /// only when the load balancer owns the process's signals ([`Self::run`]), never for
    /// [`Self::start`], which runs inside an embedder's process.
    fn build_with_reloader(
        mut self,
        opt: Option<Opt>,
        hangup: bool,
    ) -> Result<(Server, Arc<Reloader>), StartError> {
        let server_conf = std::mem::take(&mut self.settings.server_conf);
        let (cfg, settings) = (&self.config, &self.settings);
        let mut server = Server::new_with_opt_and_conf(opt, server_conf);
        server.bootstrap();

        let access_log = access_log(cfg)?;
        let metrics = Arc::new(Metrics::new(cfg.metrics_enabled, cfg.strategy));
        let live_settings = Arc::new(ArcSwap::from_pointee(proxy_settings(
            settings,
            access_log.clone(),
            None,
        )));
        let proxy = Proxy::new(
            self.backends.clone(),
            metrics.clone(),
            live_settings.clone(),
            random_seed(),
        );
        let proxy = pingora::proxy::http_proxy(&server.configuration, proxy);
        let open = Arc::new(OpenConnections::default());
        let app = CountedApp::new(
            GuardedApp::new(proxy, settings.client_limits),
            metrics.clone(),
            open.clone(),
        );
        let mut proxy_service = Service::new("proxy".to_string(), app);
        proxy_service.add_tcp(&self.listen.to_string());

        let token = Arc::new(ArcSwapOption::from(
            settings.admin_token.clone().map(Arc::new),
        ));
        let reloader = Arc::new(Reloader::new(
            self.file.clone(),
            cfg.clone(),
            Live {
                backends: self.backends.clone(),
                proxy: live_settings,
                health: self.health.clone(),
                metrics: metrics.clone(),
                admin_token: token.clone(),
                access_log: access_log.clone(),
            },
        ));
        let admin = AdminApp::new(AdminState {
            backends: self.backends.clone(),
            metrics,
            token,
            reload: Some(reloader.clone()),
            drain_timeout: settings.shutdown_timeout,
        });
        let mut admin_service = Service::new("admin".to_string(), admin);
        admin_service.add_tcp(&self.admin.to_string());
        admin_service.threads = Some(1);

        let health = HealthService::new(self.backends.health_registry().clone(), self.health);
        let health = server.add_service(background_service("health checks", health));
        let proxy = server.add_service(proxy_service);
        proxy.add_dependency(&health);
        // Threads do not survive pingora's fork into the background (-d): the log's writer
        // thread starts in a service, and the proxy waits for it.
        if let Some(log) = &access_log {
            let writer = AccessLogWriter(log.clone());
            let writer = server.add_service(background_service("access log", writer));
            proxy.add_dependency(&writer);
        }
        if let Some(graceful) = &self.drain_exit {
            let drain = DrainService {
                open,
                graceful: graceful.clone(),
                limit: settings.shutdown_timeout,
                access_log,
            };
            server.add_service(background_service("drain", drain));
        }
        server.add_service(admin_service);
        if hangup {
            server.add_service(background_service(
                "reload on SIGHUP",
                ReloadOnHangup(reloader.clone()),
            ));
        }
        log::info!(
            "fulcrum listening on http://{} (strategy {}, {} backends), admin on http://{}",
            self.listen,
            cfg.strategy,
            self.backends.len(),
            self.admin
        );
        Ok((server, reloader))
    }
}

/// The access log the config asks for, opened now (a bad path fails the start) and written
/// once its [`AccessLogWriter`] service runs.
fn access_log(cfg: &LoadBalancerConfig) -> Result<Option<Arc<AccessLog>>, StartError> {
    let log = match (cfg.logging_enabled, &cfg.access_log) {
        (false, _) => None,
        (true, None) => Some(AccessLog::stdout()),
        (true, Some(path)) => {
            Some(AccessLog::file(path).map_err(StartError::io("open the access log"))?)
        }
    };
    Ok(log.map(Arc::new))
}

/// An empty backend set for `settings`: the configured strategy, checked by `health` (run by
/// the health service), and a circuit breaker per backend when enabled.
fn backend_set(settings: &Settings, health: &ActiveHealthCheck) -> BackendSet<Balancer> {
    let balance = BalanceConfig {
        strategy: settings.strategy,
        seed: random_seed(),
    };
    BackendSet::new(balance, Some(Box::new(health.clone())), settings.breaker)
}

/// Removes `id` from outside any runtime; `None` when there was no such backend.
fn remove_blocking(
    set: &BackendSet<Balancer>,
    id: &str,
    wait: Duration,
) -> Result<Option<BackendServer>, StartError> {
    match block_on(set.remove(id, wait))? {
        Ok(removal) => Ok(Some(removal.state.server.clone())),
        Err(SetError::UnknownId(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Replaces port 0 by a port that is free now. (Pingora binds listeners itself, by address.)
fn reserve_port(addr: SocketAddr) -> Result<SocketAddr, StartError> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    TcpListener::bind(addr)
        .and_then(|l| l.local_addr())
        .map_err(StartError::io(format!("find a free port on {}", addr.ip())))
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
    backends: Arc<BackendSet<Balancer>>,
    reloader: Arc<Reloader>,
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
    pub fn backends(&self) -> &Arc<BackendSet<Balancer>> {
        &self.backends
    }

    /// Adds a backend while running; it takes traffic from the next request on.
    pub fn add_server(&self, server: BackendServer) -> Result<(), StartError> {
        block_on(self.backends.add_server(server))??;
        Ok(())
    }

    /// Removes a backend while running: no new requests go to it, and the call waits up to
    /// `wait` for its requests in flight (they finish either way). Returns it if it existed.
    pub fn remove_server(
        &self,
        id: &str,
        wait: Duration,
    ) -> Result<Option<BackendServer>, StartError> {
        remove_blocking(&self.backends, id, wait)
    }

    /// Validates `config` and applies it in place, like a SIGHUP reload of a file: backends,
    /// strategy, breaker, retries, rate limit, health check, timeouts (see [`crate::reload`]).
    /// Waits up to the new `shutdown_timeout` for requests in flight on removed backends.
    pub fn reload_config(&self, config: LoadBalancerConfig) -> Result<ReloadReport, ReloadError> {
        block_on(self.reloader.reload_config(config))
            .map_err(|e| ReloadError::Invalid(ConfigError::new(format!("cannot reload: {e}"))))?
    }

    /// Re-reads the configuration file given to [`LoadBalancer::reloading_from`] and applies
    /// it, like SIGHUP.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        block_on(self.reloader.reload())
            .map_err(|e| ReloadError::Invalid(ConfigError::new(format!("cannot reload: {e}"))))?
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
