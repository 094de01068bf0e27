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
//! Health and selection are apart so that a reload can change the strategy without losing
//! health: one pingora [`HealthRegistry`] holds the health check and is run by the health
//! service ([`crate::health`]), and the selector is a pingora load balancer over a view of that
//! registry, swapped whole ([`BackendSet::set_selector`]) when its configuration changes.
//! [`BackendSet::reconcile`] makes the members match a configuration file in one rebuild.
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
use pingora_load_balancing::discovery::ServiceDiscovery;
use pingora_load_balancing::health_check::HealthCheck;
use pingora_load_balancing::selection::{BackendIter, BackendSelection};
use pingora_load_balancing::{Backend, Backends, HealthRegistry, LoadBalancer as Pool};

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

/// What [`BackendSet::reconcile`] changed.
#[derive(Debug, Default)]
pub struct SetDiff {
    /// Ids of the backends added.
    pub added: Vec<String>,
    /// Ids of the backends whose weight changed.
    pub reweighted: Vec<String>,
    /// Backends replaced by a new one with the same id (its URL, capacity or tags changed):
    /// the old state, whose requests in flight finish.
    pub replaced: Vec<Arc<BackendState>>,
    /// Backends removed: their state, whose requests in flight finish.
    pub removed: Vec<Arc<BackendState>>,
}

impl SetDiff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.reweighted.is_empty()
            && self.replaced.is_empty()
            && self.removed.is_empty()
    }

    /// The states that left the set (removed or replaced).
    pub fn gone(&self) -> impl Iterator<Item = &Arc<BackendState>> {
        self.removed.iter().chain(&self.replaced)
    }
}

/// The one owner of the list of backends (see the module docs).
pub struct BackendSet<S: BackendSelection> {
    members: Members,
    registry: Arc<HealthRegistry>,
    pool: ArcSwap<Pool<S>>,
    /// The selector's configuration, to build a new pool when pingora's would keep stale
    /// backends (see [`Self::reconcile`]).
    selector: ArcSwap<S::Config>,
    /// One rebuild at a time; guards the breaker settings new backends get.
    rebuild: tokio::sync::Mutex<Option<BreakerSettings>>,
}

