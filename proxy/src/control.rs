//! The operations behind the admin commands (README, "Admin commands"): status, pause and
//! resume, maintenance mode, drain and enable. Every change builds a new routing table and
//! stores it whole; the switchover is in [`crate::switchover`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster::{BackendState, Cluster, Mode, RoutingTable};

/// The daemon's clusters, as the admin socket sees them.
pub struct Control {
    clusters: Vec<Arc<Cluster>>,
    /// The running config and the file it came from (for `reload`).
    running: std::sync::Mutex<(Option<std::path::PathBuf>, sqlswitch_config::Config)>,
    /// For the metrics of backends a reload adds.
    registry: Arc<crate::metrics::Registry>,
}

pub use crate::cluster::{change, Failure};
pub use crate::metrics::millis;

impl Control {
    /// Control over `clusters`.
    pub fn new(
        clusters: Vec<Arc<Cluster>>,
        config: sqlswitch_config::Config,
        registry: Arc<crate::metrics::Registry>,
    ) -> Arc<Self> {
        Arc::new(Self { clusters, running: std::sync::Mutex::new((None, config)), registry })
    }

    /// Where `reload` reads the config from.
    pub fn set_config_path(&self, path: std::path::PathBuf) {
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0 = Some(path);
    }

    /// Re-reads the config file and applies what can change live, without dropping sessions:
    /// replica weights, `max_replica_lag`, users and `read_only_users`. Any other difference
    /// (clusters, listeners, backends, limits) cannot apply live: the reload is refused with the
    /// reason, and the running config stays.
    ///
    /// # Errors
    /// No config file known, the file is invalid, or it changes what cannot change live.
    pub fn reload(&self) -> Result<Value, Failure> {
        let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let path = running.0.clone().ok_or("reload: this daemon was not started from a config file")?;
        let new = sqlswitch_config::Config::load(&path)
            .map_err(|e| format!("reload refused, the running config stays: {e}"))?;
        let old = &running.1;
        let mut refused = Vec::new();
        if new.admin != old.admin || new.shutdown_grace != old.shutdown_grace {
            refused.push("[admin] and shutdown_grace".to_owned());
        }
        let names = |c: &sqlswitch_config::Config| c.clusters.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        if names(&new) != names(old) {
            refused.push("clusters were added, removed or reordered".to_owned());
        }
        for ((o, n), cluster) in old.clusters.iter().zip(&new.clusters).zip(&self.clusters) {
            // Backends: existing ones keep their address; new ones join as replicas; the
            // primary stays.
            // A new group (the new cluster of an upgrade) may join with its own primary.
            let primary = &cluster.backends[cluster.table.load().primary].name;
            let active = &cluster.backends[cluster.table.load().primary].group;
            for nb in &n.backends {
                match cluster.backends.iter().find(|b| b.name == nb.name) {
                    Some(b) if b.address != nb.address => {
                        refused.push(format!("cluster {:?}: backend {:?} changed address (remove it and add a new one)", o.name, nb.name));
                    }
                    Some(b) if b.group != nb.group => refused.push(format!(
                        "cluster {:?}: backend {:?} changed group {:?} -> {:?} (remove it and add it back under a new name)",
                        o.name, nb.name, b.group, nb.group
                    )),
                    None if nb.role == sqlswitch_config::Role::Primary && nb.group == *active => refused.push(format!(
                        "cluster {:?}: new backend {:?} cannot join the serving group {active:?} as its primary \
                         (add it as a replica, then switch over)",
                        o.name, nb.name
                    )),
                    _ => {}
                }
            }
            if !n.backends.iter().any(|b| &b.name == primary) {
                refused.push(format!(
                    "cluster {:?}: {primary:?} is the primary and cannot be removed (switch over first)",
                    o.name
                ));
            }
            // A session's pool mode is fixed when it starts from the config it started under.
            for u in n.users.iter().filter(|u| n.pool_mode_of(&u.name) != o.pool_mode_of(&u.name)) {
                refused
                    .push(format!("cluster {:?}: user {:?} would change pool_mode (needs a restart)", o.name, u.name));
            }
            // Everything else but the reloadable keys must be the same.
            let mut same = n.clone();
            same.users.clone_from(&o.users);
            same.read_only_users.clone_from(&o.read_only_users);
            same.max_replica_lag = o.max_replica_lag;
            same.backends.clone_from(&o.backends);
            if same != *o {
                refused.push(format!(
                    "cluster {:?}: only backends, weights, max_replica_lag, users and read_only_users apply live \
                     (listeners and limits need a restart)",
                    o.name
                ));
            }
        }
        // Certificates are read again, so a rotated certificate or key applies without a restart.
        let mut acceptors = Vec::new();
        for n in &new.clusters {
            match n.tls.as_ref().map(|t| crate::tls::acceptor(t, n.protocol)) {
                Some(Ok(a)) => acceptors.push(Some(Arc::new(a))),
                Some(Err(e)) => refused.push(format!("cluster {:?}: {e}", n.name)),
                None => acceptors.push(None),
            }
        }
        if !refused.is_empty() {
            return Err(format!("reload refused, the running config stays: {}", refused.join("; ")));
        }
        for (cluster, acceptor) in self.clusters.iter().zip(acceptors) {
            cluster.tls.store(acceptor);
        }
        let mut applied = Vec::new();
        for ((cluster, n), o) in self.clusters.iter().zip(&new.clusters).zip(&old.clusters) {
            let mut changes = user_changes(o, n);
            let users = crate::cluster::users_of(n, Some(&cluster.users.load()));
            cluster.users.store(Arc::new(users));
            // New backends first, so the table below can name them.
            let mut indexes = Vec::with_capacity(n.backends.len());
            for nb in &n.backends {
                let index = match cluster.backends.iter().position(|b| b.name == nb.name) {
                    Some(i) => i,
                    None => {
                        changes.push(format!(
                            "backend {} added ({}, weight {}, group {})",
                            nb.name, nb.address, nb.weight, nb.group
                        ));
                        let group = cluster.group_id(&nb.group);
                        let backend = crate::cluster::Backend::new(n, nb, group, &self.registry);
                        cluster.backends.push(backend).ok_or_else(|| {
                            format!("reload: cluster {:?} is full ({} backends)", n.name, crate::cluster::MAX_BACKENDS)
                        })?
                    }
                };
                indexes.push((index, nb.weight));
            }
            let count = cluster.backends.len();
            let before = cluster.table.load_full();
            for (i, b) in cluster.backends.iter().enumerate() {
                let was = before.states.get(i).copied();
                let was_live = was.is_some_and(|s| s != BackendState::Removed);
                match indexes.iter().find(|(j, _)| *j == i) {
                    None if was_live => changes.push(format!("backend {} removed", b.name)),
                    Some(_) if was == Some(BackendState::Removed) => {
                        changes.push(format!("backend {} added back", b.name))
                    }
                    Some(&(_, w)) if was_live && before.weight(i) != w => {
                        changes.push(format!("backend {} weight {} -> {w}", b.name, before.weight(i)));
                    }
                    _ => {}
                }
            }
            if o.max_replica_lag != n.max_replica_lag {
                changes.push(format!(
                    "max_replica_lag {} -> {}",
                    humantime::format_duration(o.max_replica_lag),
                    humantime::format_duration(n.max_replica_lag)
                ));
            }
            if n.tls.is_some() {
                changes.push("TLS certificate and key read again".to_owned());
            }
            let table = change(cluster, |t| {
                t.states.resize(count, BackendState::Enabled);
                t.weights.resize(count, 0);
                for (i, state) in t.states.iter_mut().enumerate() {
                    match indexes.iter().find(|(j, _)| *j == i) {
                        Some(_) if *state == BackendState::Removed => *state = BackendState::Enabled,
                        Some(_) => {}
                        None => *state = BackendState::Removed,
                    }
                }
                for &(i, w) in &indexes {
                    if let Some(weight) = t.weights.get_mut(i) {
                        *weight = w;
                    }
                }
                t.max_lag = u64::try_from(n.max_replica_lag.as_micros()).unwrap_or(u64::MAX);
            });
            applied.push(json!({ "cluster": n.name, "generation": table.generation, "changes": changes }));
        }
        tracing::info!(event = "reload", file = %path.display(), changes = %serde_json::Value::Array(applied.clone()), "config reloaded");
        running.1 = new;
        Ok(json!({ "ok": true, "reloaded": applied }))
    }

