//! [`BackendSet`]: the one owner of the list of backends.
//!
//! It holds the members (by id, in the order they were added), pingora's load balancer built
//! over them (selector + health-check service), and the lock that keeps rebuilds in order.
//! Every change goes through it — the admin API, the library API and, later, reload and
//! discovery — and takes effect at once: the members change, then pingora's selector is
//! rebuilt, so selection, health checks, metrics and `/health` all see it.
//!
//! Readers never lock: requests select through pingora's `ArcSwap`ed selector, and
//! [`BackendSet::snapshot`] is one `ArcSwap` load. Writers take an async mutex, one rebuild at a
//! time, so an older member list can never be published after a newer one.
//!
//! The set is generic over the selection algorithm so that this module does not depend on the
//! strategies (which read backend state): the proxy uses `BackendSet<crate::balance::Balancer>`.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::services::background::GenBackgroundService;
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::health_check::HealthCheck;
use pingora_load_balancing::selection::{BackendIter, BackendSelection};
use pingora_load_balancing::{Backend, Backends, LoadBalancer as Pool};

use super::spec::{BackendSpec, InvalidField, Weight};
use super::state::BackendState;
use crate::breaker::BreakerSettings;

/// Why a change to the backend set was refused. The admin API maps each to an HTTP status in
/// one place.
#[derive(Debug)]
pub enum SetError {
    /// A backend with this id exists already.
    DuplicateId(String),
    /// Another backend already has this address.
    DuplicateAddress {
        /// The backend being added.
        id: String,
        /// The address both resolve to.
        addr: SocketAddr,
        /// The backend that has it.
        existing: String,
    },
    /// No backend has this id.
    UnknownId(String),
    /// A field of the backend is invalid.
    Invalid {
        /// The backend's id as given.
        id: String,
        /// The field and why.
        error: InvalidField,
    },
    /// Pingora could not rebuild its backend set (our discovery never fails; kept for safety).
    Rebuild(Box<pingora::Error>),
    /// No async runtime could be created for a blocking call.
    Runtime(std::io::Error),
}

impl fmt::Display for SetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetError::DuplicateId(id) => write!(f, "backend {id:?}: id already exists"),
            SetError::DuplicateAddress { id, addr, existing } => write!(
                f,
                "backend {id:?}: url: {addr} is the same address as backend {existing:?}"
            ),
            SetError::UnknownId(id) => write!(f, "no backend {id:?}"),
            SetError::Invalid { id, error } => write!(f, "backend {id:?}: {error}"),
            SetError::Rebuild(e) => write!(f, "cannot rebuild the backend set: {e}"),
            SetError::Runtime(e) => write!(f, "cannot create a runtime: {e}"),
        }
    }
}

impl std::error::Error for SetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SetError::Invalid { error, .. } => Some(error),
            SetError::Rebuild(e) => Some(e.as_ref()),
            SetError::Runtime(e) => Some(e),
            _ => None,
        }
    }
}

/// The members, shared with the discovery that feeds pingora.
type Members = Arc<ArcSwap<Vec<Arc<BackendState>>>>;

/// Feeds pingora's load balancer the set's current members.
struct MemberDiscovery(Members);

#[async_trait]
impl ServiceDiscovery for MemberDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let backends = self.0.load().iter().map(|s| s.to_backend()).collect();
        Ok((backends, HashMap::new()))
    }
}

/// Active health checking for the set's pingora pool.
pub struct HealthChecking {
    /// The check run against every backend.
    pub check: Box<dyn HealthCheck + Send + Sync + 'static>,
    /// How often.
    pub every: Duration,
}

/// What a removal did.
#[derive(Debug)]
pub struct Removal {
    /// The removed backend (its counters as they were at removal).
    pub state: Arc<BackendState>,
    /// Whether every request in flight finished before it was removed.
    pub drained: bool,
    /// How long the removal waited for them.
    pub waited: Duration,
}

/// The one owner of the list of backends (see the module docs).
pub struct BackendSet<S: BackendSelection> {
    members: Members,
    pool: Arc<Pool<S>>,
    rebuild: tokio::sync::Mutex<()>,
    breaker: Option<BreakerSettings>,
}

