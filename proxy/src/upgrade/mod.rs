//! The upgrade cutover's PostgreSQL side (README, "Upgrading the database server with
//! sqlswitch"): the new cluster is a group whose primary subscribes to the old primary by
//! logical replication. [`check`] is `upgrade-check`, a read-only report of what would break; the
//! switchover ([`crate::switchover`]) uses the subscriptions it finds to wait for catch-up
//! ([`caught_up`]), copy the sequences ([`sync_sequences`]) and stop the subscription
//! ([`set_enabled`]). Every query runs as the `monitor` user, in the database the subscription
//! lives in.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde_json::{json, Value};

use crate::cluster::Cluster;
use crate::replication::{parse_lsn, ControlConn};
use crate::switchover::within;

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Cutting over now would lose data (writes that would never reach the new cluster): the
    /// cutover refuses to start while it remains, `force` or not.
    Loss,
    /// The cutover refuses to start while it remains (unless `force`).
    Blocking,
    /// Likely to break something after the cutover.
    Warning,
    /// For the record.
    Info,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Loss => "data-loss",
            Level::Blocking => "blocking",
            Level::Warning => "warning",
            Level::Info => "info",
        }
    }
}

/// One line of the report: what was found, and what to do about it.
#[derive(Debug, Clone)]
pub struct Finding {
    /// How much it matters.
    pub level: Level,
    /// What was found.
    pub what: String,
    /// What to do (empty when nothing).
    pub todo: String,
}

impl Finding {
    fn new(level: Level, what: impl Into<String>, todo: impl Into<String>) -> Self {
        Self { level, what: what.into(), todo: todo.into() }
    }

    /// As the answer shows it.
    pub fn json(&self) -> Value {
        json!({ "level": self.level.name(), "what": self.what, "do": self.todo })
    }
}

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

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct Check {
    /// Every finding, most important first.
    pub findings: Vec<Finding>,
    /// The target's subscriptions to the old primary.
    pub subscriptions: Vec<Subscription>,
    /// Why the monitor user could not create the way back (`reverse`), if it could not.
    pub no_reverse: Option<String>,
}

impl Check {
    /// The findings that stop a cutover (`force` overrides those that are not data loss).
    pub fn blocking(&self) -> Vec<&Finding> {
        self.findings.iter().filter(|f| f.level <= Level::Blocking).collect()
    }

    /// The findings that stop a cutover even with `force`: it would lose data.
    pub fn losses(&self) -> Vec<&Finding> {
        self.findings.iter().filter(|f| f.level == Level::Loss).collect()
    }

