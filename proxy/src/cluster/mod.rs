//! A cluster as the daemon runs it: its config, its backends with their pools and metrics, and
//! each user's SCRAM verifier, computed once at start so a login costs no key derivation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use sqlswitch_config::{Cluster as ClusterConfig, Role};

use crate::backend::BackendError;
use crate::conn::mysql::MyConn;
use crate::conn::pg::BackendConn;
use crate::metrics::{BackendMetrics, ClusterMetrics, Registry};
use crate::pool::{Pool, PoolKey};
use crate::replication::{Clock, ControlTarget, Health};
use crate::route;

mod backend;
mod discovery;
mod store;
mod users;
pub use backend::Backend;
pub use discovery::{Discovery, Problem};
pub use store::{Boxed, Local, RoutingStore};
pub use users::{users_of, User, Verifier};

/// Maintenance mode of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Normal operation.
    ReadWrite,
    /// Reads go on; writes get the read-only error at once.
    ReadOnly,
}

/// Whether a backend takes new work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    /// In rotation.
    Enabled,
    /// No new work; sessions move off at their next transaction boundary.
    Draining,
    /// Taken out of the config by a reload: no new work, ever (its index stays reserved).
    Removed,
}

pub use crate::gate::Gate;
/// Most backends a cluster can have, including those added by reloads (the config's limit).
pub use sqlswitch_config::MAX_BACKENDS;

/// A cluster's backends, append-only: an index, once handed out, names the same backend for the
/// life of the daemon, so sessions and routing tables can hold indexes while a reload adds
/// backends. Reads take no lock.
pub struct Backends {
    slots: Box<[std::sync::OnceLock<Backend>]>,
    len: AtomicUsize,
    grow: std::sync::Mutex<()>,
}

impl Backends {
    fn new(list: Vec<Backend>) -> Self {
        let slots: Box<[std::sync::OnceLock<Backend>]> =
            (0..MAX_BACKENDS).map(|_| std::sync::OnceLock::new()).collect();
        let len = list.len().min(MAX_BACKENDS);
        for (slot, b) in slots.iter().zip(list) {
            let _ = slot.set(b);
        }
        Self { slots, len: AtomicUsize::new(len), grow: std::sync::Mutex::new(()) }
    }

    /// How many backends there are (removed ones included).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Backend `i`, if there is one.
    pub fn at(&self, i: usize) -> Option<&Backend> {
        self.slots.get(i).and_then(std::sync::OnceLock::get)
    }

    /// Every backend, in index order.
    pub fn iter(&self) -> impl Iterator<Item = &Backend> {
        self.slots.get(..self.len()).unwrap_or_default().iter().filter_map(std::sync::OnceLock::get)
    }

    /// Appends a backend; its index, or `None` when the cluster is full.
    pub fn push(&self, b: Backend) -> Option<usize> {
        let _guard = self.grow.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = self.len();
        self.slots.get(n)?.set(b).ok()?;
        self.len.store(n + 1, Ordering::Release);
        Some(n)
    }
}

impl std::ops::Index<usize> for Backends {
    type Output = Backend;

    /// Indexes come only from this list (the routing table, sessions' connections), so they are
    /// always in range.
    fn index(&self, i: usize) -> &Backend {
        match self.slots.get(i).and_then(std::sync::OnceLock::get) {
            Some(b) => b,
            None => unreachable!("backend index {i} was never handed out"),
        }
    }
}

impl<'a> IntoIterator for &'a Backends {
    type Item = &'a Backend;
    type IntoIter = Box<dyn Iterator<Item = &'a Backend> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// The routing table: an immutable value, replaced whole (one `ArcSwap` store, a new
/// generation) by every change, and read once per routing decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingTable {
    /// Bumped by every change.
    pub generation: u64,
    /// Index of the primary backend.
    pub primary: usize,
    /// Maintenance mode.
    pub mode: Mode,
    /// `ctl detach`: the cluster serves without its primary (`primary = "none"`) until
    /// `ctl attach`.
    pub detached: bool,
    /// Per backend, in config order.
    pub states: Vec<BackendState>,
    /// Per backend: share of reads (reloadable).
    pub weights: Vec<u32>,
    /// `max_replica_lag` in micros (reloadable).
    pub max_lag: u64,
    /// Since when (clock micros) the primary's group has been active: a replica position
    /// sampled before it may miss writes the previous group's primary acknowledged, and serves
    /// no read. 0 for the group that started active.
    pub since: u64,
}

impl RoutingTable {
    /// Whether backend `i` is the primary.
    pub fn is_primary(&self, i: usize) -> bool {
        self.primary == i
    }

