//! Health, lag and read-your-writes bookkeeping (PRODUCT.md section 5). One task per cluster
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

use crate::cluster::Cluster;
use crate::replication::{ControlConn, Dialect, Position};

/// Primary samples `(t, position)`, oldest first; enough for a minute at the default interval.
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

/// The monitor of one cluster: a connection per backend and the primary's recent samples.
pub struct Monitor {
    cluster: Arc<Cluster>,
    conns: Vec<Option<ControlConn>>,
    samples: Samples,
}

impl Monitor {
    /// A monitor for `cluster`; `None` when the cluster has no `monitor` credentials.
    pub fn new(cluster: Arc<Cluster>) -> Option<Self> {
        cluster.config.monitor.as_ref()?;
        let conns = cluster.backends.iter().map(|_| None).collect();
        Some(Self { cluster, conns, samples: Samples(VecDeque::new()) })
    }

    /// The first checks, before the daemon listens: quick rounds (for at most about a second)
    /// until every replica that answers has replayed some primary sample, so the first sessions
    /// can use it. With asynchronous commit a replica trails the primary's write position by up
    /// to `wal_writer_delay` even when idle.
    pub async fn warm_up(&mut self) {
        self.follow_the_servers().await;
        for _ in 0..50 {
            self.tick().await;
            let primary = self.cluster.table.load().primary;
            let pending =
                self.cluster.backends.iter().enumerate().any(|(i, b)| {
                    i != primary && b.health.is_up() && b.health.caught_up_to.load(Ordering::Relaxed) == 0
                });
            if !pending {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Before serving: the config's `role` is a starting hint, the servers are the truth. When
    /// the configured primary does not take writes (a switchover or a failover happened while
    /// sqlswitch was down, or since the file was written) and exactly one other backend does,
    /// that one is the primary. When none or several do, the config stands and the log says
    /// why: never a guess.
    async fn follow_the_servers(&mut self) {
        let cluster = Arc::clone(&self.cluster);
        let dialect = Dialect::of(cluster.config.protocol);
        let configured = cluster.table.load().primary;
        // The connections stay open for the monitor's own checks that follow.
        self.conns.resize_with(cluster.backends.len(), || None);
        let asks = self.conns.iter_mut().enumerate().map(|(i, slot)| {
            let cluster = &cluster;
            async move {
                if slot.is_none() {
                    let to = cluster.control_target(i).ok_or("no monitor credentials")?;
                    *slot = Some(ControlConn::connect(&to, "sqlswitch-monitor").await.map_err(|e| e.to_string())?);
                }
                let conn = slot.as_mut().ok_or("no connection")?;
                let answer = tokio::time::timeout(cluster.config.connect_timeout, conn.is_writable(dialect)).await;
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
        let mut unknown = Vec::new();
        for (i, answer) in answers.into_iter().enumerate() {
            match answer {
                Ok(true) => writable.push(i),
                Ok(false) => {}
                Err(e) => unknown.push(format!("{}: {e}", name(i))),
            }
        }
        match writable.as_slice() {
            [only] if *only == configured => {}
            [only] => {
                let only = *only;
                crate::control::change(&cluster, |t| t.primary = only);
                info!(
                    cluster = %cluster.config.name,
                    primary = %name(only),
                    configured = %name(configured),
                    unanswered = ?unknown,
                    "the configured primary does not take writes and one other backend does: following the servers"
                );
            }
            [] => warn!(
                cluster = %cluster.config.name,
                configured = %name(configured),
                unanswered = ?unknown,
                "no backend takes writes (no primary): keeping the configured one"
            ),
            several => warn!(
                cluster = %cluster.config.name,
                writable = ?several.iter().map(|i| name(*i)).collect::<Vec<_>>(),
                "several backends take writes (split brain?): keeping the configured primary"
            ),
        }
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
        let cluster = Arc::clone(&self.cluster);
        let table = cluster.table.load();
        let primary = table.primary;
        // A reload may have added backends.
        self.conns.resize_with(cluster.backends.len(), || None);
        let mut conns = std::mem::take(&mut self.conns);
        let t = cluster.clock.now();
        let sample = match conns.get_mut(primary) {
            Some(conn) => probe(&cluster, primary, true, conn).await,
            None => None,
        };
        if let Some(pos) = sample {
            // A primary sample stands for the end of its last whole record, where a replica stops.
            self.samples.push(t, Dialect::of(cluster.config.protocol).at_record_boundary(pos));
            cluster.backends[primary].health.caught_up_to.store(t, Ordering::Relaxed);
        }
        let samples = &self.samples;
        let live = |i: usize| table.states.get(i).is_some_and(|s| *s != crate::cluster::BackendState::Removed);
        let replicas = conns.iter_mut().enumerate().filter(|(i, _)| *i != primary && live(*i)).map(|(i, conn)| {
            let cluster = &cluster;
            async move {
                let Some(pos) = probe(cluster, i, false, conn).await else { return };
                let health = &cluster.backends[i].health;
                let newest = samples.0.back().map_or(0, |(_, p)| p.total());
                let caught_up_to = samples.caught_up_to(&pos);
                health.lag_bytes.store(newest.saturating_sub(pos.total()), Ordering::Relaxed);
                health.caught_up_to.store(caught_up_to, Ordering::Relaxed);
                let lag = if caught_up_to == 0 { u64::MAX } else { cluster.clock.now().saturating_sub(caught_up_to) };
                health.lag_micros.store(lag, Ordering::Relaxed);
            }
        });
        futures::future::join_all(replicas).await;
        self.conns = conns;
    }
}

/// Checks backend `i` (the primary, or a replica) and updates its `up` flag; returns its
/// position (WAL for PostgreSQL, GTID sequence for MariaDB). A PostgreSQL replica that is not in
/// recovery (a fenced old primary) answers NULL: down.
async fn probe(cluster: &Cluster, i: usize, primary: bool, conn: &mut Option<ControlConn>) -> Option<Position> {
    let backend = &cluster.backends[i];
    let dialect = Dialect::of(cluster.config.protocol);
    let sql = if primary { dialect.position } else { dialect.replayed };
    let result = check(conn, cluster, i, sql).await;
    let health = &backend.health;
    let was_up = health.up.load(Ordering::Relaxed);
    let first_check = !health.checked.swap(true, Ordering::Relaxed);
    match result.as_deref().map(dialect.parse) {
        Ok(Some(pos)) => {
            health.lsn.store(pos.total(), Ordering::Relaxed);
            health.up.store(true, Ordering::Relaxed);
            health.failed.store(false, Ordering::Relaxed);
            if !was_up {
                info!(cluster = %cluster.config.name, backend = %backend.name, "backend is up");
            }
            Some(pos)
        }
        other => {
            if was_up || first_check {
                let why = match other {
                    Err(e) => e.clone(),
                    Ok(_) => "no comparable position (not a replica: a fenced old primary?)".to_owned(),
                };
                warn!(cluster = %cluster.config.name, backend = %backend.name, error = %why, "backend is down");
            }
            health.up.store(false, Ordering::Relaxed);
            *conn = None;
            None
        }
    }
}

async fn check(conn: &mut Option<ControlConn>, cluster: &Cluster, i: usize, sql: &str) -> Result<String, String> {
    let timeout = cluster.config.connect_timeout;
    if conn.is_none() {
        let to = cluster.control_target(i).ok_or("no monitor credentials")?;
        *conn = Some(ControlConn::connect(&to, "sqlswitch-monitor").await.map_err(|e| e.to_string())?);
    }
    let rows = tokio::time::timeout(timeout, conn.as_mut().ok_or("no connection")?.exec(sql)).await;
    let rows = rows.map_err(|_| "timed out".to_owned())?.map_err(|e| e.to_string())?;
    rows.into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
        .ok_or_else(|| "no position: not a replica (a fenced old primary?)".to_owned())
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
