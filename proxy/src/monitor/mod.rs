//! Health, lag and read-your-writes bookkeeping (README, "Routing"). One task per cluster
//! polls every backend as the `monitor` user: the primary's `pg_current_wal_insert_lsn()` and each
//! replica's `pg_last_wal_replay_lsn()`. Each primary sample is `(t, lsn)`, with `t` taken
//! before the query was sent, so every write acknowledged before `t` is at or below `lsn`. A
//! replica that has replayed `lsn` is therefore *caught up to t*. Sessions compare that against
//! the time their last write was acknowledged: no query of their own, no extra round trip.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::{Cluster, Problem};
use crate::replication::{ControlConn, Dialect, Position, Role};

mod roles;

/// Primary samples `(t, position)`, oldest first; enough for a minute at the default interval.
#[derive(Default)]
struct Samples(VecDeque<(u64, Position)>);

impl Samples {
    const KEEP: usize = 1024;

    fn push(&mut self, t: u64, pos: Position) {
        if self.0.len() == Self::KEEP {
            self.0.pop_front();
        }
        self.0.push_back((t, pos));
    }

    /// The newest sample time whose position `replayed` covers; 0 when none does.
    fn caught_up_to(&self, replayed: &Position) -> u64 {
        self.0.iter().rev().find(|(_, pos)| replayed.covers(pos)).map_or(0, |(t, _)| *t)
    }
}

/// The monitor of one cluster: a connection per backend and, per group, its primary's recent
/// samples. Positions are compared only within a group: another group is another cluster
/// (the new one of an upgrade), whose positions are unrelated numbers.
pub struct Monitor {
    cluster: Arc<Cluster>,
    conns: Vec<Option<ControlConn>>,
    /// Per group.
    samples: Vec<Samples>,
    /// Per group: the backend last seen as its primary.
    heads: Vec<Option<usize>>,
    /// The group that served at the last check.
    active: usize,
    ticks: u32,
    /// Consecutive role rounds in which the routing table's primary did not answer.
    silent_rounds: u32,
    /// Per backend: the last position it replayed as a replica (kept once it stops being
    /// one): what of the primary's history it has, when it is a candidate to follow.
    replayed: Vec<Option<Position>>,
    /// Per group: the last position its primary itself answered (never one of the samples that
    /// stand in for a primary that is away).
    acknowledged: Vec<Option<Position>>,
}

/// Every this many checks the monitor updates the health gauges ([`Cluster::export`]).
const EXPORT_EVERY: u32 = 10;

/// Every this many checks the monitor asks every backend its role, even when the primary
/// answered (a replica promoted by hand while the primary runs: split brain). When the primary
/// does not answer with a position, it asks at once.
const ROLE_EVERY: u32 = 10;

/// How many consecutive role rounds the primary must stay silent before another server that
/// takes writes is followed (when the primary answers as fenced, it is followed at once).
const SILENT_ROUNDS: u32 = 10;

impl Monitor {
    /// A monitor for `cluster`; `None` when the cluster has no `monitor` credentials.
    pub fn new(cluster: Arc<Cluster>) -> Option<Self> {
        cluster.config.monitor.as_ref()?;
        let conns = cluster.backends.iter().map(|_| None).collect();
        let active = cluster.active_group(&cluster.table.load());
        Some(Self {
            cluster,
            conns,
            samples: Vec::new(),
            heads: Vec::new(),
            active,
            ticks: 0,
            silent_rounds: 0,
            replayed: Vec::new(),
            acknowledged: Vec::new(),
        })
    }

    /// The primary of each group, as far as the monitor knows: the serving one's is the routing
    /// table's; another's is the one it last saw serve, or the config's `role = "primary"`.
    fn update_heads(&mut self, primary: usize) {
        let cluster = &self.cluster;
        let groups = cluster.groups.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len();
        self.heads.resize(groups, None);
        self.samples.resize_with(groups, Samples::default);
        let active = cluster.backends[primary].group_id;
        if let Some(head) = self.heads.get_mut(active) {
            *head = Some(primary);
        }
        if active != self.active {
            // A group that becomes active starts a new history: its samples from before the
            // switch do not cover what the previous group's primary acknowledged.
            if let Some(samples) = self.samples.get_mut(active) {
                samples.0.clear();
            }
            self.active = active;
        }
        for (g, head) in self.heads.iter_mut().enumerate() {
            if head.is_none() {
                *head =
                    cluster.backends.iter().position(|b| b.group_id == g && b.role == sqlswitch_config::Role::Primary);
            }
        }
    }

