//! The [`LoadBalancer`] facade: turns a [`LoadBalancerConfig`] into a running Pingora server.
//!
//! It owns the wiring and nothing else: the [`BackendSet`] (members, pingora's selector and
//! health registry), the health-check service, the proxy service on `bind_address:port`, the
//! admin service on `admin_address`, the ACME service when `acme` is set (its challenges
//! answered by the proxy), and the [`Reloader`] that applies a changed configuration
//! in place (SIGHUP, `POST /api/reload`, [`RunningLoadBalancer::reload_config`]). Running
//! blocks until a shutdown signal: Unix signals for the binary (SIGTERM graceful, SIGINT fast,
//! SIGQUIT upgrade), or [`RunningLoadBalancer::stop`] for embedders and tests.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use pingora::apps::HttpServerOptions;
use pingora::server::configuration::Opt;
use pingora::server::{RunArgs, Server, ShutdownSignalWatch};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

mod error;
mod running;

pub use error::StartError;
use running::NotifySignal;
pub use running::RunningLoadBalancer;

use crate::access_log::{AccessLog, AccessLogWriter};
use crate::acme::{AcmeService, Challenges};
use crate::admin::{AdminApp, AdminState};
use crate::backend::{block_on, BackendServer, BackendSet, SetError};
use crate::balance::{BalanceConfig, Balancer};
use crate::config::{ConfigError, LoadBalancerConfig};
use crate::downstream::{CountedApp, GuardedApp};
use crate::drain::{DrainService, DrainingSignal, OpenConnections};
use crate::health::{ActiveHealthCheck, HealthService};
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::reload::{proxy_settings, Live, ReloadOnHangup, Reloader, RunningTls};
use crate::rng::random_seed;
use crate::settings::Settings;
use crate::sticky::{SessionSweeper, Sessions};
use crate::tls::{listener_settings, SniResolver};

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
    /// The TLS listener's address, when TLS is on.
    tls_listen: Option<SocketAddr>,
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
        let tls_listen = match &settings.tls {
            Some(tls) => Some(reserve_port(SocketAddr::new(
                config.bind_address,
                tls.port,
            ))?),
            None => None,
        };
        Ok(Self {
            config,
            settings,
            file: None,
            health,
            drain_exit: None,
            backends,
            listen,
            admin,
            tls_listen,
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

    /// Where the TLS listener listens, when TLS is on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_listen
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
        let (listen, admin, tls, backends) = (
            self.listen,
            self.admin,
            self.tls_listen,
            self.backends.clone(),
        );
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
            if thread.is_finished() {
                // pingora could not bind or start: say so instead of returning a dead handle
                return Err(StartError::Io {
                    doing: format!("start the server on {listen}"),
                    source: std::io::Error::other("the server thread ended while starting"),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(RunningLoadBalancer {
            listen,
            admin,
            tls,
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
        let tls = match (&settings.tls, self.tls_listen) {
            (Some(tls), Some(addr)) => Some((addr, Arc::new(SniResolver::new(tls.certs.clone())))),
            _ => None,
        };
        let live_settings = Arc::new(ArcSwap::from_pointee(proxy_settings(
            settings,
            access_log.clone(),
            None,
            tls.as_ref().map(|(addr, _)| addr.port()),
        )));
        let mut proxy = Proxy::new(
            self.backends.clone(),
            metrics.clone(),
            live_settings.clone(),
            random_seed(),
        );
        let sessions = match &settings.sessions {
            Some(s) => Some(Arc::new(Sessions::new(
                s.build_store().map_err(|e| {
                    StartError::Config(ConfigError::new(format!("session_store: {e}")))
                })?,
                s.cookie_name.clone(),
                s.timeout,
            ))),
            None => None,
        };
        if let Some(sessions) = &sessions {
            proxy = proxy.with_sessions(sessions.clone());
        }
        // ACME: the proxy answers the challenges the service sets; the service loads the
        // stored certificate into the resolver now, so the first handshake can have it.
        let acme = match (&settings.acme, &tls) {
            (Some(acme), Some((_, resolver))) => {
                let challenges = Arc::new(Challenges::default());
                proxy = proxy.answering_acme(challenges.clone());
                let service =
                    AcmeService::new(acme.clone(), resolver.clone(), challenges, self.listen);
                Some(background_service("acme", service))
            }
            _ => None,
        };
        let mut proxy = pingora::proxy::http_proxy(&server.configuration, proxy);
        proxy.server_options = Some(server_options(settings));
        let open = Arc::new(OpenConnections::default());
        let mut app = CountedApp::new(
            GuardedApp::new(proxy, settings.client_limits),
            metrics.clone(),
            open.clone(),
        );
        if settings.h2c {
            app = app.with_preface_deadline(settings.client_limits.header_timeout);
        }
        let mut proxy_service = Service::new("proxy".to_string(), app);
        proxy_service.add_tcp(&self.listen.to_string());
        if let Some((addr, resolver)) = &tls {
            let tls_settings =
                listener_settings(resolver.clone()).map_err(|e| StartError::Tls(e.to_string()))?;
            proxy_service.add_tls_with_settings(&addr.to_string(), None, tls_settings);
        }

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
                tls: tls.as_ref().map(|(addr, resolver)| RunningTls {
                    port: addr.port(),
                    resolver: resolver.clone(),
                }),
            },
        ));
        let admin = AdminApp::new(AdminState {
            backends: self.backends.clone(),
            metrics,
            token,
            reload: Some(reloader.clone()),
            drain_timeout: settings.shutdown_timeout,
            tls: tls.as_ref().map(|(_, resolver)| resolver.clone()),
            sessions: sessions.clone(),
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
        if let Some(sessions) = sessions {
            server.add_service(background_service("sessions", SessionSweeper(sessions)));
        }
        if let Some(acme) = acme {
            server.add_service(acme);
        }
        if hangup {
            server.add_service(background_service(
                "reload on SIGHUP",
                ReloadOnHangup(reloader.clone()),
            ));
        }
        log::info!(
            "fulcrum listening on http://{}{} (strategy {}, {} backends), admin on http://{}",
            self.listen,
            tls.as_ref()
                .map_or_else(String::new, |(addr, _)| format!(" and https://{addr}")),
            cfg.strategy,
            self.backends.len(),
            self.admin
        );
        Ok((server, reloader))
    }
}

/// Options of the traffic listeners' HTTP server: h2c when configured, and idle HTTP/2
/// connections closed after `client_idle_timeout` like idle HTTP/1.1 ones.
fn server_options(settings: &Settings) -> HttpServerOptions {
    let mut options = HttpServerOptions::default();
    options.h2c = settings.h2c;
    options.h2_idle_timeout = Some(settings.client_limits.idle_timeout);
    options
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

/// Replaces port 0 by a port that is free now. (Pingora binds listeners itself, by address, so
/// the port is free again until it does.) A port this process handed out before is never
/// handed out again: two load balancers started at once in one process (tests, embedders)
/// would otherwise race for the same port between this call and pingora's bind.
fn reserve_port(addr: SocketAddr) -> Result<SocketAddr, StartError> {
    static HANDED_OUT: std::sync::Mutex<Vec<SocketAddr>> = std::sync::Mutex::new(Vec::new());
    if addr.port() != 0 {
        return Ok(addr);
    }
    let mut handed = match HANDED_OUT.lock() {
        Ok(h) => h,
        Err(poisoned) => poisoned.into_inner(),
    };
    let mut held = Vec::new(); // ports seen before stay bound, so the OS offers others
    for _ in 0..64 {
        let listener = TcpListener::bind(addr)
            .map_err(StartError::io(format!("find a free port on {}", addr.ip())))?;
        let found = listener
            .local_addr()
            .map_err(StartError::io(format!("find a free port on {}", addr.ip())))?;
        if !handed.contains(&found) {
            handed.push(found);
            return Ok(found);
        }
        held.push(listener);
    }
    Err(StartError::Io {
        doing: format!("find a free port on {}", addr.ip()),
        source: std::io::Error::other("every port offered was handed out before"),
    })
}
