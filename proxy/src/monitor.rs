//! Health, lag and read-your-writes bookkeeping (PRODUCT.md section 5). One task per cluster
//! polls every backend as the `monitor` user: the primary's `pg_current_wal_insert_lsn()` and each
//! replica's `pg_last_wal_replay_lsn()`. Each primary sample is `(t, lsn)`, with `t` taken
//! before the query was sent, so every write acknowledged before `t` is at or below `lsn`. A
//! replica that has replayed `lsn` is therefore *caught up to t*. Sessions compare that against
//! the time their last write was acknowledged: no query of their own, no extra round trip.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::Cluster;
use crate::mysql::backend::MyConn;
use crate::pg::backend::{BackendConn, Login};
use sqlswitch_config::Protocol;

/// Microseconds since the daemon started: the time base of every lag comparison.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self { start: Instant::now() }
    }
}

impl Clock {
    /// Now, in micros since start (never 0, so 0 can mean "unknown").
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX).max(1)
    }
}

/// What the monitor last saw of one backend. Written by the monitor, read by every routing
/// decision with relaxed loads: a decision needs a recent value, not a consistent snapshot.
#[derive(Debug, Default)]
pub struct Health {
    /// Reachable at the last check.
    pub up: AtomicBool,
    /// Taken out of rotation by a session that saw it fail, until the monitor sees it answer.
    pub failed: AtomicBool,
    /// The monitor has checked it at least once (so a backend down from the start is logged).
    pub checked: AtomicBool,
    /// Newest moment (clock micros) whose primary position it has replayed; 0 = unknown.
    pub caught_up_to: AtomicU64,
    /// Last position: current WAL on the primary, replayed WAL on a replica.
    pub lsn: AtomicU64,
    /// Bytes of WAL behind the primary's last sample.
    pub lag_bytes: AtomicU64,
    /// Replication delay when last checked, in micros: the time of the check minus
    /// `caught_up_to`. Over-states the real delay by at most one monitor interval.
    pub lag_micros: AtomicU64,
}

impl Health {
    /// Whether routing may send work here.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed) && !self.failed.load(Ordering::Relaxed)
    }

    /// A session saw this backend fail: no more reads until the monitor sees it answer again.
    pub fn mark_failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }
}

/// The position of the end of the last record at or before insert position `lsn`. At the start
/// of a page (or of a 16 MiB segment) PostgreSQL's insert position points past the page header,
/// where no record ends; a replica that has replayed everything stops before that header.
pub fn record_boundary(lsn: u64) -> u64 {
    const PAGE: u64 = 8192;
    const SHORT_HEADER: u64 = 24;
    const SEGMENT: u64 = 16 << 20;
    const LONG_HEADER: u64 = 40;
    if lsn % SEGMENT == LONG_HEADER {
        lsn - LONG_HEADER
    } else if lsn % PAGE == SHORT_HEADER {
        lsn - SHORT_HEADER
    } else {
        lsn
    }
}

/// A replication position: a WAL position for PostgreSQL (one component), or a MariaDB GTID
/// position (the sequence number of each replication domain). Positions are ordered per
/// component: one covers another when it is at or past it in every component the other has.
/// Domains apply independently on a replica, so no single number can stand for several.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Position(Vec<(u32, u64)>);

impl Position {
    /// A one-component position (PostgreSQL's WAL).
    pub fn scalar(lsn: u64) -> Self {
        Self(vec![(0, lsn)])
    }

    /// Whether this position is at or past `other` in every component `other` has.
    pub fn covers(&self, other: &Position) -> bool {
        other.0.iter().all(|(d, seq)| *seq == 0 || self.0.iter().any(|(d2, s2)| d2 == d && s2 >= seq))
    }

    /// The sum of the components: a lag figure for people (bytes, or transactions), not an
    /// order.
    pub fn total(&self) -> u64 {
        self.0.iter().fold(0u64, |a, (_, s)| a.saturating_add(*s))
    }
}

