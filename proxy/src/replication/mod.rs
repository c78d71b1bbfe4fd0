//! What the monitor and the switchover share about replication: positions and their parsers,
//! the clock every lag comparison uses, what the monitor last saw of a backend, each protocol's
//! SQL for positions, fencing and promotion, and one control connection (as the `monitor`
//! user). It knows nothing of clusters or sessions.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlswitch_config::{Credentials, Protocol};

use crate::backend::{BackendError, Dialing};
use crate::conn::mysql::MyConn;
use crate::conn::pg::{BackendConn, Login};
use crate::metrics::BackendMetrics;
use crate::tls::BackendTls;

mod control;
pub use control::{ident, in_force, literal, within, ControlConn, ControlTarget};

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
    /// The server said it follows no primary (writable, or fenced): a replica in the routing
    /// table that left recovery (promoted by hand or by other tooling) serves no reads.
    pub follows_none: AtomicBool,
    /// It was the primary and was replaced (switchover, failover, a followed change): never
    /// followed as the primary again until it is seen streaming from a primary, or `rejoin`.
    pub deposed: AtomicBool,
    /// Since when (clock micros) the monitor has not reached it; 0 while it answers.
    pub down_since: AtomicU64,
    /// The monitor found it unreachable for [`PRIMARY_AWAY`] and, in the same check, measured
    /// the replicas' freshness without it: as the primary, the cluster is in maintenance.
    /// Set only after that measurement, so no read finds every replica stale in between.
    pub away: AtomicBool,
    /// When (clock micros) the monitor last heard from it; 0: never.
    pub seen_at: AtomicU64,
}

/// How long (micros) the primary stays unreachable before the cluster serves without it.
pub const PRIMARY_AWAY: u64 = 1_000_000;

impl Health {
    /// How long (micros) the monitor has not reached it; 0 while it answers.
    pub fn away_micros(&self, clock: &Clock) -> u64 {
        match self.down_since.load(Ordering::Relaxed) {
            0 => 0,
            since => clock.now().saturating_sub(since),
        }
    }

    /// Whether routing may send reads here as a replica: up, and replicating.
    pub fn serves_reads(&self) -> bool {
        self.is_up() && !self.follows_none.load(Ordering::Relaxed)
    }

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

/// A PostgreSQL replica's sample: the timeline it streams (hex; `0` when it does not stream)
/// and what it replayed. NULL (not in recovery) when it is no replica.
const PG_REPLAYED: &str = "SELECT COALESCE((SELECT to_hex(received_tli) FROM pg_stat_wal_receiver \
                           WHERE status = 'streaming'), '0') || ':' || pg_last_wal_replay_lsn()::text";

/// Parses a monitor sample of PostgreSQL, `TIMELINE:X/Y` (timeline in hex), into a position
/// whose one component is that timeline's: positions on different timelines never cover each
/// other.
pub fn parse_timeline_lsn(s: &str) -> Option<Position> {
    let (timeline, lsn) = s.trim().split_once(':')?;
    Some(Position(vec![(u32::from_str_radix(timeline, 16).ok()?, parse_lsn(lsn)?)]))
}

/// The SQL of one protocol for replication positions, fencing and promotion.
pub struct Dialect {
    /// The primary's position. PostgreSQL's is the insert position, not the write position:
    /// with asynchronous commit a commit is acknowledged once inserted, before it is written.
    pub position: &'static str,
    /// What a replica has replayed.
    pub replayed: &'static str,
    /// What a replica will have once promoted: PostgreSQL replays all the WAL it received
    /// before it leaves recovery, so the received position counts; MariaDB's `STOP SLAVE`
    /// leaves unapplied relay log behind, so only the applied one does.
    pub received: &'static str,
    /// Parses [`Dialect::position`], [`Dialect::replayed`] and [`Dialect::received`].
    pub parse: fn(&str) -> Option<Position>,
    /// The monitor's samples: the primary's position, what a replica replayed, and the position
    /// of another group's primary (writable, or a standby itself), parsed by
    /// [`Dialect::parse_sampled`]. PostgreSQL's carry the timeline (the primary's current one;
    /// the one a replica streams, `0` when it does not), so that a replica still following a
    /// deposed primary on the old timeline never counts as caught up with the new one.
    pub sampled: [&'static str; 3],
    /// Parses the answers of [`Dialect::sampled`].
    pub parse_sampled: fn(&str) -> Option<Position>,
    /// Whether a position always ends at a whole record (GTIDs do; a WAL insert position may
    /// point past a page header).
    pub whole_records: bool,
    /// Makes a server refuse writes.
    pub fence: &'static [&'static str],
    /// Undoes [`Dialect::fence`].
    pub unfence: &'static [&'static str],
    /// `on` while the fence is in force for this session (PostgreSQL: once this session has
    /// taken the reload, which the postmaster signals to every session at once), else `off`.
    pub fenced: &'static str,
    /// Replication status statements, tried in order until one is understood (MySQL 8.4 knows
    /// only `SHOW REPLICA STATUS`): any row means the server follows another. Empty for
    /// PostgreSQL, whose [`Dialect::role`] says it.
    pub channels: &'static [&'static str],
    /// The server's role as one value: `replica` (PostgreSQL: in recovery), `read-only` or
    /// `writable`.
    pub role: &'static str,
    /// Promotes a standby.
    pub promote: &'static [&'static str],
    /// How many other sessions hold a transaction that has written (or may commit a write).
    pub open_writers: &'static str,
    /// The ids of other client sessions (not replication, not sqlswitch's control
    /// connections), for `fence = "terminate"`.
    pub other_sessions: &'static str,
    /// Ends the session with the given id.
    pub end_session: fn(&str) -> String,
    /// Whether a target may be a logical-replication subscriber (an upgrade cutover).
    pub logical: bool,
    /// Turns off what would write this session's statements to the server's logs, before a
    /// statement that carries a password (each tried on its own: [`ControlConn::quiet`]).
    pub quiet: &'static [&'static str],
}

