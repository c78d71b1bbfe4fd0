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

    /// Follows the servers: the config's `role` is a starting hint, the servers are the truth.
    /// Every backend is asked what it is ([`Role`]), all at once. When exactly one takes writes
    /// and follows no other, it is the primary: a switchover or failover that happened while
    /// sqlswitch was down, or one made by other tooling (Patroni, repmgr, orchestrator, by
    /// hand) while it runs, is followed. When none or several do, the routing table stays as it
    /// is, and `status`, the log and the metrics say why ("no primary", "split brain"): never a
    /// guess. The servers are asked without holding the cluster's change lock (an unreachable
    /// one may take `connect_timeout`); the answers are acted on only if no switchover or
    /// other change happened meanwhile.
    async fn follow_the_servers(&mut self) {
        let cluster = Arc::clone(&self.cluster);
        if cluster.changing.try_lock().is_err() {
            return; // a switchover or failover runs: it changes the primary itself
        }
        let dialect = Dialect::of(cluster.config.protocol);
        let table = cluster.table.load_full();
        let current = table.primary;
        // The connections stay open for the monitor's own checks that follow.
        self.conns.resize_with(cluster.backends.len(), || None);
        let live = |i: usize| table.states.get(i).is_some_and(|s| *s != crate::cluster::BackendState::Removed);
        let asks = self.conns.iter_mut().enumerate().map(|(i, slot)| {
            let cluster = &cluster;
            async move {
                if !live(i) {
                    return Err("removed".to_owned());
                }
                let conn = connected(slot, cluster, i).await.map_err(|e| e.text)?;
                let answer = tokio::time::timeout(cluster.config.connect_timeout, conn.role(dialect)).await;
                let answer = answer.unwrap_or(Err("timed out".into()));
                if answer.is_err() {
                    *slot = None;
                }
                answer
            }
        });
        let answers = futures::future::join_all(asks).await;
        let name = |i: usize| cluster.backends.at(i).map_or("?", |b| b.name.as_str()).to_owned();
        let mut writable = Vec::new();
        // Writable servers of other groups (a new cluster whose subscription was disabled).
        let mut elsewhere = Vec::new();
        let mut roles = Vec::new();
        let mut answered = Vec::new();
        for (i, answer) in answers.into_iter().enumerate() {
            answered.push(answer.is_ok());
            match answer {
                Ok(role) => {
                    // A logical subscriber is an upgrade target, not a second primary; once a
                    // switchover made it the primary, it is the one that takes writes. Another
                    // group's servers are another cluster: they never count.
                    let ours = matches!(role, Role::Subscriber | Role::Stopped) && i == current;
                    let serving = cluster.in_active_group(&table, i);
                    if serving && (role == Role::Writable || ours) {
                        writable.push(i);
                    } else if !serving && role == Role::Writable {
                        elsewhere.push(i);
                    }
                    if let Some(b) = cluster.backends.at(i) {
                        b.health.follows_none.store(role != Role::Replica, Ordering::Relaxed);
                        if role == Role::Replica && b.health.deposed.swap(false, Ordering::Relaxed) {
                            info!(event = "rejoined", cluster = %cluster.config.name, backend = %b.name,
                                "a deposed primary streams from a primary again: it may be followed again");
                        }
                    }
                    roles.push(role.name().to_owned());
                }
                Err(e) => roles.push(format!("unknown: {e}")),
            }
        }
        let unknown: Vec<String> = roles
            .iter()
            .zip(&answered)
            .enumerate()
            .filter(|(_, (_, ok))| !**ok)
            .map(|(i, (r, _))| format!("{}: {r}", name(i)))
            .collect();
        // Act only on answers that still describe the table: a change that landed while they
        // were asked (a switchover) makes them stale.
        let Ok(_changing) = cluster.changing.try_lock() else { return };
        if cluster.table.load().generation != table.generation {
            return;
        }
        // The serving group has no writable server and every one of it answered (a fenced old
        // primary after an upgrade cutover, when sqlswitch restarts with the old group listed
        // first), and exactly one server of another group takes writes: that group serves.
        let group_answered = answered.iter().enumerate().all(|(i, ok)| *ok || !cluster.in_active_group(&table, i));
        if let ([], [only], true) = (writable.as_slice(), elsewhere.as_slice(), group_answered) {
            let only = *only;
            let since = cluster.clock.now();
            let table = match cluster.fleet.get() {
                // The fleet follows together (the group's activation time is set as it applies).
                Some(link) => {
                    link.follow(current, only).await;
                    cluster.table.load_full()
                }
                None => crate::control::change(&cluster, |t| {
                    t.primary = only;
                    t.since = since;
                }),
            };
            cluster.metrics.role_changes.increment(1);
            info!(
                event = "role_change",
                cluster = %cluster.config.name,
                primary = %name(only),
                group = %cluster.backends[only].group,
                was = %name(current),
                generation = table.generation,
                "no server of the serving group takes writes and one of another group does (an upgrade cutover \
                 done before a restart): that group serves now"
            );
            writable.push(only);
        }
        let current = cluster.table.load().primary;
        // Deposed primaries are never followed: their history may have diverged.
        let deposed = |i: &usize| cluster.backends.at(*i).is_some_and(|b| b.health.deposed.load(Ordering::Relaxed));
        let (stale, writable): (Vec<usize>, Vec<usize>) = writable.into_iter().partition(deposed);
        // Another server is followed only when the primary is known not to take writes (it
        // answered: fenced, or a replica now), or has been silent for several rounds.
        let primary_answered = answered.get(current).copied().unwrap_or(false);
        self.silent_rounds = if primary_answered { 0 } else { self.silent_rounds.saturating_add(1) };
        // A silent primary may have acknowledged writes: another server is followed only if it
        // replayed the primary's last sample (`failover` accepts a loss; following never does).
        let covers = |i: usize| {
            let last = self.acknowledged.get(cluster.backends[i].group_id).and_then(Option::as_ref);
            match (last, self.replayed.get(i).and_then(Option::as_ref)) {
                (None, _) => true,
                // PostgreSQL: a standby that lost its primary streams nothing (timeline 0 in
                // its samples): its WAL position alone says what it has of the old timeline.
                (Some(last), Some(pos)) if !dialect.whole_records => pos.total() >= last.total(),
                (Some(last), Some(pos)) => pos.covers(last),
                (Some(_), None) => false,
            }
        };
        let problem = match writable.as_slice() {
            [only] if *only == current && stale.is_empty() => None,
            [only] if *only == current => Some(Problem::Deposed(stale.iter().map(|i| name(*i)).collect())),
            [only] if !primary_answered && self.silent_rounds < SILENT_ROUNDS => {
                Some(Problem::Waiting { candidate: name(*only), lacks_writes: false })
            }
            [only] if !primary_answered && !covers(*only) => {
                Some(Problem::Waiting { candidate: name(*only), lacks_writes: true })
            }
            [only] => {
                let only = *only;
                let table = match cluster.fleet.get() {
                    Some(link) => {
                        link.follow(current, only).await;
                        cluster.table.load_full()
                    }
                    None => crate::control::change(&cluster, |t| t.primary = only),
                };
                cluster.metrics.role_changes.increment(1);
                info!(
                    event = "role_change",
                    cluster = %cluster.config.name,
                    primary = %name(only),
                    was = %name(current),
                    generation = table.generation,
                    unanswered = ?unknown,
                    "the servers say another backend is the primary (it alone takes writes): following them"
                );
                None
            }
            [] if !stale.is_empty() => Some(Problem::OnlyDeposed(stale.iter().map(|i| name(*i)).collect())),
            // The primary did not answer the monitor (down, or the monitor cannot log in).
            [] if !answered.get(current).copied().unwrap_or(false) => Some(Problem::PrimaryUnknown(name(current))),
            [] => Some(Problem::NoPrimary),
            several => Some(Problem::SplitBrain(several.iter().map(|i| name(*i)).collect())),
        };
        // While the servers disagree, primary work waits (and is refused after a while): never
        // a write on a server that may not be the primary.
        let doubt = problem.as_ref().is_some_and(Problem::holds);
        let mut seen = cluster.discovery.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if problem.is_some() && problem != seen.problem {
            warn!(
                event = "primary_doubt",
                cluster = %cluster.config.name,
                primary = %name(cluster.table.load().primary),
                unanswered = ?unknown,
                primary_work_waits = doubt,
                "{}: the routing table stays as it is",
                problem.as_ref().map(ToString::to_string).unwrap_or_default()
            );
        } else if problem.is_none() && seen.problem.is_some() {
            info!(event = "primary_agreed", cluster = %cluster.config.name, primary = %name(cluster.table.load().primary), "exactly one backend takes writes again");
        }
        if cluster.gate.hold().doubt != doubt {
            cluster.gate.set(|h| h.doubt = doubt);
        }
        cluster.metrics.primary_known.set(if writable.len() == 1 { 1.0 } else { 0.0 });
        cluster.metrics.split_brain.set(if writable.len() > 1 { 1.0 } else { 0.0 });
        seen.roles = roles;
        seen.problem = problem;
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
                group.push(t, newest.clone());
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