    /// Fleet mode: `name`'s link to the fleet (the fleet tests drive a change's phases through
    /// it); `None` outside fleet mode or for no such cluster.
    pub fn fleet_link(&self, name: &str) -> Option<Arc<crate::fleet::Link>> {
        crate::fleet::link_of(self.cluster(name).ok()?)
    }

    /// The cluster called `name`.
    ///
    /// # Errors
    /// No such cluster.
    pub fn cluster(&self, name: &str) -> Result<&Arc<Cluster>, Failure> {
        self.clusters.iter().find(|c| c.config.name == name).ok_or_else(|| format!("no cluster named {name:?}"))
    }

    /// Index of the backend called `name` in `cluster`.
    ///
    /// # Errors
    /// No such backend.
    pub fn backend(cluster: &Cluster, name: &str) -> Result<usize, Failure> {
        cluster
            .backends
            .iter()
            .position(|b| b.name == name)
            .ok_or_else(|| format!("cluster {:?} has no backend named {name:?}", cluster.config.name))
    }

    /// Every cluster: mode, generation, primary, and per backend its role, state, lag,
    /// sessions and statements.
    pub fn status(&self) -> Value {
        let clusters: Vec<Value> = self.clusters.iter().map(|c| cluster_status(c)).collect();
        json!({ "ok": true, "clusters": clusters })
    }