/// Parses a MariaDB GTID position: `domain-server-seq`, comma-separated per domain (empty: no
/// transaction yet).
pub fn parse_gtid(s: &str) -> Option<Position> {
    let s = s.trim();
    let mut v = Vec::new();
    for gtid in s.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let mut parts = gtid.split('-');
        let (domain, _server, seq) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        v.push((domain.parse().ok()?, seq.parse().ok()?));
    }
    Some(Position(v))
}

/// Parses `X/Y` (hex) into a 64-bit WAL position.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// A PostgreSQL position as a [`Position`].
pub fn parse_lsn_position(s: &str) -> Option<Position> {
    parse_lsn(s).map(Position::scalar)
}

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
    conns: Vec<Option<Conn>>,
    samples: Samples,
    params: Vec<(String, String)>,
}

impl Monitor {
    /// A monitor for `cluster`; `None` when the cluster has no `monitor` credentials.
    pub fn new(cluster: Arc<Cluster>) -> Option<Self> {
        cluster.config.monitor.as_ref()?;
        let params = vec![
            ("database".to_owned(), "postgres".to_owned()),
            ("application_name".to_owned(), "sqlswitch-monitor".to_owned()),
        ];
        let conns = cluster.backends.iter().map(|_| None).collect();
        Some(Self { cluster, conns, samples: Samples(VecDeque::new()), params })
    }