impl<S> BackendSet<S>
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
    S::Config: Clone,
{
    /// An empty set whose selector is built with `config`, checked by `health` when given
    /// (run by a service over [`Self::health_registry`]), and whose backends each get a
    /// circuit breaker with `breaker` settings when given.
    pub fn new(
        config: S::Config,
        health: Option<Box<dyn HealthCheck + Send + Sync + 'static>>,
        breaker: Option<BreakerSettings>,
    ) -> Self {
        let members: Members = Arc::default();
        let registry = Arc::new(HealthRegistry::new());
        if let Some(check) = health {
            registry.set_health_check(check);
        }
        let pool = pool_over(&members, &registry, config.clone());
        Self {
            members,
            registry,
            pool: ArcSwap::from_pointee(pool),
            selector: ArcSwap::from_pointee(config),
            rebuild: tokio::sync::Mutex::new(breaker),
        }
    }

    /// Pingora's health registry of this set: a health service runs its checks.
    pub fn health_registry(&self) -> &Arc<HealthRegistry> {
        &self.registry
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
        self.pool.load().select_with(key, max_iterations, accept)
    }

    /// Adds a validated backend; its id and address must be new. It takes traffic from the next
    /// request on.
    pub async fn add(&self, spec: BackendSpec) -> Result<Arc<BackendState>, SetError> {
        let breaker = self.rebuild.lock().await;
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
        let state = BackendState::new(spec, *breaker);
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

    /// Makes the members named in `specs` match them, and removes the members named in
    /// `retire` that `specs` leaves out; other members (added through the API) stay. In one
    /// rebuild: a new id is added, a changed weight is set, a changed URL, capacity or tags
    /// replaces the backend (draining carried over), a retired one leaves the selector at once
    /// while its requests in flight finish. The order of the members is kept, new ones last.
    /// Nothing changes when the result would have two backends at one address.
    ///
    /// A backend replaced at the same address and weight is the same member to pingora (its
    /// `Backend` identity ignores the state in `ext`), which would then keep selecting the old,
    /// draining state; so a reconcile that replaces builds a new selector over the members.
    pub async fn reconcile(
        &self,
        specs: Vec<BackendSpec>,
        retire: &[String],
    ) -> Result<SetDiff, SetError> {
        let breaker = self.rebuild.lock().await;
        let current = self.members.load_full();
        let mut wanted: HashMap<String, BackendSpec> = specs
            .iter()
            .map(|s| (s.id().to_string(), s.clone()))
            .collect();
        let mut diff = SetDiff::default();
        let mut reweigh = Vec::new();
        let mut next = Vec::with_capacity(current.len() + specs.len());
        for member in current.iter() {
            match wanted.remove(member.id()) {
                Some(spec) if member.runs(&spec) => {
                    if member.weight() != spec.server().weight {
                        let weight = Weight::new(spec.server().weight).map_err(|error| {
                            SetError::Invalid {
                                id: member.id().to_string(),
                                error,
                            }
                        })?;
                        reweigh.push((member.clone(), weight));
                    }
                    next.push(member.clone());
                }
                Some(spec) => {
                    let state = BackendState::new(spec, *breaker);
                    state.set_draining(member.is_draining());
                    diff.replaced.push(member.clone());
                    next.push(state);
                }
                None if retire.iter().any(|id| id == member.id()) => {
                    diff.removed.push(member.clone())
                }
                None => next.push(member.clone()),
            }
        }
        for spec in specs {
            if let Some(spec) = wanted.remove(spec.id()) {
                diff.added.push(spec.id().to_string());
                next.push(BackendState::new(spec, *breaker));
            }
        }
        unique_addresses(&next)?;
        for (member, weight) in reweigh {
            member.set_weight(weight);
            diff.reweighted.push(member.id().to_string());
        }
        for gone in diff.gone() {
            gone.set_draining(true);
        }
        if diff.is_empty() {
            return Ok(diff);
        }
        self.members.store(Arc::new(next));
        if diff.replaced.is_empty() {
            self.publish().await?;
        } else {
            self.rebuild_pool().await?;
        }
        Ok(diff)
    }

    /// Gives every member, and every backend added from now on, a circuit breaker with
    /// `settings` (or none). Breakers keep their state under new thresholds.
    pub async fn set_breakers(&self, settings: Option<BreakerSettings>) {
        let mut breaker = self.rebuild.lock().await;
        *breaker = settings;
        for member in self.members.load().iter() {
            member.set_breaker(settings);
        }
    }

    /// Replaces the selector by one built with `config` (another strategy): requests select
    /// through the new one as soon as it is built over the current members. Health is kept:
    /// it lives in the registry and in each backend's state.
    pub async fn set_selector(&self, config: S::Config) -> Result<(), SetError> {
        let _one_at_a_time = self.rebuild.lock().await;
        self.selector.store(Arc::new(config));
        self.rebuild_pool().await
    }

    /// Builds a new pool (pingora backends and selector) over the members, then publishes it.
    /// The caller holds the rebuild lock.
    async fn rebuild_pool(&self) -> Result<(), SetError> {
        let config = S::Config::clone(&self.selector.load());
        let pool = pool_over(&self.members, &self.registry, config);
        pool.update().await.map_err(SetError::Rebuild)?;
        self.pool.store(Arc::new(pool));
        Ok(())
    }

    /// Rebuilds pingora's backend set and selector from the members. The caller holds the
    /// rebuild lock.
    async fn publish(&self) -> Result<(), SetError> {
        self.pool.load().update().await.map_err(SetError::Rebuild)
    }
}

/// A pingora load balancer selecting with `config` over the members, its health from
/// `registry`.
fn pool_over<S>(members: &Members, registry: &Arc<HealthRegistry>, config: S::Config) -> Pool<S>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    let view = Backends::new_with_health_registry(
        Box::new(MemberDiscovery(members.clone())),
        registry.clone(),
    );
    Pool::from_backends_with_config(view, Some(config))
}

/// Refuses a member list with two backends at one address.
fn unique_addresses(members: &[Arc<BackendState>]) -> Result<(), SetError> {
    let mut seen: HashMap<SocketAddr, &str> = HashMap::with_capacity(members.len());
    for m in members {
        if let Some(existing) = seen.insert(m.addr, m.id()) {
            return Err(SetError::DuplicateAddress {
                id: m.id().to_string(),
                addr: m.addr,
                existing: existing.to_string(),
            });
        }
    }
    Ok(())
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
mod tests;