    /// Holds every new transaction of `name` at its boundary until `resume` or `timeout`.
    ///
    /// # Errors
    /// No such cluster.
    pub fn pause(self: &Arc<Self>, name: &str, timeout: Duration) -> Result<Value, Failure> {
        let cluster = Arc::clone(self.cluster(name)?);
        // Per cluster: a pause or resume of another cluster leaves this pause's timer alone.
        let generation = cluster.gate.pause_generation.fetch_add(1, Ordering::SeqCst) + 1;
        cluster.gate.set(|h| h.all = true);
        let timed = Arc::clone(&cluster);
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            if timed.gate.pause_generation.load(Ordering::SeqCst) == generation {
                timed.gate.set(|h| h.all = false);
                tracing::warn!(event = "resumed", cluster = %timed.config.name, ?timeout, "pause timed out; resumed");
            }
        });
        tracing::info!(event = "paused", cluster = %name, ?timeout, "paused");
        Ok(json!({
            "ok": true,
            "cluster": name,
            "paused": true,
            "timeout_ms": millis(timeout),
            "in_flight": cluster.gate.primary_busy.load(Ordering::SeqCst),
        }))
    }

    /// Releases what `pause` held.
    ///
    /// # Errors
    /// No such cluster.
    pub fn resume(&self, name: &str) -> Result<Value, Failure> {
        let cluster = self.cluster(name)?;
        cluster.gate.pause_generation.fetch_add(1, Ordering::SeqCst);
        cluster.gate.set(|h| h.all = false);
        tracing::info!(event = "resumed", cluster = %name, "resumed");
        Ok(json!({ "ok": true, "cluster": name, "paused": false }))
    }

    /// Maintenance mode: `read-only` or `read-write`.
    ///
    /// # Errors
    /// No such cluster, an unknown mode, or (fleet mode) etcd not reached.
    pub async fn mode(&self, name: &str, mode: &str) -> Result<Value, Failure> {
        let cluster = self.cluster(name)?;
        let mode = match mode {
            "read-only" => Mode::ReadOnly,
            "read-write" => Mode::ReadWrite,
            other => return Err(format!("unknown mode {other:?}: use read-only or read-write")),
        };
        let word = mode_name(mode);
        let (table, fleet) = everywhere(cluster, |t| t.mode = mode, |d| d.mode = word.to_owned()).await?;
        tracing::info!(event = "mode_change", cluster = %name, mode = word, generation = table.generation, "mode changed");
        Ok(json!({ "ok": true, "cluster": name, "mode": word, "generation": table.generation, "fleet": fleet }))
    }

    /// `detach`: the cluster serves without its primary (`primary = "none"`): sessions log in
    /// on replicas, read from them, and every write is refused at once; `attach` undoes it.
    ///
    /// # Errors
    /// No such cluster, or (fleet mode) etcd not reached.
    pub async fn detach(&self, name: &str, detached: bool) -> Result<Value, Failure> {
        let cluster = self.cluster(name)?;
        let (table, fleet) = everywhere(cluster, |t| t.detached = detached, |d| d.detached = detached).await?;
        let word = if detached { "detached" } else { "attached" };
        tracing::info!(event = "primary_attachment", cluster = %name, state = word, generation = table.generation, "primary {word}");
        let primary = if detached { "none" } else { cluster.backends[table.primary].name.as_str() };
        Ok(json!({ "ok": true, "cluster": name, "primary": primary, "generation": table.generation, "fleet": fleet }))
    }

    /// Stops routing new work to a backend (or brings it back).
    ///
    /// # Errors
    /// No such cluster or backend, draining the primary, or (fleet mode) etcd not reached.
    pub async fn set_enabled(&self, name: &str, backend: &str, enabled: bool) -> Result<Value, Failure> {
        let cluster = self.cluster(name)?;
        let i = Self::backend(cluster, backend)?;
        if !enabled && cluster.table.load().is_primary(i) {
            return Err(format!("{backend:?} is the primary of {name:?}: switch over to another backend first"));
        }
        if cluster.table.load().states.get(i) == Some(&BackendState::Removed) {
            return Err(format!("{backend:?} was removed from the config; add it back and reload"));
        }
        let state = if enabled { BackendState::Enabled } else { BackendState::Draining };
        let local = |t: &mut RoutingTable| {
            if let Some(s) = t.states.get_mut(i) {
                *s = state;
            }
        };
        let shared = |d: &mut crate::fleet::Routing| {
            d.draining.retain(|b| b != backend);
            if !enabled {
                d.draining.push(backend.to_owned());
            }
        };
        let (table, fleet) = everywhere(cluster, local, shared).await?;
        let word = if enabled { "enabled" } else { "draining" };
        tracing::info!(event = "backend_state", cluster = %name, backend, state = word, generation = table.generation, "backend state changed");
        Ok(
            json!({ "ok": true, "cluster": name, "backend": backend, "state": word, "generation": table.generation, "fleet": fleet }),
        )
    }
}