    /// Backend `i`'s share of reads (0 for one this table does not list yet).
    pub fn weight(&self, i: usize) -> u32 {
        self.weights.get(i).copied().unwrap_or(0)
    }

    /// Whether backend `i` takes new work.
    pub fn enabled(&self, i: usize) -> bool {
        self.states.get(i).is_some_and(|s| *s == BackendState::Enabled)
    }

    /// A copy with the next generation, for a change.
    pub fn next(&self) -> Self {
        Self { generation: self.generation + 1, ..self.clone() }
    }
}

/// Statement texts a replica refused as "not on a standby" (an unlogged table, a view that
/// writes): they go to the primary from then on. Empty, it costs a routing decision one
/// relaxed load.
#[derive(Debug, Default)]
pub struct PrimaryOnly {
    any: std::sync::atomic::AtomicBool,
    texts: std::sync::RwLock<std::collections::HashSet<u64>>,
}

impl PrimaryOnly {
    /// Most texts remembered; past it, no more are (they are corrected again at run time).
    const MAX: usize = 10_000;

    fn hash(text: &str) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut h);
        h.finish()
    }

    /// `text` runs on the primary from now on.
    pub fn remember(&self, text: &str) {
        let mut texts = self.texts.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if texts.len() < Self::MAX {
            texts.insert(Self::hash(text));
            self.any.store(true, Ordering::Relaxed);
        }
    }

    /// Whether `text` was remembered.
    pub fn contains(&self, text: &str) -> bool {
        self.any.load(Ordering::Relaxed)
            && self.texts.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&Self::hash(text))
    }
}

/// An admin command or a change of the cluster failed; the text is for the operator.
pub type Failure = String;

/// Applies `edit` to a copy of the table with the next generation, and stores it by
/// compare-and-swap: when another change landed meanwhile (a reload racing a switchover), the
/// edit is applied again to that one, so no change is lost. An edit that changes nothing keeps
/// the table and its generation (a reload of an unchanged file, a second `mode read-only`).
///
/// A change of primary deposes the old one: the monitor never follows it again until it
/// streams from a primary, or an operator re-admits it (`rejoin`).
pub fn change(cluster: &Cluster, edit: impl Fn(&mut RoutingTable)) -> Arc<RoutingTable> {
    let mut stored = None;
    let mut was = None;
    cluster.table.rcu(|current| {
        let mut next = current.next();
        edit(&mut next);
        let unchanged = (RoutingTable { generation: current.generation, ..next.clone() }) == **current;
        let next = if unchanged { Arc::clone(current) } else { Arc::new(next) };
        was = Some(current.primary);
        stored = Some(Arc::clone(&next));
        next
    });
    let table = stored.unwrap_or_else(|| cluster.table.load_full());
    if let Some(old) = was.filter(|old| *old != table.primary) {
        if let Some(b) = cluster.backends.at(old) {
            b.health.deposed.store(true, Ordering::Relaxed);
            tracing::info!(event = "deposed", cluster = %cluster.config.name, backend = %b.name,
                "the old primary is deposed: it is not followed again until it streams from the new one or `rejoin` re-admits it");
        }
        if let Some(b) = cluster.backends.at(table.primary) {
            b.health.deposed.store(false, Ordering::Relaxed);
        }
    }
    cluster.export();
    table
}