impl Dialect {
    /// The dialect of `protocol`.
    pub fn of(protocol: Protocol) -> &'static Dialect {
        match protocol {
            Protocol::Postgres => &POSTGRES,
            Protocol::Mysql => &MYSQL,
        }
    }

    /// A primary's position as a replica that has replayed all of it reports it: for PostgreSQL
    /// the end of the last whole record ([`record_boundary`]).
    pub fn primary_position(&self, text: &str) -> Option<Position> {
        (self.parse)(text).map(|pos| self.at_record_boundary(pos))
    }

    /// `pos`, a primary's position, moved back to the end of its last whole record (PostgreSQL
    /// only: a GTID position is always whole).
    pub fn at_record_boundary(&self, pos: Position) -> Position {
        if self.whole_records {
            pos
        } else {
            Position(pos.0.into_iter().map(|(timeline, lsn)| (timeline, record_boundary(lsn))).collect())
        }
    }
}

const POSTGRES: Dialect = Dialect {
    position: "SELECT pg_current_wal_insert_lsn()::text",
    replayed: "SELECT pg_last_wal_replay_lsn()::text",
    received: "SELECT GREATEST(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text",
    parse: parse_lsn_position,
    sampled: [
        "SELECT substr(pg_walfile_name(lsn), 1, 8) || ':' || lsn::text FROM pg_current_wal_insert_lsn() AS lsn",
        PG_REPLAYED,
        "SELECT CASE WHEN pg_is_in_recovery() THEN (SELECT (SELECT to_hex(received_tli) FROM pg_stat_wal_receiver \
         WHERE status = 'streaming')) ELSE substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8) END || ':' || \
         (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END)::text",
    ],
    parse_sampled: parse_timeline_lsn,
    whole_records: false,
    fence: &["ALTER SYSTEM SET default_transaction_read_only = on", "SELECT pg_reload_conf()"],
    unfence: &["ALTER SYSTEM RESET default_transaction_read_only", "SELECT pg_reload_conf()"],
    fenced: "SELECT current_setting('default_transaction_read_only')",
    channels: &[],
    role: "SELECT CASE WHEN pg_is_in_recovery() THEN 'replica' \
           WHEN EXISTS (SELECT 1 FROM pg_stat_subscription WHERE pid IS NOT NULL) THEN 'subscriber' \
           WHEN current_setting('default_transaction_read_only') = 'on' THEN 'read-only' ELSE 'writable' END",
    promote: &["SELECT pg_promote(true, 60)"],
    // Every open transaction, not only those with an xid: `default_transaction_read_only`
    // binds only transactions that start after it, so one opened before the fence (even
    // `BEGIN; SELECT`) can still write and commit.
    open_writers: "SELECT count(*)::text FROM pg_stat_activity WHERE xact_start IS NOT NULL \
                   AND backend_type = 'client backend' AND pid <> pg_backend_pid() \
                   AND application_name NOT LIKE 'sqlswitch-%'",
    other_sessions: "SELECT pid::text FROM pg_stat_activity WHERE backend_type = 'client backend' \
                     AND pid <> pg_backend_pid() AND application_name NOT LIKE 'sqlswitch-%'",
    end_session: |id| format!("SELECT pg_terminate_backend({id})"),
    logical: true,
    quiet: &[
        "SET log_statement = 'none'",
        "SET log_min_duration_statement = -1",
        "SET log_min_duration_sample = -1",
        // An error is logged with its statement unless this says otherwise.
        "SET log_min_error_statement = 'panic'",
    ],
};

