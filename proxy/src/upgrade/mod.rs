//! The upgrade cutover's PostgreSQL side (README, "Upgrading the database server with
//! sqlswitch"): the new cluster is a group whose primary subscribes to the old primary by
//! logical replication. [`check`] is `upgrade-check`, a read-only report of what would break; the
//! switchover ([`crate::switchover`]) uses the subscriptions it finds to wait for catch-up
//! ([`caught_up`]), copy the sequences ([`sync_sequences`]) and stop the subscription
//! ([`set_enabled`]). Every query runs as the `monitor` user, in the database the subscription
//! lives in.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::cluster::Cluster;
use crate::replication::within;
use crate::replication::{parse_lsn, ControlConn};

mod check;
pub use crate::replication::{ident, literal};
pub use check::check;

/// A subscription on the target whose replication slot is on the old primary: what the
/// cutover waits for and then stops.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Its name.
    pub name: String,
    /// The database it lives in (on both sides).
    pub database: String,
    /// Its slot on the old primary.
    pub slot: String,
    /// Whether it is enabled.
    pub enabled: bool,
    /// Whether the monitor user may alter it (owner, or member of the owner's role).
    pub may_alter: bool,
    /// The publications it takes.
    pub publications: Vec<String>,
}

/// The databases `subs` live in, each once.
pub fn databases(subs: &[Subscription]) -> BTreeSet<&str> {
    subs.iter().map(|s| s.database.as_str()).collect()
}

/// Where the two control connections go, and as whom.
pub struct Sides<'a> {
    /// The cluster.
    pub cluster: &'a Cluster,
    /// The old primary's index.
    pub old: usize,
    /// The target's index.
    pub target: usize,
    /// The command's deadline.
    pub deadline: Instant,
}

impl Sides<'_> {
    /// Control connections to `database` on the old primary and on the target.
    ///
    /// # Errors
    /// Either could not be reached.
    pub async fn connect(&self, database: &str) -> Result<(ControlConn, ControlConn), String> {
        Ok((self.connect_one(self.old, database).await?, self.connect_one(self.target, database).await?))
    }
}

/// Whether every subscription has applied `final_lsn`: its slot on the old primary confirmed it,
/// and the subscriber received it. Returns the bytes still to apply (0: caught up).
///
/// # Errors
/// A query failed.
pub async fn caught_up(
    old: &mut ControlConn,
    new: &mut ControlConn,
    subs: &[Subscription],
    final_lsn: u64,
    deadline: Instant,
) -> Result<u64, String> {
    let mut behind = 0u64;
    for s in subs {
        let confirmed = value(
            old,
            &format!(
                "SELECT coalesce(confirmed_flush_lsn, '0/0')::text FROM pg_replication_slots WHERE slot_name = {}",
                literal(&s.slot)
            ),
            deadline,
        )
        .await?;
        let received = value(
            new,
            &format!(
                "SELECT coalesce(max(received_lsn), '0/0')::text FROM pg_stat_subscription \
                 WHERE subname = {} AND relid IS NULL",
                literal(&s.name)
            ),
            deadline,
        )
        .await?;
        let lowest = parse_lsn(&confirmed).unwrap_or(0).min(parse_lsn(&received).unwrap_or(0));
        behind = behind.max(final_lsn.saturating_sub(lowest));
    }
    Ok(behind)
}

/// Sets every sequence of `database` on the new side to its value on the old side plus `margin`
/// increments; a sequence already further on the new side is left. Returns how many were set.
///
/// # Errors
/// A query failed (a sequence missing on the new side, no privilege).
pub async fn sync_sequences(
    old: &mut ControlConn,
    new: &mut ControlConn,
    margin: u32,
    deadline: Instant,
) -> Result<usize, String> {
    let from = sequences(old, "SELECT", deadline).await?;
    let to = sequences(new, "UPDATE", deadline).await?;
    let mut sets = Vec::new();
    for (name, s) in &from {
        let Some(last) = s.last.as_deref().and_then(|v| v.parse::<i128>().ok()) else { continue };
        if !s.allowed {
            return Err(format!("sequence {name}: the monitor user cannot read it on the old primary"));
        }
        let step = i128::from(s.increment.signum());
        let value = last + step * i128::from(margin);
        let ahead = to
            .get(name)
            .and_then(|n| n.last.as_deref())
            .and_then(|v| v.parse::<i128>().ok())
            .is_some_and(|v| (v - value) * step >= 0);
        if !ahead {
            sets.push(format!("setval({}, {value}, true)", literal(name)));
        }
    }
    if !sets.is_empty() {
        // One statement, one round trip; setval is not transactional, and values only move on.
        // A target fenced by an earlier cutover (switching back) refuses writes by default.
        let set = format!("SELECT {}", sets.join(", "));
        within(deadline, new.exec_all(&["SET default_transaction_read_only = off", &set])).await?;
    }
    Ok(sets.len())
}

/// Enables or disables subscription `s` (on a connection to its database). Disabled, its apply
/// worker exits within a second; it has nothing left to apply (the old primary is fenced and
/// its final position confirmed), so the cutover does not wait for that.
///
/// # Errors
/// The server refused.
pub async fn set_enabled(
    new: &mut ControlConn,
    s: &Subscription,
    enabled: bool,
    deadline: Instant,
) -> Result<(), String> {
    let word = if enabled { "ENABLE" } else { "DISABLE" };
    within(deadline, new.exec(&format!("ALTER SUBSCRIPTION {} {word}", ident(&s.name)))).await.map(drop)
}