    /// The first checks, before the daemon listens: quick rounds (for at most about a second)
    /// until every replica that answers has replayed some primary sample, so the first sessions
    /// can use it. With asynchronous commit a replica trails the primary's write position by up
    /// to `wal_writer_delay` even when idle.
    pub async fn warm_up(&mut self) {
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
        let Some(monitor) = cluster.config.monitor.as_ref() else { return };
        let tls = cluster.backend_tls.load_full();
        let login = Login {
            user: &monitor.user,
            password: monitor.password.expose(),
            params: &self.params,
            tls: tls.as_deref(),
        };
        let table = cluster.table.load();
        let primary = table.primary;
        // A reload may have added backends.
        self.conns.resize_with(cluster.backends.len(), || None);
        let mut conns = std::mem::take(&mut self.conns);
        let t = cluster.clock.now();
        let sample = match conns.get_mut(primary) {
            Some(conn) => probe(&cluster, primary, true, conn, &login).await,
            None => None,
        };
        if let Some(pos) = sample {
            let pos = match cluster.config.protocol {
                Protocol::Postgres => Position::scalar(record_boundary(pos.total())),
                Protocol::Mysql => pos,
            };
            self.samples.push(t, pos);
            cluster.backends[primary].health.caught_up_to.store(t, Ordering::Relaxed);
        }
        let samples = &self.samples;
        let live = |i: usize| table.states.get(i).is_some_and(|s| *s != crate::cluster::BackendState::Removed);
        let replicas = conns.iter_mut().enumerate().filter(|(i, _)| *i != primary && live(*i)).map(|(i, conn)| {
            let (cluster, login) = (&cluster, &login);
            async move {
                let Some(pos) = probe(cluster, i, false, conn, login).await else { return };
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

/// A monitoring connection.
enum Conn {
    Pg(BackendConn),
    My(MyConn),
}

/// Checks backend `i` (the primary, or a replica) and updates its `up` flag; returns its
/// position (WAL for PostgreSQL, GTID sequence for MariaDB). A PostgreSQL replica that is not in
/// recovery (a fenced old primary) answers NULL: down.
async fn probe(
    cluster: &Cluster,
    i: usize,
    primary: bool,
    conn: &mut Option<Conn>,
    login: &Login<'_>,
) -> Option<Position> {
    let backend = &cluster.backends[i];
    let (sql, parse): (&str, fn(&str) -> Option<Position>) = match (cluster.config.protocol, primary) {
        // The insert position, not the write position: with asynchronous commit a commit is
        // acknowledged once inserted, before it is written.
        (Protocol::Postgres, true) => ("SELECT pg_current_wal_insert_lsn()::text", parse_lsn_position),
        (Protocol::Postgres, false) => ("SELECT pg_last_wal_replay_lsn()::text", parse_lsn_position),
        (Protocol::Mysql, true) => ("SELECT @@gtid_binlog_pos", parse_gtid),
        (Protocol::Mysql, false) => ("SELECT @@gtid_slave_pos", parse_gtid),
    };
    let result = check(conn, cluster, i, login, sql).await;
    let health = &backend.health;
    let was_up = health.up.load(Ordering::Relaxed);
    let first_check = !health.checked.swap(true, Ordering::Relaxed);
    match result.as_deref().map(parse) {
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

async fn check(
    conn: &mut Option<Conn>,
    cluster: &Cluster,
    i: usize,
    login: &Login<'_>,
    sql: &str,
) -> Result<String, String> {
    let backend = &cluster.backends[i];
    let timeout = cluster.config.connect_timeout;
    if conn.is_none() {
        *conn = Some(match cluster.config.protocol {
            Protocol::Postgres => Conn::Pg(
                BackendConn::connect(&backend.address, login, timeout, &backend.metrics)
                    .await
                    .map_err(|e| e.to_string())?,
            ),
            Protocol::Mysql => {
                let my = crate::mysql::backend::Login::control(login.user, login.password, login.tls);
                Conn::My(
                    MyConn::connect(&backend.address, &my, timeout, &backend.metrics)
                        .await
                        .map_err(|e| e.to_string())?,
                )
            }
        });
    }
    let rows = match conn.as_mut().ok_or("no connection")? {
        Conn::Pg(c) => tokio::time::timeout(timeout, c.simple_query(sql)).await,
        Conn::My(c) => tokio::time::timeout(timeout, c.simple_query(sql)).await,
    };
    let rows = rows.map_err(|_| "timed out".to_owned())?.map_err(|e| e.to_string())?;
    rows.into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
        .ok_or_else(|| "no position: not a replica (a fenced old primary?)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_parsing() {
        assert_eq!(parse_lsn("0/3000148"), Some(0x300_0148));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        assert_eq!(parse_lsn("junk"), None);
    }

    #[test]
    fn gtid_positions() {
        let p = |s| parse_gtid(s).unwrap_or_else(|| panic!("{s}"));
        assert_eq!(p("0-1-10"), Position(vec![(0, 10)]));
        assert_eq!(p(""), Position(vec![]));
        assert_eq!(p("0-1-10,1-2-5"), Position(vec![(0, 10), (1, 5)]));
        assert_eq!(parse_gtid("junk"), None);
        assert_eq!(parse_gtid("0-1-x"), None);
        // Per-domain order: ahead in one domain does not make up for behind in another.
        assert!(p("0-1-10,1-2-5").covers(&p("0-1-10,1-2-5")));
        assert!(p("0-1-11,1-2-6").covers(&p("0-1-10,1-2-5")));
        assert!(!p("0-1-20,1-2-4").covers(&p("0-1-10,1-2-5")), "behind in domain 1");
        assert!(!p("0-1-20").covers(&p("0-1-10,1-2-5")), "domain 1 missing");
        assert!(p("0-1-10,1-2-5,7-3-1").covers(&p("0-1-10,1-2-5")), "extra domains do not matter");
        assert!(p("").covers(&p("")), "nothing written yet");
        assert_eq!(p("0-1-10,1-2-5").total(), 15);
    }

    #[test]
    fn page_headers_hold_no_record() {
        assert_eq!(record_boundary(0x400_0028), 0x400_0000, "segment start");
        assert_eq!(record_boundary(0x400_2018), 0x400_2000, "page start");
        assert_eq!(record_boundary(0x400_2028), 0x400_2028, "a record can end 16 bytes into a page");
        assert_eq!(record_boundary(0x400_01e8), 0x400_01e8);
    }

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