/// A routing change an operator asked for: made here, or (fleet mode) published to the fleet
/// and waited for on every instance; the fleet's part of the answer (`null` without one).
async fn everywhere(
    cluster: &Cluster,
    local: impl Fn(&mut RoutingTable),
    shared: impl Fn(&mut crate::fleet::Routing) + Send,
) -> Result<(Arc<RoutingTable>, Value), Failure> {
    match crate::fleet::link_of(cluster) {
        Some(link) => {
            let fleet = link.change(shared).await?;
            Ok((cluster.table.load_full(), fleet))
        }
        None => Ok((change(cluster, local), Value::Null)),
    }
}

impl Control {
    /// `rejoin CLUSTER BACKEND`: the operator re-admits a deposed primary (its history is the
    /// current primary's: rewound, or never diverged), so the monitor may follow it again.
    ///
    /// # Errors
    /// No such cluster or backend.
    pub fn rejoin(&self, name: &str, backend: &str) -> Result<Value, Failure> {
        let cluster = self.cluster(name)?;
        let b = &cluster.backends[Self::backend(cluster, backend)?];
        let was = b.health.deposed.swap(false, Ordering::Relaxed);
        tracing::info!(event = "rejoin", cluster = %name, backend = %backend, was_deposed = was, "re-admitted by the operator");
        Ok(json!({ "ok": true, "cluster": name, "backend": backend, "was_deposed": was }))
    }

    /// `fleet-resolve CLUSTER BACKEND`: ends a stuck published change of primary (fleet mode).
    ///
    /// # Errors
    /// No such cluster or backend, no fleet, no change published, or etcd not reached.
    pub async fn fleet_resolve(&self, name: &str, backend: &str) -> Result<Value, Failure> {
        let cluster = self.cluster(name)?;
        let i = Self::backend(cluster, backend)?;
        let link = crate::fleet::link_of(cluster).ok_or_else(|| format!("cluster {name:?} is not in fleet mode"))?;
        link.resolve(i).await
    }

    /// `unfence CLUSTER BACKEND`: lifts a fence (PostgreSQL `default_transaction_read_only`,
    /// MariaDB/MySQL `read_only`) left on a server, as after a crash between a switchover's
    /// fence and its promotion: the servers then say none takes writes, and this is the way
    /// back. Refused for a replica (unfenced, it would be a second writable server) and for a
    /// deposed primary (`rejoin` it first, once its history is the primary's).
    ///
    /// # Errors
    /// No such cluster or backend, no monitor credentials, the server not reached, a replica,
    /// a deposed primary, or the fence still in force at the deadline.
    pub async fn unfence(&self, name: &str, backend: &str) -> Result<Value, Failure> {
        let cluster = self.cluster(name)?;
        let i = Self::backend(cluster, backend)?;
        if cluster.backends[i].health.deposed.load(Ordering::Relaxed) {
            return Err(format!(
                "{backend} is a deposed primary: unfenced it would take writes nobody routes to it; if its history \
                 is the current primary's, `rejoin {name} {backend}` first"
            ));
        }
        let to = cluster.control_target(i).ok_or("the cluster has no monitor credentials")?;
        let dialect = crate::replication::Dialect::of(cluster.config.protocol);
        let deadline = std::time::Instant::now() + cluster.config.connect_timeout;
        let mut conn = crate::replication::within(deadline, async {
            crate::replication::ControlConn::connect(&to, "sqlswitch-unfence").await.map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("{backend}: {e}"))?;
        let role = crate::replication::within(deadline, conn.role(dialect)).await?;
        if role == crate::replication::Role::Replica {
            return Err(format!("{backend} is a replica: it keeps its read-only setting"));
        }
        crate::replication::within(deadline, conn.exec_all(dialect.unfence))
            .await
            .map_err(|e| format!("{backend}: {e}"))?;
        crate::replication::in_force(&mut conn, dialect, false, deadline)
            .await
            .map_err(|e| format!("{backend}: {e}"))?;
        tracing::info!(event = "unfenced", cluster = %name, backend = %backend, "fence lifted by the operator");
        Ok(json!({ "ok": true, "cluster": name, "backend": backend, "was": role.name(), "fenced": false }))
    }
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::ReadWrite => "read-write",
        Mode::ReadOnly => "read-only",
    }
}

