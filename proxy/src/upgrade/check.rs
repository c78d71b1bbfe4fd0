//! `upgrade-check`: a read-only report, from both servers, of what a cutover to a logical
//! subscriber would lose or break: its subscriptions and their state, the way back, and per
//! database the tables, keys, publications, initial copies, sequences and extensions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use serde_json::{json, Value};

use super::{databases, ident, literal, rows, sequences, value, Sides, Subscription};
use crate::replication::ControlConn;

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

/// The two servers' names, as findings name them.
#[derive(Clone, Copy)]
struct Names<'a> {
    old: &'a str,
    new: &'a str,
}

/// `upgrade-check`: read-only, on both servers.
///
/// # Errors
/// A server could not be reached or a query failed.
pub async fn check(sides: &Sides<'_>) -> Result<Check, String> {
    let cluster = sides.cluster;
    let names = Names { old: &cluster.backends[sides.old].name, new: &cluster.backends[sides.target].name };
    let (old_name, new_name) = (names.old, names.new);
    let deadline = sides.deadline;
    let (mut old, mut new) = sides.connect("postgres").await?;
    let mut out = Findings::default();

    let version = "SELECT current_setting('server_version')";
    let (v_old, v_new) = (value(&mut old, version, deadline).await?, value(&mut new, version, deadline).await?);
    out.info(format!("versions: {old_name} runs PostgreSQL {v_old}, {new_name} runs {v_new}"));
    let subs = subscriptions(&mut old, &mut new, names, deadline, &mut out).await?;
    let no_reverse = way_back(&mut old, &mut new, names, deadline, &mut out).await?;
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
        let mut db = Database { name: database, names, deadline, old: &mut old_db, new: &mut new_db };
        db.tables(&in_db, &mut out).await?;
        db.copying(&in_db, &mut out).await?;
        db.sequences(&mut out).await?;
        db.extensions(&mut out).await?;
    }
    let mut findings = out.0;
    findings.sort_by_key(|f| f.level);
    Ok(Check { findings, subscriptions: subs, no_reverse })
}

/// The target's subscriptions that take from the old primary (their slot is there), with
/// what is found about each.
async fn subscriptions(
    old: &mut ControlConn,
    new: &mut ControlConn,
    names: Names<'_>,
    deadline: Instant,
    out: &mut Findings,
) -> Result<Vec<Subscription>, String> {
    let (old_name, new_name) = (names.old, names.new);
    let mut subs = Vec::new();
    let subscriptions = rows(
        new,
        "SELECT s.subname, d.datname, coalesce(s.subslotname, ''), s.subenabled::text, \
         pg_has_role(s.subowner, 'USAGE')::text, array_to_string(s.subpublications, ','), s.subsynccommit \
         FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid ORDER BY 1",
        deadline,
    )
    .await?;
    let slots = rows(
        old,
        "SELECT slot_name, coalesce(database, ''), active::text, \
         coalesce((pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, 0)::text \
         FROM pg_replication_slots WHERE slot_type = 'logical'",
        deadline,
    )
    .await?;
    let lags = rows(
        old,
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
    Ok(subs)
}

/// Why the monitor user could not create the way back (`reverse`), if it could not: it needs
/// a publication of every table on the new side and a subscription on the old (a superuser,
/// or on PostgreSQL 16+ pg_create_subscription on the old side).
async fn way_back(
    old: &mut ControlConn,
    new: &mut ControlConn,
    names: Names<'_>,
    deadline: Instant,
    out: &mut Findings,
) -> Result<Option<String>, String> {
    let (old_name, new_name) = (names.old, names.new);
    let superuser = "SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user";
    let creates = "SELECT (rolsuper OR EXISTS (SELECT 1 FROM pg_roles c WHERE c.rolname = 'pg_create_subscription' \
                   AND pg_has_role(current_user, c.oid, 'USAGE')))::text FROM pg_roles WHERE rolname = current_user";
    let mut missing = Vec::new();
    if value(new, superuser, deadline).await? != "true" {
        missing.push(format!("a superuser on {new_name} (CREATE PUBLICATION ... FOR ALL TABLES)"));
    }
    if value(old, creates, deadline).await? != "true" {
        missing
            .push(format!("a superuser on {old_name} (CREATE SUBSCRIPTION; pg_create_subscription on PostgreSQL 16+)"));
    }
    let no_reverse = (!missing.is_empty()).then(|| format!("the monitor user must be {}", missing.join(" and ")));
    match &no_reverse {
        Some(why) => out.info(format!("`switchover ... reverse` cannot create the way back: {why}")),
        None => out.info("`switchover ... reverse` can create the way back".to_owned()),
    }
    Ok(no_reverse)
}

/// One database carried by a subscription, on both sides.
struct Database<'a> {
    name: &'a str,
    names: Names<'a>,
    deadline: Instant,
    old: &'a mut ControlConn,
    new: &'a mut ControlConn,
}

impl Database<'_> {
    /// Tables missing or different on the new side, without a key, or in no publication.
    async fn tables(&mut self, in_db: &[&Subscription], out: &mut Findings) -> Result<(), String> {
        let (database, old_name, new_name, deadline) = (self.name, self.names.old, self.names.new, self.deadline);
        let tables_old = tables(self.old, deadline).await?;
        let tables_new = tables(self.new, deadline).await?;
        let publications: Vec<String> = in_db.iter().flat_map(|s| s.publications.iter().map(|p| literal(p))).collect();
        let published: BTreeSet<String> = if publications.is_empty() {
            BTreeSet::new()
        } else {
            rows(
                self.old,
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
        Ok(())
    }

    /// Tables still in their subscription's initial copy.
    async fn copying(&mut self, in_db: &[&Subscription], out: &mut Findings) -> Result<(), String> {
        let (database, deadline) = (self.name, self.deadline);
        for sub in in_db {
            let copying = rows(
                self.new,
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
        Ok(())
    }

    /// Sequences: readable on the old side, present and settable on the new.
    async fn sequences(&mut self, out: &mut Findings) -> Result<(), String> {
        let (database, old_name, new_name, deadline) = (self.name, self.names.old, self.names.new, self.deadline);
        let old_seq = sequences(self.old, "SELECT", deadline).await?;
        let new_seq = sequences(self.new, "UPDATE", deadline).await?;
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
        Ok(())
    }

    /// Extensions on one side only.
    async fn extensions(&mut self, out: &mut Findings) -> Result<(), String> {
        let (database, old_name, new_name, deadline) = (self.name, self.names.old, self.names.new, self.deadline);
        let extensions = "SELECT extname FROM pg_extension ORDER BY 1";
        let ext_old: BTreeSet<String> = rows(self.old, extensions, deadline).await?.into_iter().flatten().collect();
        let ext_new: BTreeSet<String> = rows(self.new, extensions, deadline).await?.into_iter().flatten().collect();
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
        Ok(())
    }
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