    /// The first checks, before the daemon listens: quick rounds (for at most about a second)
    /// until every replica that answers has replayed some primary sample, so the first sessions
    /// can use it. With asynchronous commit a replica trails the primary's write position by up
    /// to `wal_writer_delay` even when idle.
    pub async fn warm_up(&mut self) {
        self.follow_the_servers().await;
        for _ in 0..50 {
            self.tick().await;
            let table = self.cluster.table.load();
            let pending = self.cluster.backends.iter().enumerate().any(|(i, b)| {
                i != table.primary
                    && self.cluster.in_active_group(&table, i)
                    && b.health.is_up()
                    && b.health.caught_up_to.load(Ordering::Relaxed) == 0
            });
            if !pending {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.cluster.export();
    }

    /// Polls every `interval` until `shutdown`.
    pub async fn run(mut self, interval: Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => self.tick().await,
            }
        }
    }

    /// Checks every backend once: the primary first, so replicas compare against a fresh
    /// sample; then the replicas at the same time, so one that hangs delays no other.
    pub async fn tick(&mut self) {
        self.ticks = self.ticks.wrapping_add(1);
        if self.probe_positions().await || self.ticks.is_multiple_of(ROLE_EVERY) {
            self.follow_the_servers().await;
        }
        // The gauges a scrape reads (every few seconds at most): once a second is enough, and
        // costs the monitor's loop less than every check.
        if self.ticks.is_multiple_of(EXPORT_EVERY) {
            self.cluster.export();
        }
    }