/// A cluster at run time.
pub struct Cluster {
    /// Its config.
    pub config: ClusterConfig,
    /// Backends, in config order, then those added by reloads.
    pub backends: Backends,
    /// Users by name; replaced whole by a reload.
    pub users: ArcSwap<HashMap<String, Arc<User>>>,
    /// Users looked up through `auth_user`, briefly.
    pub looked_up: users::LookedUp,
    /// A verifier that matches no password, used for unknown users so that a login attempt
    /// does not reveal which user names exist.
    pub decoy: Verifier,
    /// Metrics handles.
    pub metrics: ClusterMetrics,
    /// Statement latency by target role.
    pub latency: Arc<crate::metrics::Latency>,
    /// The time base of lag and read-your-writes.
    pub clock: Clock,
    /// The routing table.
    pub table: ArcSwap<RoutingTable>,
    /// Holds new work during `pause` and switchover.
    pub gate: Gate,
    /// MySQL client connection ids, for `KILL`.
    pub mysql_threads: Arc<crate::threads::Registry>,
    /// The MariaDB extended capabilities every server reached so far offered (see
    /// [`Cluster::servers_ext`]); `u32::MAX` until one was reached.
    mysql_ext: AtomicU32,
    /// Client-facing TLS, when configured; replaced by a reload.
    pub tls: arc_swap::ArcSwapOption<tokio_rustls::TlsAcceptor>,
    /// TLS to the backends, when configured.
    pub backend_tls: arc_swap::ArcSwapOption<crate::tls::BackendTls>,
    /// Reads a replica refused as not runnable on a standby: primary-only from then on.
    pub primary_only: PrimaryOnly,
    /// Held by whatever changes who the primary is (a switchover, the monitor following the
    /// servers): one such change at a time.
    pub changing: tokio::sync::Mutex<()>,
    /// The running switchover's steps so far, for a second one that is refused.
    pub progress: std::sync::Mutex<String>,
    /// What the servers last said about their roles.
    pub discovery: std::sync::Mutex<Discovery>,
    /// Group names, indexed by [`Backend::group_id`]; a reload may add one.
    pub groups: std::sync::Mutex<Vec<String>>,
    /// Fleet mode: the cluster's link to the fleet's shared routing in etcd, through which
    /// every routing change goes ([`Cluster::store`]).
    pub fleet: std::sync::OnceLock<Arc<dyn RoutingStore>>,
    /// Places for client connections under `max_client_connections` (see [`Admitted`]).
    clients: tokio::sync::Semaphore,
}

/// A client connection counted under its cluster's `max_client_connections`, and the cluster it
/// belongs to: dropping it gives the place back. One pointer, where a cluster and a semaphore
/// permit were three: a session's future holds it for the session's whole life.
pub struct Admitted(Arc<Cluster>);

impl Admitted {
    /// Takes a place for a new client connection; `None` when the cluster has none left.
    pub fn new(cluster: &Arc<Cluster>) -> Option<Self> {
        cluster.clients.try_acquire().ok()?.forget();
        Some(Self(Arc::clone(cluster)))
    }
}

impl std::ops::Deref for Admitted {
    type Target = Arc<Cluster>;

    fn deref(&self) -> &Arc<Cluster> {
        &self.0
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.clients.add_permits(1);
    }
}

impl Cluster {
    /// A MySQL server offered MariaDB extended capabilities `ext` in its handshake (0: a MySQL
    /// server, which has none).
    pub fn servers_offer(&self, ext: u32) {
        self.mysql_ext.fetch_and(ext, Ordering::Relaxed);
    }

    /// The MariaDB extended capabilities sqlswitch offers its clients: those it relays that
    /// every server reached so far offered (none before the first was reached), so a client's
    /// choice holds on whichever server its session uses.
    pub fn servers_ext(&self) -> u32 {
        match self.mysql_ext.load(Ordering::Relaxed) {
            u32::MAX => 0,
            ext => ext & sqlswitch_protocol::mysql::caps::ext::OFFERED,
        }
    }

    /// Where the cluster's changes of primary are decided: the fleet in fleet mode, else this
    /// instance alone.
    pub fn store(&self) -> Arc<dyn RoutingStore> {
        match self.fleet.get() {
            Some(store) => Arc::clone(store),
            None => Arc::new(Local),
        }
    }

    /// What a checkout of a backend connection for `user`'s session respects.
    pub fn limits(&self, user: &str) -> crate::pool::Limits {
        let per_key = match self.config.pool_mode_of(user) {
            sqlswitch_config::PoolMode::Transaction => self.config.pool_size,
            sqlswitch_config::PoolMode::Session => 0,
        };
        crate::pool::Limits {
            max_open: self.config.max_backend_connections,
            wait: self.config.connect_timeout,
            per_key,
            shuffle: self.config.pool_shuffle && per_key > 0,
        }
    }