fn cluster_status(c: &Cluster) -> Value {
    let table = c.table.load();
    let hold = c.gate.hold();
    let discovery = c.discovery.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let backends: Vec<Value> = c
        .backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let primary = table.is_primary(i);
            let state = if table.states.get(i) == Some(&BackendState::Removed) {
                "removed"
            } else if !table.enabled(i) {
                "draining"
            } else if table.weight(i) == 0 && !primary {
                "disabled"
            } else if b.health.is_up() || (c.config.monitor.is_none()) {
                "up"
            } else {
                "down"
            };
            let lag = b.health.lag_micros.load(Ordering::Relaxed);
            json!({
                "name": b.name,
                "address": b.address,
                "role": if primary { "primary" } else if c.in_active_group(&table, i) { "replica" } else { "inactive" },
                "group": b.group,
                "server_says": discovery.roles.get(i),
                // A replaced primary, never followed again until it streams or `rejoin`.
                "deposed": b.health.deposed.load(Ordering::Relaxed),
                "state": state,
                "weight": table.weight(i),
                "lag_ms": (!primary && lag != u64::MAX).then_some(lag / 1000),
                "lag_bytes": if primary { 0 } else { b.health.lag_bytes.load(Ordering::Relaxed) },
                "sessions": b.sessions.load(Ordering::Relaxed),
                "queries": b.queries.load(Ordering::Relaxed),
                "idle_connections": b.idle_count(),
                "open_connections": b.open_count(),
                "waiting_clients": b.waiting(),
                "latency_buckets": c.latency.backend_buckets(i),
            })
        })
        .collect();
    json!({
        "name": c.config.name,
        "protocol": match c.config.protocol { sqlswitch_config::Protocol::Postgres => "postgres", sqlswitch_config::Protocol::Mysql => "mysql" },
        "mode": mode_name(table.mode),
        "generation": table.generation,
        "primary": c.backends[table.primary].name,
        "primary_problem": discovery.problem.as_ref().map(ToString::to_string),
        "detached": table.detached,
        "maintenance": c.maintenance(),
        "primary_away_ms": c.backends.at(table.primary).map_or(0, |b| b.health.away_micros(&c.clock) / 1000),
        "paused": hold.all,
        "holding_primary": hold.primary,
        "primary_busy": c.gate.primary_busy.load(Ordering::SeqCst),
        "held_total": c.gate.held_total.load(Ordering::Relaxed),
        "held_now": c.gate.held_now.load(Ordering::Relaxed),
        "latency_bounds_ms": crate::metrics::latency_bounds_ms(),
        "fleet": c.store().status(),
        "backends": backends,
    })
}

/// What a reload changes in a cluster's users: added, removed, new passwords, and who is
/// read-only. Names only, never passwords.
fn user_changes(old: &sqlswitch_config::Cluster, new: &sqlswitch_config::Cluster) -> Vec<String> {
    let mut changes = Vec::new();
    for u in &new.users {
        match old.users.iter().find(|o| o.name == u.name) {
            None => changes.push(format!("user {} added", u.name)),
            Some(o) if o.secret() != u.secret() => changes.push(format!("user {} has a new password", u.name)),
            Some(_) => {}
        }
    }
    for o in old.users.iter().filter(|o| !new.users.iter().any(|u| u.name == o.name)) {
        changes.push(format!("user {} removed (its open sessions go on)", o.name));
    }
    if old.read_only_users != new.read_only_users {
        changes.push(format!("read_only_users = {:?} (new sessions)", new.read_only_users));
    }
    changes
}