    /// Reads every backend's position; returns whether the primary did not answer with one
    /// (down, or no longer a primary).
    async fn probe_positions(&mut self) -> bool {
        let cluster = Arc::clone(&self.cluster);
        let table = cluster.table.load();
        let primary = table.primary;
        self.update_heads(primary);
        let heads = &self.heads;
        let active = cluster.backends[primary].group_id;
        // A reload may have added backends.
        self.conns.resize_with(cluster.backends.len(), || None);
        let mut conns = std::mem::take(&mut self.conns);
        let t = cluster.clock.now();
        let live = |i: usize| table.states.get(i).is_some_and(|s| *s != crate::cluster::BackendState::Removed);
        let kind = |i: usize| {
            if i == primary {
                Probe::Primary
            } else if heads.contains(&Some(i)) {
                Probe::Head
            } else {
                Probe::Replica
            }
        };
        // Every group's primary first, so replicas compare against a fresh sample.
        let firsts =
            conns.iter_mut().enumerate().filter(|(i, _)| live(*i) && kind(*i) != Probe::Replica).map(|(i, conn)| {
                let cluster = &cluster;
                async move { probe(cluster, i, kind(i), conn).await.map(|pos| (i, pos)) }
            });
        let samples: Vec<(usize, Position)> = futures::future::join_all(firsts).await.into_iter().flatten().collect();
        let mut primary_answered = false;
        let dialect = Dialect::of(cluster.config.protocol);
        for (i, pos) in samples {
            let g = cluster.backends[i].group_id;
            primary_answered |= i == primary;
            // A primary sample stands for the end of its last whole record, where a replica stops.
            let pos = dialect.at_record_boundary(pos);
            if self.acknowledged.len() <= g {
                self.acknowledged.resize(g + 1, None);
            }
            if let Some(last) = self.acknowledged.get_mut(g) {
                *last = Some(pos.clone());
            }
            if let Some(group) = self.samples.get_mut(g) {
                group.push(t, pos);
            }
            cluster.backends[i].health.caught_up_to.store(t, Ordering::Relaxed);
        }
        // When the replicas were asked: a primary that does not answer (frozen, cut off) takes
        // up to `connect_timeout` above, and a sample between replicas stamped before that
        // wait would make the freshest of them look that far behind.
        let asked = cluster.clock.now();
        let replicas =
            conns.iter_mut().enumerate().filter(|(i, _)| live(*i) && kind(*i) == Probe::Replica).map(|(i, conn)| {
                let cluster = &cluster;
                async move { probe(cluster, i, Probe::Replica, conn).await.map(|pos| (i, pos)) }
            });
        let replayed: Vec<(usize, Position)> =
            futures::future::join_all(replicas).await.into_iter().flatten().collect();
        let away = !primary_answered
            && cluster.backends[primary].health.away_micros(&cluster.clock) >= crate::replication::PRIMARY_AWAY;
        if !primary_answered && (away || cluster.maintenance().is_some()) {
            // Without a primary, freshness is measured between replicas: the most advanced one
            // stands for the primary, so replicas keep serving reads for as long as it is away.
            // Only while no write can reach it through sqlswitch (unreachable past
            // PRIMARY_AWAY, or detached): a primary that answers sessions but not the monitor
            // (its login refused) may be taking writes, and then no replica counts as fresh
            // for a session that wrote: freshness never fails open.
            let newest = replayed.iter().filter(|(i, _)| cluster.backends[*i].group_id == active);
            if let (Some((_, newest)), Some(group)) =
                (newest.max_by_key(|(_, pos)| pos.total()), self.samples.get_mut(active))
            {
                group.push(asked, newest.clone());
            }
        }
        self.replayed.resize(cluster.backends.len(), None);
        for (i, pos) in &replayed {
            if let Some(slot) = self.replayed.get_mut(*i) {
                *slot = Some(pos.clone());
            }
            let Some(samples) = self.samples.get(cluster.backends[*i].group_id) else { continue };
            let newest = samples.0.back().map_or(0, |(_, p)| p.total());
            let health = &cluster.backends[*i].health;
            let caught_up_to = samples.caught_up_to(pos);
            health.lag_bytes.store(newest.saturating_sub(pos.total()), Ordering::Relaxed);
            health.caught_up_to.store(caught_up_to, Ordering::Relaxed);
            let lag = if caught_up_to == 0 { u64::MAX } else { cluster.clock.now().saturating_sub(caught_up_to) };
            health.lag_micros.store(lag, Ordering::Relaxed);
        }
        // Maintenance begins only now that the replicas were measured without the primary.
        cluster.backends[primary].health.away.store(away, Ordering::Relaxed);
        self.conns = conns;
        !primary_answered
    }
}

/// What a backend is checked as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    /// The serving primary: its write position.
    Primary,
    /// Another group's primary: its own position, whether it is writable (a logical
    /// subscriber) or a standby itself.
    Head,
    /// A replica: what it has replayed.
    Replica,
}

/// Checks backend `i` (the primary, or a replica) and updates its `up` flag; returns its
/// position (WAL for PostgreSQL, GTID sequence for MariaDB). A PostgreSQL replica that is not in
/// recovery (a fenced old primary) answers NULL: down.
async fn probe(cluster: &Cluster, i: usize, kind: Probe, conn: &mut Option<ControlConn>) -> Option<Position> {
    let backend = &cluster.backends[i];
    let dialect = Dialect::of(cluster.config.protocol);
    let [primary, replica, head] = dialect.sampled;
    let sql = match kind {
        Probe::Primary => primary,
        Probe::Head => head,
        Probe::Replica => replica,
    };
    let result = check(conn, cluster, i, sql).await;
    let health = &backend.health;
    let was_up = health.up.load(Ordering::Relaxed);
    let first_check = !health.checked.swap(true, Ordering::Relaxed);
    let unreachable = matches!(&result, Err(e) if e.unreachable);
    match result.as_deref().map(dialect.parse_sampled) {
        Ok(Some(pos)) => {
            health.lsn.store(pos.total(), Ordering::Relaxed);
            health.seen_at.store(cluster.clock.now(), Ordering::Relaxed);
            health.up.store(true, Ordering::Relaxed);
            health.down_since.store(0, Ordering::Relaxed);
            health.away.store(false, Ordering::Relaxed);
            health.failed.store(false, Ordering::Relaxed);
            if !was_up {
                info!(event = "backend_up", cluster = %cluster.config.name, backend = %backend.name, "backend is up");
            }
            Some(pos)
        }
        other => {
            if was_up || first_check {
                let why = match other {
                    Err(e) => e.text.clone(),
                    Ok(_) => "no comparable position (not a replica: a fenced old primary?)".to_owned(),
                };
                warn!(event = "backend_down", cluster = %cluster.config.name, backend = %backend.name, error = %why, "backend is down");
            }
            health.up.store(false, Ordering::Relaxed);
            // Away only when it cannot be reached: a server that answers (refusing the monitor's
            // login, or a query) is there, and its sessions may still use it.
            if !unreachable {
                health.down_since.store(0, Ordering::Relaxed);
                health.away.store(false, Ordering::Relaxed);
            } else if health.down_since.load(Ordering::Relaxed) == 0 {
                health.down_since.store(cluster.clock.now().max(1), Ordering::Relaxed);
            }
            *conn = None;
            None
        }
    }
}