    /// Why sessions cannot use the primary now, if they cannot: the operator detached it or set
    /// `mode read-only`, or the monitor has not reached it for a second. Sessions then log in
    /// on replicas, read from them, and every write is refused at once (read-only error).
    pub fn maintenance(&self) -> Option<&'static str> {
        let table = self.table.load();
        if table.detached {
            return Some("the cluster runs without its primary (detached)");
        }
        if table.mode == Mode::ReadOnly {
            return Some("the cluster is in read-only maintenance mode");
        }
        let away = self.backends.at(table.primary).is_some_and(|b| b.health.away.load(Ordering::Relaxed));
        (self.config.monitor.is_some() && away).then_some("the primary is unreachable")
    }

    /// Where a control connection (monitor, switchover) to backend `i` goes; `None` without
    /// `monitor` credentials (or no such backend).
    pub fn control_target(&self, i: usize) -> Option<ControlTarget<'_>> {
        let b = self.backends.at(i)?;
        Some(ControlTarget {
            protocol: self.config.protocol,
            address: &b.address,
            monitor: self.config.monitor.as_ref()?,
            tls: self.backend_tls.load_full(),
            timeout: self.config.connect_timeout,
            metrics: &b.metrics,
        })
    }

    /// The index of group `name`, numbered now if it is new (a reload adding a group).
    pub fn group_id(&self, name: &str) -> usize {
        let mut groups = self.groups.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        groups.iter().position(|g| g == name).unwrap_or_else(|| {
            groups.push(name.to_owned());
            groups.len() - 1
        })
    }

    /// The group the primary is in: the one that serves.
    pub fn active_group(&self, table: &RoutingTable) -> usize {
        self.backends.at(table.primary).map_or(0, |b| b.group_id)
    }

    /// Whether backend `i` is in the serving group.
    pub fn in_active_group(&self, table: &RoutingTable, i: usize) -> bool {
        self.backends.at(i).is_some_and(|b| b.group_id == self.active_group(table))
    }

    /// Sets the gauges that describe the routing table and the backends' health (the monitor
    /// calls it after each round of checks; a change of the table, after it stores one).
    pub fn export(&self) {
        let table = self.table.load();
        let m = &self.metrics;
        m.generation.set(table.generation as f64);
        m.read_only_mode.set(if table.mode == Mode::ReadOnly { 1.0 } else { 0.0 });
        m.maintenance.set(if self.maintenance().is_some() { 1.0 } else { 0.0 });
        m.max_lag.set(table.max_lag as f64 / 1e6);
        let now = self.clock.now();
        for (i, b) in self.backends.iter().enumerate() {
            let Some(h) = &b.metrics.health else { continue };
            h.up.set(if b.health.is_up() { 1.0 } else { 0.0 });
            let role = if table.is_primary(i) {
                0
            } else if self.in_active_group(&table, i) {
                1
            } else {
                2
            };
            for (r, gauge) in h.role.iter().enumerate() {
                gauge.set(if r == role { 1.0 } else { 0.0 });
            }
            let lag = b.health.lag_micros.load(Ordering::Relaxed);
            let lag = match lag {
                _ if table.is_primary(i) => 0.0,
                u64::MAX => f64::INFINITY,
                micros => micros as f64 / 1e6,
            };
            h.lag_seconds.set(lag);
            h.lag_bytes.set(if table.is_primary(i) { 0.0 } else { b.health.lag_bytes.load(Ordering::Relaxed) as f64 });
            let seen = b.health.seen_at.load(Ordering::Relaxed);
            h.last_seen.set(if seen == 0 { f64::INFINITY } else { now.saturating_sub(seen) as f64 / 1e6 });
        }
    }

    /// Builds the run-time cluster from validated config.
    pub fn new(config: ClusterConfig, registry: &Registry) -> Arc<Self> {
        let groups: Vec<String> = config.groups().into_iter().map(str::to_owned).collect();
        let group_of = |b: &sqlswitch_config::Backend| groups.iter().position(|g| *g == b.group).unwrap_or(0);
        let backends =
            Backends::new(config.backends.iter().map(|b| Backend::new(&config, b, group_of(b), registry)).collect());
        let users = ArcSwap::from_pointee(users_of(&config, None));
        let decoy_password: [u8; 16] = rand::random();
        let metrics = registry.cluster(&config.name);
        metrics.generation.set(1.0);
        metrics.max_lag.set(config.max_replica_lag.as_secs_f64());
        let gate = Gate::with_metrics(metrics.held.clone(), metrics.hold_seconds.clone());
        Arc::new(Self {
            latency: registry.latency(&config.name),
            metrics,
            clock: Clock::default(),
            table: ArcSwap::from_pointee(RoutingTable {
                generation: 1,
                primary: config.primary_index(),
                mode: Mode::ReadWrite,
                detached: false,
                states: vec![BackendState::Enabled; config.backends.len()],
                weights: config.backends.iter().map(|b| b.weight).collect(),
                max_lag: u64::try_from(config.max_replica_lag.as_micros()).unwrap_or(u64::MAX),
                since: 0,
            }),
            groups: std::sync::Mutex::new(groups),
            fleet: std::sync::OnceLock::new(),
            gate,
            changing: tokio::sync::Mutex::new(()),
            progress: std::sync::Mutex::new(String::new()),
            discovery: std::sync::Mutex::new(Discovery::default()),
            mysql_threads: Arc::default(),
            looked_up: users::LookedUp::default(),
            mysql_ext: AtomicU32::new(u32::MAX),
            clients: tokio::sync::Semaphore::new(config.max_client_connections),
            tls: arc_swap::ArcSwapOption::empty(),
            backend_tls: arc_swap::ArcSwapOption::empty(),
            primary_only: PrimaryOnly::default(),
            decoy: Verifier::new(&format!("{decoy_password:?}")),
            backends,
            users,
            config,
        })
    }

    /// Whether `[cluster.tls]` refuses clients that do not use TLS.
    pub fn tls_required(&self) -> bool {
        self.config.tls.as_ref().is_some_and(|t| t.required)
    }

    /// Logs a session refused because no backend would take its login, and returns the text
    /// a client gets when no backend could be reached (a server's own refusal is relayed as it
    /// is).
    pub fn no_session(&self, e: &BackendError) -> String {
        // The backends refusing a user the proxy accepted is a configuration mismatch to see.
        tracing::warn!(error = %e, fault = ?e.fault(), "no session: the backend login failed");
        format!("no backend of cluster {:?} is reachable: {e}", self.config.name)
    }

    /// Routes a batch: one load of the routing table, a view of every backend (health, role,
    /// weight, lag) and [`route::route`]. Also returns the primary's index from that same table.
    pub fn route(&self, batch: &route::Batch, session: &route::SessionView) -> (route::Target, route::Reason, usize) {
        const MAX_VIEWS: usize = MAX_BACKENDS;
        let rt = self.table.load();
        let monitored = self.config.monitor.is_some();
        let active = self.active_group(&rt);
        let mut views =
            [route::BackendView { replica: false, up: false, weight: 0, caught_up_to: 0, lag: u64::MAX }; MAX_VIEWS];
        for (i, (view, b)) in views.iter_mut().zip(self.backends.iter()).enumerate() {
            // Only the primary's group serves: another group is a cluster on its own.
            let serves = rt.enabled(i) && (rt.is_primary(i) || b.group_id == active);
            *view = if monitored {
                // A position sampled before this group became active proves nothing.
                let caught_up_to = b.health.caught_up_to.load(Ordering::Relaxed);
                let trusted = caught_up_to >= rt.since;
                route::BackendView {
                    replica: !rt.is_primary(i),
                    up: serves && if rt.is_primary(i) { b.health.is_up() } else { b.health.serves_reads() },
                    weight: rt.weight(i),
                    caught_up_to: if trusted { caught_up_to } else { 0 },
                    lag: if trusted { b.health.lag_micros.load(Ordering::Relaxed) } else { u64::MAX },
                }
            } else {
                // Unmonitored: nothing is known of lag, so only read-only sessions use replicas.
                let fresh = if session.read_only { u64::MAX } else { 0 };
                route::BackendView {
                    replica: !rt.is_primary(i),
                    up: serves,
                    weight: rt.weight(i),
                    caught_up_to: fresh,
                    lag: 0,
                }
            };
        }
        let table = route::Table {
            backends: views.get(..self.backends.len().min(MAX_VIEWS)).unwrap_or_default(),
            max_lag: rt.max_lag,
        };
        let (target, reason) = route::route(batch, session, &table, rand::random());
        (target, reason, rt.primary)
    }

    /// Backends to try for a session's first connection, best first: the primary for
    /// read-write sessions; healthy replicas in weighted random order, then the primary, for
    /// read-only ones.
    pub fn candidates(&self, read_only: bool) -> Vec<usize> {
        let table = self.table.load();
        let primary = table.primary;
        if !read_only {
            return vec![primary];
        }
        let active = self.active_group(&table);
        let mut replicas: Vec<(f64, usize)> = self
            .backends
            .iter()
            .enumerate()
            .filter(|(i, b)| *i != primary && b.group_id == active && table.weight(*i) > 0 && table.enabled(*i))
            // With a monitor, only replicas it has seen answer; without one, every replica.
            .filter(|(_, b)| self.config.monitor.is_none() || b.health.serves_reads())
            .map(|(i, _)| {
                // Weighted shuffle (Efraimidis-Spirakis): sort by u^(1/w), largest first.
                let u: f64 = rand::random::<f64>().max(f64::MIN_POSITIVE);
                (u.powf(1.0 / f64::from(table.weight(i).max(1))), i)
            })
            .collect();
        replicas.sort_by(|a, b| b.0.total_cmp(&a.0));
        replicas.into_iter().map(|(_, i)| i).chain(std::iter::once(primary)).collect()
    }
}