    /// The answer of `upgrade-check`.
    pub fn json(&self, cluster: &str, old: &str, target: &str) -> Value {
        let findings: Vec<Value> = self.findings.iter().map(Finding::json).collect();
        json!({
            "ok": true,
            "cluster": cluster,
            "from": old,
            "to": target,
            "blocking": self.blocking().len(),
            "findings": findings,
        })
    }
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

/// `upgrade-check`: read-only, on both servers.
///
/// # Errors
/// A server could not be reached or a query failed.
pub async fn check(sides: &Sides<'_>) -> Result<Check, String> {
    let cluster = sides.cluster;
    let (old_name, new_name) = (&cluster.backends[sides.old].name, &cluster.backends[sides.target].name);
    let deadline = sides.deadline;
    let (mut old, mut new) = sides.connect("postgres").await?;
    let mut out = Findings::default();
    let mut subs = Vec::new();

    let version = "SELECT current_setting('server_version')";
    let (v_old, v_new) = (value(&mut old, version, deadline).await?, value(&mut new, version, deadline).await?);
    out.info(format!("versions: {old_name} runs PostgreSQL {v_old}, {new_name} runs {v_new}"));

    // The subscriptions, and which of them take from the old primary: their slot is there.
    let subscriptions = rows(
        &mut new,
        "SELECT s.subname, d.datname, coalesce(s.subslotname, ''), s.subenabled::text, \
         pg_has_role(s.subowner, 'USAGE')::text, array_to_string(s.subpublications, ','), s.subsynccommit \
         FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid ORDER BY 1",
        deadline,
    )
    .await?;
    let slots = rows(
        &mut old,
        "SELECT slot_name, coalesce(database, ''), active::text, \
         coalesce((pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, 0)::text \
         FROM pg_replication_slots WHERE slot_type = 'logical'",
        deadline,
    )
    .await?;
    let lags = rows(
        &mut old,
        "SELECT application_name, coalesce(extract(epoch FROM replay_lag), 0)::numeric(12,3)::text FROM pg_stat_replication",
        deadline,
    )
    .await?;
    for s in &subscriptions {
        let [name, database, slot, enabled, may_alter, publications, sync] = s.as_slice() else { continue };
        let on_old = slots.iter().find(|r| r.first() == Some(slot) && r.get(1) == Some(database));
        let Some(on_old) = on_old else {
            out.info(format!(
                "subscription {name} (database {database}) takes from another server: its slot {slot:?} is not on {old_name}; the cutover leaves it as it is"
            ));
            continue;
        };
        let sub = Subscription {
            name: name.clone(),
            database: database.clone(),
            slot: slot.clone(),
            enabled: enabled == "true",
            may_alter: may_alter == "true",
            publications: publications.split(',').filter(|p| !p.is_empty()).map(str::to_owned).collect(),
        };
        if !sub.enabled {
            out.add(
                Level::Loss,
                format!("subscription {name} (database {database}) is disabled: changes on {old_name} do not reach {new_name}"),
                format!("ALTER SUBSCRIPTION {} ENABLE on {new_name}, and let it catch up", ident(name)),
            );
        }
        if !sub.may_alter {
            out.add(
                Level::Blocking,
                format!("the monitor user cannot disable subscription {name} on {new_name}: it is not the owner"),
                "for the cutover, make the monitor user a superuser on the new cluster (PostgreSQL 15 and older) \
                 or the subscription's owner",
            );
        }
        if on_old.get(2).map(String::as_str) != Some("true") {
            out.add(
                Level::Warning,
                format!("slot {slot} on {old_name} is not in use: subscription {name} is not streaming now"),
                format!("look at the log of {new_name}"),
            );
        }
        if sync == "off" {
            out.add(
                Level::Info,
                format!(
                    "subscription {name} applies with synchronous_commit = off: it confirms the old primary's \
                     final position up to a second late, and clients wait that second during the cutover"
                ),
                format!("ALTER SUBSCRIPTION {} SET (synchronous_commit = on) for a shorter pause", ident(name)),
            );
        }
        let behind = on_old.get(3).cloned().unwrap_or_default();
        let seconds = lags.iter().find(|r| r.first() == Some(name)).and_then(|r| r.get(1)).cloned();
        out.info(format!(
            "subscription {name} (database {database}): {behind} bytes behind {old_name}, lag {} s",
            seconds.unwrap_or_else(|| "unknown".into())
        ));
        subs.push(sub);
    }
    // The way back needs a publication of every table on the new side and a subscription on the
    // old: a superuser, or on PostgreSQL 16+ pg_create_subscription on the old side.
    let superuser = "SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user";
    let creates = "SELECT (rolsuper OR EXISTS (SELECT 1 FROM pg_roles c WHERE c.rolname = 'pg_create_subscription' \
                   AND pg_has_role(current_user, c.oid, 'USAGE')))::text FROM pg_roles WHERE rolname = current_user";
    let mut missing = Vec::new();
    if value(&mut new, superuser, deadline).await? != "true" {
        missing.push(format!("a superuser on {new_name} (CREATE PUBLICATION ... FOR ALL TABLES)"));
    }
    if value(&mut old, creates, deadline).await? != "true" {
        missing
            .push(format!("a superuser on {old_name} (CREATE SUBSCRIPTION; pg_create_subscription on PostgreSQL 16+)"));
    }
    let no_reverse = (!missing.is_empty()).then(|| format!("the monitor user must be {}", missing.join(" and ")));
    match &no_reverse {
        Some(why) => out.info(format!("`switchover ... reverse` cannot create the way back: {why}")),
        None => out.info("`switchover ... reverse` can create the way back".to_owned()),
    }
    if subs.is_empty() {
        out.add(
            Level::Loss,
            format!("{new_name} has no subscription to {old_name}: nothing written on {old_name} reaches it"),
            format!(
                "on {old_name}: CREATE PUBLICATION upgrade FOR ALL TABLES; on {new_name}, in each database: \
                 CREATE SUBSCRIPTION upgrade CONNECTION '<{old_name}>' PUBLICATION upgrade"
            ),
        );
    }

    // Databases on the old primary with tables that no subscription carries.
    let carried: BTreeSet<String> = databases(&subs).into_iter().map(str::to_owned).collect();
    let databases =
        rows(&mut old, "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1", deadline)
            .await?;
    // (With no subscription at all, the finding above says it.)
    let uncarried = databases.iter().filter_map(|r| r.first()).filter(|d| !subs.is_empty() && !carried.contains(*d));
    for database in uncarried {
        let mut conn = sides.connect_one(sides.old, database).await?;
        let n = value(&mut conn, &format!("SELECT count(*) FROM pg_class c {USER_TABLES}"), deadline).await?;
        if n != "0" {
            out.add(
                Level::Loss,
                format!("database {database} on {old_name} has {n} table(s) and no subscription on {new_name}"),
                format!("create the database and its schema on {new_name}, then a subscription in it"),
            );
        }
    }

    // Per database: tables, keys, publications, copy state, sequences, extensions.
    for database in &carried {
        let (mut old_db, mut new_db) = sides.connect(database).await?;
        let in_db: Vec<&Subscription> = subs.iter().filter(|s| &s.database == database).collect();
        let tables_old = tables(&mut old_db, deadline).await?;
        let tables_new = tables(&mut new_db, deadline).await?;
        let publications: Vec<String> = in_db.iter().flat_map(|s| s.publications.iter().map(|p| literal(p))).collect();
        let published: BTreeSet<String> = if publications.is_empty() {
            BTreeSet::new()
        } else {
            rows(
                &mut old_db,
                &format!(
                    "SELECT DISTINCT quote_ident(schemaname) || '.' || quote_ident(tablename) \
                     FROM pg_publication_tables WHERE pubname IN ({})",
                    publications.join(", ")
                ),
                deadline,
            )
            .await?
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .collect()
        };
        for (table, t) in &tables_old {
            match tables_new.get(table) {
                None => out.add(
                    Level::Loss,
                    format!("table {table} (database {database}) is on {old_name} and missing on {new_name}"),
                    format!("create it on {new_name} (pg_dump --schema-only -t), then ALTER SUBSCRIPTION ... REFRESH PUBLICATION"),
                ),
                Some(n) => {
                    let missing: Vec<&String> = t.columns.iter().filter(|c| !n.columns.contains(c)).collect();
                    if !missing.is_empty() {
                        let names: Vec<&str> = missing.iter().map(|c| c.as_str()).collect();
                        out.add(
                            Level::Blocking,
                            format!(
                                "table {table} (database {database}) differs: {new_name} lacks {} (DDL is not replicated)",
                                names.join(", ")
                            ),
                            format!("run the same ALTER TABLE on {new_name}"),
                        );
                    } else if t.columns != n.columns {
                        out.add(
                            Level::Warning,
                            format!("table {table} (database {database}) has other columns on {new_name}"),
                            "check that the application works with the new definition",
                        );
                    }
                }
            }
            if !t.identity {
                out.add(
                    Level::Warning,
                    format!("table {table} (database {database}) has no primary key or replica identity: its UPDATE and DELETE do not replicate"),
                    format!("ALTER TABLE {table} ADD PRIMARY KEY (...), or ALTER TABLE {table} REPLICA IDENTITY FULL"),
                );
            }
            if !published.is_empty() && !published.contains(table) {
                out.add(
                    Level::Loss,
                    format!("table {table} (database {database}) is in no publication the subscription takes: its writes stay on {old_name}"),
                    format!("ALTER PUBLICATION ... ADD TABLE {table} on {old_name}, then REFRESH PUBLICATION on {new_name}"),
                );
            }
        }
        for sub in &in_db {
            let copying = rows(
                &mut new_db,
                &format!(
                    "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), r.srsubstate::text \
                     FROM pg_subscription_rel r JOIN pg_class c ON c.oid = r.srrelid \
                     JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_subscription s ON s.oid = r.srsubid \
                     WHERE s.subname = {} AND r.srsubstate <> 'r' ORDER BY 1",
                    literal(&sub.name)
                ),
                deadline,
            )
            .await?;
            for r in copying {
                let (table, state) = (r.first().cloned().unwrap_or_default(), r.get(1).cloned().unwrap_or_default());
                out.add(
                    Level::Loss,
                    format!(
                        "table {table} (database {database}) is still being copied by subscription {} (state {state})",
                        sub.name
                    ),
                    "wait until the initial copy is done (pg_subscription_rel state r)",
                );
            }
        }
        let old_seq = sequences(&mut old_db, "SELECT", deadline).await?;
        let new_seq = sequences(&mut new_db, "UPDATE", deadline).await?;
        for (name, s) in &old_seq {
            if !s.allowed {
                out.add(
                    Level::Blocking,
                    format!("sequence {name} (database {database}): the monitor user cannot read it on {old_name}"),
                    format!("GRANT pg_read_all_data TO <monitor user> on {old_name}"),
                );
            }
            match new_seq.get(name) {
                None => out.add(
                    Level::Blocking,
                    format!(
                        "sequence {name} (database {database}) is missing on {new_name}: its value cannot be copied"
                    ),
                    format!("create it on {new_name}"),
                ),
                Some(n) if !n.allowed => out.add(
                    Level::Blocking,
                    format!("sequence {name} (database {database}): the monitor user cannot set it on {new_name}"),
                    format!("GRANT pg_write_all_data TO <monitor user> on {new_name}"),
                ),
                Some(n) => out.info(match &s.last {
                    Some(last) => format!(
                        "sequence {name} (database {database}): {last} on {old_name}, {} on {new_name}; set at the cutover",
                        n.last.as_deref().unwrap_or("unused")
                    ),
                    None => format!("sequence {name} (database {database}): unused on {old_name}; left as it is"),
                }),
            }
        }
        let extensions = "SELECT extname FROM pg_extension ORDER BY 1";
        let ext_old: BTreeSet<String> = rows(&mut old_db, extensions, deadline).await?.into_iter().flatten().collect();
        let ext_new: BTreeSet<String> = rows(&mut new_db, extensions, deadline).await?.into_iter().flatten().collect();
        for e in ext_old.difference(&ext_new) {
            out.add(
                Level::Warning,
                format!("extension {e} (database {database}) is on {old_name} only"),
                format!("CREATE EXTENSION {e} on {new_name}"),
            );
        }
        for e in ext_new.difference(&ext_old) {
            out.info(format!("extension {e} (database {database}) is on {new_name} only"));
        }
    }
    let mut findings = out.0;
    findings.sort_by_key(|f| f.level);
    Ok(Check { findings, subscriptions: subs, no_reverse })
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

#[derive(Default)]
struct Findings(Vec<Finding>);

impl Findings {
    fn add(&mut self, level: Level, what: String, todo: impl Into<String>) {
        self.0.push(Finding::new(level, what, todo));
    }

    fn info(&mut self, what: String) {
        self.add(Level::Info, what, String::new());
    }
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

/// The user tables of a database (after `FROM pg_class c`).
const USER_TABLES: &str = "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') \
     AND NOT c.relispartition AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg_toast%'";

/// A table as compared across the sides.
struct Table {
    /// `name type`, in column order.
    columns: Vec<String>,
    /// It has a primary key or a replica identity other than none.
    identity: bool,
}

async fn tables(conn: &mut ControlConn, deadline: Instant) -> Result<BTreeMap<String, Table>, String> {
    let sql = format!(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), \
         coalesce((SELECT string_agg(quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod), ',' ORDER BY a.attnum) \
           FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), ''), \
         (c.relreplident IN ('f', 'i') OR (c.relreplident = 'd' AND EXISTS \
           (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)))::text \
         FROM pg_class c {USER_TABLES} ORDER BY 1"
    );
    Ok(rows(conn, &sql, deadline)
        .await?
        .into_iter()
        .filter_map(|r| match r.as_slice() {
            [name, columns, identity] => Some((
                name.clone(),
                Table {
                    columns: columns.split(',').filter(|c| !c.is_empty()).map(str::to_owned).collect(),
                    identity: identity == "true",
                },
            )),
            _ => None,
        })
        .collect())
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

/// A SQL string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A SQL identifier, quoted.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
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