impl<S> BackendSet<S>
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
{
    /// An empty set whose selector is built with `config`, checked by `health` when given,
    /// and whose backends each get a circuit breaker with `breaker` settings when given.
    pub fn new(
        config: S::Config,
        health: Option<HealthChecking>,
        breaker: Option<BreakerSettings>,
    ) -> Self {
        let members: Members = Arc::default();
        let backends = Backends::new(Box::new(MemberDiscovery(members.clone())));
        let mut pool = Pool::from_backends_with_config(backends, Some(config));
        if let Some(h) = health {
            pool.set_health_check(h.check);
            pool.health_check_frequency = Some(h.every);
            pool.parallel_health_check = true;
        }
        Self {
            members,
            pool: Arc::new(pool),
            rebuild: tokio::sync::Mutex::new(()),
            breaker,
        }
    }

    /// Pingora's background service that runs the health checks over this set.
    pub fn health_service(&self, name: &str) -> GenBackgroundService<Pool<S>> {
        GenBackgroundService::new(name.to_string(), self.pool.clone())
    }

    /// All members, in the order they were added (one lock-free load).
    pub fn snapshot(&self) -> Arc<Vec<Arc<BackendState>>> {
        self.members.load_full()
    }

    /// The member with this id.
    pub fn get(&self, id: &str) -> Option<Arc<BackendState>> {
        self.members.load().iter().find(|b| b.id() == id).cloned()
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.load().len()
    }

    /// True when the set has no member.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first backend, in the strategy's order for `key`, that `accept` takes (at most
    /// `max_iterations` candidates). Lock-free.
    pub fn select_with<F>(&self, key: &[u8], max_iterations: usize, accept: F) -> Option<Backend>
    where
        F: Fn(&Backend, bool) -> bool,
    {
        self.pool.select_with(key, max_iterations, accept)
    }

    /// Adds a validated backend; its id and address must be new. It takes traffic from the next
    /// request on.
    pub async fn add(&self, spec: BackendSpec) -> Result<Arc<BackendState>, SetError> {
        let _one_at_a_time = self.rebuild.lock().await;
        let current = self.members.load_full();
        if current.iter().any(|b| b.id() == spec.id()) {
            return Err(SetError::DuplicateId(spec.id().to_string()));
        }
        if let Some(other) = current.iter().find(|b| b.addr == spec.addr()) {
            return Err(SetError::DuplicateAddress {
                id: spec.id().to_string(),
                addr: spec.addr(),
                existing: other.id().to_string(),
            });
        }
        let state = BackendState::new(spec, self.breaker);
        let mut next = Vec::clone(&current);
        next.push(state.clone());
        self.members.store(Arc::new(next));
        self.publish().await?;
        Ok(state)
    }

    /// Validates `server` (resolving its host off the runtime's threads) and adds it.
    pub async fn add_server(
        &self,
        server: super::BackendServer,
    ) -> Result<Arc<BackendState>, SetError> {
        let id = server.id.clone();
        let spec = BackendSpec::resolve_async(server)
            .await
            .map_err(|error| SetError::Invalid { id, error })?;
        self.add(spec).await
    }

    /// Drains the backend (no new requests), waits up to `wait` for its requests in flight to
    /// finish, then removes it. Requests still in flight after `wait` run to completion; the
    /// backend just takes no new ones.
    pub async fn remove(&self, id: &str, wait: Duration) -> Result<Removal, SetError> {
        let state = self.find(id)?;
        state.set_draining(true);
        let started = tokio::time::Instant::now(); // pausable in tests
        while state.stats.in_flight() > 0 && started.elapsed() < wait {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let drained = state.stats.in_flight() == 0;
        let _one_at_a_time = self.rebuild.lock().await;
        let current = self.members.load_full();
        let next: Vec<_> = current
            .iter()
            .filter(|b| !Arc::ptr_eq(b, &state))
            .cloned()
            .collect();
        if next.len() == current.len() {
            return Err(SetError::UnknownId(id.to_string())); // removed meanwhile
        }
        self.members.store(Arc::new(next));
        self.publish().await?;
        Ok(Removal {
            state,
            drained,
            waited: started.elapsed(),
        })
    }

    /// Changes a backend's weight and rebuilds the selectors.
    pub async fn set_weight(
        &self,
        id: &str,
        weight: Weight,
    ) -> Result<Arc<BackendState>, SetError> {
        let _one_at_a_time = self.rebuild.lock().await;
        let state = self.find(id)?;
        state.set_weight(weight);
        self.publish().await?;
        Ok(state)
    }

    /// Stops sending the backend new requests; requests in flight finish.
    pub fn drain(&self, id: &str) -> Result<Arc<BackendState>, SetError> {
        let state = self.find(id)?;
        state.set_draining(true);
        Ok(state)
    }

    /// Sends the backend requests again.
    pub fn undrain(&self, id: &str) -> Result<Arc<BackendState>, SetError> {
        let state = self.find(id)?;
        state.set_draining(false);
        Ok(state)
    }

    fn find(&self, id: &str) -> Result<Arc<BackendState>, SetError> {
        self.get(id)
            .ok_or_else(|| SetError::UnknownId(id.to_string()))
    }

    /// Rebuilds pingora's backend set and selector from the members. The caller holds the
    /// rebuild lock.
    async fn publish(&self) -> Result<(), SetError> {
        self.pool.update().await.map_err(SetError::Rebuild)
    }
}

/// Runs `f` to completion from outside any async runtime (the library's synchronous API). The
/// set's operations wait on nothing but memory and its own lock, so this returns promptly.
pub fn block_on<F: Future>(f: F) -> Result<F::Output, SetError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(SetError::Runtime)?;
    Ok(rt.block_on(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{state_of, BackendServer, InFlightGuard};
    use pingora_load_balancing::selection::RoundRobin;

    fn spec(id: &str, port: u16) -> BackendSpec {
        BackendSpec::resolve(BackendServer::new(id, format!("http://127.0.0.1:{port}"))).unwrap()
    }

    fn selected_ids(set: &BackendSet<RoundRobin>) -> BTreeSet<String> {
        (0..8)
            .filter_map(|_| set.select_with(b"", 8, |_, _| true))
            .filter_map(|b| state_of(&b).map(|s| s.id().to_string()))
            .collect()
    }

    #[test]
    fn changes_reach_the_selector_and_keep_state() {
        let set: BackendSet<RoundRobin> = BackendSet::new((), None, None);
        block_on(async {
            let a = set.add(spec("a", 1)).await.unwrap();
            let _guard = InFlightGuard::new(a.clone());
            set.add(spec("b", 2)).await.unwrap();
            assert_eq!(selected_ids(&set), ["a", "b"].map(String::from).into());

            let dup_id = set.add(spec("a", 3)).await.unwrap_err();
            assert!(
                matches!(&dup_id, SetError::DuplicateId(id) if id == "a"),
                "{dup_id}"
            );
            let dup_addr = set.add(spec("c", 2)).await.unwrap_err();
            assert!(
                matches!(&dup_addr, SetError::DuplicateAddress { existing, .. } if existing == "b"),
                "{dup_addr}"
            );

            let removal = set.remove("b", Duration::ZERO).await.unwrap();
            assert!(removal.drained && removal.state.is_draining());
            assert!(matches!(
                set.remove("b", Duration::ZERO).await,
                Err(SetError::UnknownId(_))
            ));
            assert_eq!(selected_ids(&set), ["a"].map(String::from).into());
            assert_eq!(
                set.get("a").unwrap().stats.in_flight(),
                1,
                "state survives rebuilds"
            );

            let w = set.set_weight("a", Weight::new(7).unwrap()).await.unwrap();
            assert_eq!(w.weight(), 7);
            let picked = set.select_with(b"", 1, |_, _| true).unwrap();
            assert_eq!(picked.weight, 7, "the selector sees the new weight");
            assert!(Arc::ptr_eq(state_of(&picked).unwrap(), &a));

            assert!(set.drain("a").unwrap().is_draining());
            assert!(!set.undrain("a").unwrap().is_draining());
            assert!(matches!(set.drain("zz"), Err(SetError::UnknownId(_))));
        })
        .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn removal_waits_for_requests_in_flight() {
        let set: BackendSet<RoundRobin> = BackendSet::new((), None, None);
        let a = set.add(spec("a", 1)).await.unwrap();
        let guard = InFlightGuard::new(a.clone());
        let removal = set.remove("a", Duration::from_secs(30)).await.unwrap();
        assert!(!removal.drained, "still in flight after the wait");
        assert!(removal.waited >= Duration::from_secs(30));
        drop(guard);
        set.add(spec("b", 2)).await.unwrap();
        let b = set.get("b").unwrap();
        let guard = InFlightGuard::new(b.clone());
        let (removal, ()) = tokio::join!(set.remove("b", Duration::from_secs(30)), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(guard);
        });
        let removal = removal.unwrap();
        assert!(removal.drained, "the request finished within the wait");
        assert!(
            removal.waited >= Duration::from_secs(5) && removal.waited < Duration::from_secs(6),
            "it waited for the request, not the whole 30 s: {:?}",
            removal.waited
        );
    }

    #[test]
    fn invalid_servers_name_the_field() {
        let set: BackendSet<RoundRobin> = BackendSet::new((), None, None);
        let err = block_on(set.add_server(BackendServer::new("x", "nope")))
            .unwrap()
            .unwrap_err();
        match &err {
            SetError::Invalid { id, error } => assert_eq!((id.as_str(), error.field), ("x", "url")),
            other => panic!("{other}"),
        }
        assert!(std::error::Error::source(&err).is_some());
    }
}