const MYSQL: Dialect = Dialect {
    position: "SELECT @@gtid_binlog_pos",
    replayed: "SELECT @@gtid_slave_pos",
    received: "SELECT @@gtid_slave_pos",
    parse: parse_gtid,
    sampled: ["SELECT @@gtid_binlog_pos", "SELECT @@gtid_slave_pos", "SELECT @@gtid_current_pos"],
    parse_sampled: parse_gtid,
    whole_records: true,
    fence: &["SET GLOBAL read_only = 1"],
    unfence: &["SET GLOBAL read_only = 0"],
    fenced: "SELECT IF(@@read_only, 'on', 'off')",
    channels: &["SHOW SLAVE STATUS", "SHOW REPLICA STATUS"],
    role: "SELECT IF(@@read_only, 'read-only', 'writable')",
    promote: &["STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = 0"],
    open_writers: "SELECT COUNT(*) FROM information_schema.innodb_trx \
                   WHERE trx_mysql_thread_id <> CONNECTION_ID() AND trx_rows_modified > 0",
    other_sessions: "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() \
                     AND COMMAND NOT IN ('Binlog Dump', 'Daemon', 'Slave_IO', 'Slave_SQL', 'Slave_worker') \
                     AND USER NOT IN ('system user', 'event_scheduler', SUBSTRING_INDEX(CURRENT_USER(), '@', 1))",
    end_session: |id| format!("KILL CONNECTION {id}"),
    logical: false,
    // The general log and (MariaDB) the slow log; the binary log never holds `CHANGE MASTER`.
    quiet: &["SET SESSION sql_log_off = 1", "SET SESSION slow_query_log = 0"],
};

/// What a server says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Takes writes and follows no other server.
    Writable,
    /// Follows another server: a streaming standby, a MariaDB/MySQL server with a replication
    /// channel configured (whatever its `read_only`).
    Replica,
    /// Follows none and refuses writes: fenced (by a switchover, or by hand).
    ReadOnly,
    /// A PostgreSQL server subscribed by logical replication (a running apply worker): it
    /// takes writes, but it is an upgrade target, not a second primary.
    Subscriber,
    /// MariaDB/MySQL: writable, with a replication channel configured but stopped. Either a
    /// primary left with an old channel (`RESET SLAVE` without `ALL`) or a replica whose
    /// replication was stopped: the primary when it is already the routing table's, a replica
    /// otherwise.
    Stopped,
}

impl Role {
    /// As `status` shows it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Writable => "writable",
            Role::Replica => "replica",
            Role::ReadOnly => "read-only",
            Role::Subscriber => "subscriber",
            Role::Stopped => "writable, replication stopped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MariaDB in any spelling of its version is monitored; Oracle MySQL is told why not.
    #[test]
    fn mysql_servers_are_told_the_monitor_is_mariadb_only() {
        for mariadb in ["10.11.6-MariaDB-0+deb12u1", "5.5.5-10.11.6-MariaDB", "11.4.2-MariaDB-upgraded"] {
            assert_eq!(control::unsupported_flavour(mariadb), None, "{mariadb}");
        }
        for mysql in ["8.0.36", "8.4.0-commercial", "5.7.44-log"] {
            let why = control::unsupported_flavour(mysql).unwrap_or_default();
            assert!(why.contains(mysql) && why.contains("MariaDB only"), "{why}");
        }
    }

    #[test]
    fn lsn_parsing() {
        assert_eq!(parse_lsn("0/3000148"), Some(0x300_0148));
        assert_eq!(parse_lsn("1/0"), Some(1 << 32));
        assert_eq!(parse_lsn("junk"), None);
    }

    #[test]
    fn positions_on_different_timelines_never_cover_each_other() {
        let p = |s| parse_timeline_lsn(s).unwrap_or_else(|| panic!("{s}"));
        assert_eq!(p("0000000A:0/3000148"), Position(vec![(10, 0x300_0148)]));
        assert_eq!(p("2:1/0"), Position(vec![(2, 1 << 32)]));
        assert!(parse_timeline_lsn("0/3000148").is_none(), "no timeline");
        assert!(parse_timeline_lsn("x:0/1").is_none());
        // A replica still on the old timeline (1), past the new primary's early samples in
        // bytes, has none of the new timeline's writes.
        assert!(!p("1:0/5000000").covers(&p("2:0/4000100")));
        assert!(p("2:0/4000100").covers(&p("2:0/4000100")));
        // Not streaming (0): no timeline known, never counted as caught up with a primary.
        assert!(!p("0:0/5000000").covers(&p("1:0/4000000")));
        // The record-boundary adjustment keeps the timeline.
        let adjusted = Dialect::of(Protocol::Postgres).at_record_boundary(p("3:0/4000028"));
        assert_eq!(adjusted, Position(vec![(3, 0x400_0000)]));
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
}