/// The name of the reverse path's publication (on the new primary) and subscription (on the
/// old one).
pub const REVERSE: &str = "sqlswitch_reverse";

/// Creates the way back before clients are released: in each database of `subs`, a publication
/// of every table on the new primary, and on the fenced old primary a subscription to it that
/// copies nothing (`copy_data = false`: both sides hold the same rows now). Its slot on the new
/// primary is created now, so it keeps every write made from the release on. The subscription
/// connects as `creds` (the cluster's `replication` account). Returns what was created.
///
/// # Errors
/// A statement failed (privileges: a superuser on both sides on PostgreSQL 15); what was
/// created before stays and is named.
pub async fn create_reverse(
    sides: &Sides<'_>,
    subs: &[Subscription],
    creds: &sqlswitch_config::Credentials,
) -> Result<Vec<String>, String> {
    let new = &sides.cluster.backends[sides.target];
    let (host, port) = crate::repoint::host_port(&new.address)
        .ok_or_else(|| format!("{} is addressed as {:?}, not host:port", new.name, new.address))?;
    let mut created = Vec::new();
    for database in databases(subs) {
        let (mut old_db, mut new_db) = sides.connect(database).await?;
        let deadline = sides.deadline;
        let exists = format!("SELECT count(*)::text FROM pg_publication WHERE pubname = {}", literal(REVERSE));
        if value(&mut new_db, &exists, deadline).await? == "0" {
            within(deadline, new_db.exec(&format!("CREATE PUBLICATION {} FOR ALL TABLES", ident(REVERSE))))
                .await
                .map_err(|e| {
                    format!("{}: CREATE PUBLICATION in {database}: {e} (created so far: {created:?})", new.name)
                })?;
            created.push(format!("publication {REVERSE} on {} ({database})", new.name));
        }
        let conninfo = crate::repoint::pg_conninfo(&host, port, creds, &[("dbname", database)]);
        // The old primary is fenced: this session writes anyway (its own catalog rows).
        let create = format!(
            "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = false, synchronous_commit = on)",
            ident(REVERSE),
            literal(&conninfo),
            ident(REVERSE)
        );
        let old_name = &sides.cluster.backends[sides.old].name;
        // The statement carries the password: kept out of the server's log (it is stored in
        // pg_subscription, readable by superusers only; leave it out to use the server's .pgpass).
        // What the server refuses is logged as a warning.
        if !creds.password.expose().is_empty() {
            old_db.quiet(crate::replication::Dialect::of(sqlswitch_config::Protocol::Postgres)).await;
        }
        within(deadline, old_db.exec_all(&["SET default_transaction_read_only = off", &create]))
            .await
            .map_err(|e| format!("{old_name}: CREATE SUBSCRIPTION in {database}: {e} (created so far: {created:?})"))?;
        created.push(format!("subscription {REVERSE} on {old_name} ({database})"));
    }
    Ok(created)
}

impl Sides<'_> {
    /// A control connection to `database` on backend `i`.
    async fn connect_one(&self, i: usize, database: &str) -> Result<ControlConn, String> {
        let name = &self.cluster.backends[i].name;
        let to = self.cluster.control_target(i).ok_or("no monitor credentials")?;
        let conn = within(self.deadline, ControlConn::connect_to(&to, APPLICATION, database))
            .await
            .map_err(|e| format!("{name}, database {database}: {e}"))?;
        Ok(conn)
    }
}

/// A sequence as compared across the sides.
struct Sequence {
    /// Its last value; `None` when never used (or not readable).
    last: Option<String>,
    increment: i64,
    /// The monitor user has the privilege asked for.
    allowed: bool,
}

async fn sequences(
    conn: &mut ControlConn,
    privilege: &str,
    deadline: Instant,
) -> Result<BTreeMap<String, Sequence>, String> {
    let sql = format!(
        "SELECT quote_ident(schemaname) || '.' || quote_ident(sequencename), coalesce(last_value::text, ''), \
         increment_by::text, has_sequence_privilege(format('%I.%I', schemaname, sequencename), '{privilege}')::text \
         FROM pg_sequences ORDER BY 1"
    );
    Ok(rows(conn, &sql, deadline)
        .await?
        .into_iter()
        .filter_map(|r| match r.as_slice() {
            [name, last, increment, allowed] => Some((
                name.clone(),
                Sequence {
                    last: (!last.is_empty()).then(|| last.clone()),
                    increment: increment.parse().unwrap_or(1),
                    allowed: allowed == "true",
                },
            )),
            _ => None,
        })
        .collect())
}

/// Every row of `sql`, NULL as empty text.
async fn rows(conn: &mut ControlConn, sql: &str, deadline: Instant) -> Result<Vec<Vec<String>>, String> {
    let rows = within(deadline, conn.exec(sql)).await?;
    Ok(rows.into_iter().map(|r| r.into_iter().map(Option::unwrap_or_default).collect()).collect())
}

async fn value(conn: &mut ControlConn, sql: &str, deadline: Instant) -> Result<String, String> {
    within(deadline, conn.value(sql)).await
}

/// How the cutover's connections are named where the server shows them.
const APPLICATION: &str = "sqlswitch-switchover";

#[cfg(test)]
mod tests {
    #[test]
    fn quoting() {
        assert_eq!(super::literal("it's"), "'it''s'");
        assert_eq!(super::ident("My \"sub\""), "\"My \"\"sub\"\"\"");
    }
}