/// Why a check failed, and whether the server could not be reached at all (network, down,
/// timed out), as opposed to answering with a refusal (a wrong monitor password, a query it
/// cannot run): only the first makes a primary "away" ([`Cluster::maintenance`]).
struct CheckError {
    text: String,
    unreachable: bool,
}

impl From<&str> for CheckError {
    fn from(text: &str) -> Self {
        Self { text: text.to_owned(), unreachable: false }
    }
}

impl From<crate::backend::BackendError> for CheckError {
    fn from(e: crate::backend::BackendError) -> Self {
        let unreachable = e.fault() == crate::backend::Fault::Backend;
        Self { text: e.to_string(), unreachable }
    }
}

/// The monitor's control connection to backend `i`, opened when there is none.
async fn connected<'c>(
    conn: &'c mut Option<ControlConn>,
    cluster: &Cluster,
    i: usize,
) -> Result<&'c mut ControlConn, CheckError> {
    if conn.is_none() {
        let to = cluster.control_target(i).ok_or("no monitor credentials")?;
        let opened = ControlConn::connect(&to, "sqlswitch-monitor").await?;
        if let ControlConn::My(c) = &opened {
            cluster.servers_offer(c.server_ext);
        }
        *conn = Some(opened);
    }
    conn.as_mut().ok_or_else(|| "no connection".into())
}

async fn check(conn: &mut Option<ControlConn>, cluster: &Cluster, i: usize, sql: &str) -> Result<String, CheckError> {
    let timeout = cluster.config.connect_timeout;
    let rows = tokio::time::timeout(timeout, connected(conn, cluster, i).await?.exec(sql)).await;
    let rows = rows.map_err(|_| CheckError { text: "timed out".to_owned(), unreachable: true })??;
    rows.into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
        .ok_or_else(|| "no position: not a replica (a fenced old primary?)".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::parse_gtid;

    #[test]
    fn caught_up_to_is_the_newest_sample_replayed() {
        let mut s = Samples(VecDeque::new());
        let at = Position::scalar;
        s.push(100, at(10));
        s.push(200, at(20));
        s.push(300, at(20));
        s.push(400, at(35));
        assert_eq!(s.caught_up_to(&at(5)), 0);
        assert_eq!(s.caught_up_to(&at(10)), 100);
        assert_eq!(s.caught_up_to(&at(25)), 300, "an idle primary keeps replicas caught up");
        assert_eq!(s.caught_up_to(&at(35)), 400);
        // Two domains: caught up only to the newest sample covered in both.
        let mut m = Samples(VecDeque::new());
        let g = |t: &str| parse_gtid(t).unwrap_or_default();
        m.push(100, g("0-1-10,1-1-10"));
        m.push(200, g("0-1-20,1-1-10"));
        m.push(300, g("0-1-20,1-1-20"));
        assert_eq!(m.caught_up_to(&g("0-1-25,1-1-15")), 200);
        assert_eq!(m.caught_up_to(&g("0-1-15,1-1-25")), 100);
        assert_eq!(m.caught_up_to(&g("0-1-5,1-1-25")), 0);
    }
}
