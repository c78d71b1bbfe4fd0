//! Re-pointing after a switchover, so the cluster is whole again: every other replica streams
//! from the new primary. MariaDB/MySQL: each replica gets `CHANGE MASTER TO` the new primary
//! (GTID, from its own position), and the old primary becomes a replica too (its stale
//! `gtid_slave_pos` set to its own binlog position first). PostgreSQL: each standby gets
//! `primary_conninfo` for the new primary (`ALTER SYSTEM` and a reload, PostgreSQL 13+; its
//! replication slot is created on the new primary when it uses one); a PostgreSQL primary cannot
//! become a standby without a restart, so the old one stays fenced and the answer prints how to
//! rejoin it. Each replica is confirmed streaming from the new primary, or the answer says why not.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlswitch_config::{Credentials, Protocol};
use tracing::{info, warn};

use crate::cluster::{BackendState, Cluster};
use crate::replication::{ControlConn, Dialect, Role};

/// How long a re-pointed replica has to start streaming.
const STREAMING_WITHIN: Duration = Duration::from_secs(15);

/// The answer's `replicas` when re-pointing was not done: asked not to (`no_repoint`), or no
/// `replication` credentials.
pub fn skipped(asked: bool) -> Vec<Value> {
    let why = if asked { "no `replication` credentials in the config" } else { "no_repoint" };
    vec![json!({ "backend": "*", "ok": false, "detail": format!("replicas not re-pointed: {why}") })]
}

/// Re-points every backend but `new` (the new primary, reached by `new_conn`) at it; `old` is
/// the old primary. `step` hears one line per backend, with when its work began. Returns one result per backend.
pub async fn run(
    cluster: &Cluster,
    old: usize,
    new: usize,
    new_conn: &mut ControlConn,
    step: &mut (dyn FnMut(Instant, String) + Send),
) -> Vec<Value> {
    let Some(creds) = cluster.config.replication.as_ref() else { return Vec::new() };
    let new_backend = &cluster.backends[new];
    let Some((host, port)) = host_port(&new_backend.address) else {
        let detail = format!(
            "{} is addressed as {:?}, not host:port: replicas cannot be pointed at it",
            new_backend.name, new_backend.address
        );
        step(Instant::now(), detail.clone());
        return vec![json!({ "backend": "*", "ok": false, "detail": detail })];
    };
    let table = cluster.table.load_full();
    let mut results = Vec::new();
    for (i, backend) in cluster.backends.iter().enumerate() {
        // Another group is a cluster of its own (the old one, after an upgrade cutover).
        if i == new
            || backend.group_id != new_backend.group_id
            || table.states.get(i).is_none_or(|s| *s == BackendState::Removed)
        {
            continue;
        }
        let at = Instant::now();
        let outcome = repoint_one(cluster, i, i == old, creds, &host, port, new_conn).await;
        let (ok, detail) = match outcome {
            Ok(detail) => (true, detail),
            Err(detail) => (false, detail),
        };
        if ok {
            info!(cluster = %cluster.config.name, backend = %backend.name, detail = %detail, "re-pointed");
        } else {
            warn!(cluster = %cluster.config.name, backend = %backend.name, detail = %detail, "not re-pointed");
        }
        step(at, format!("{}: {detail}", backend.name));
        results.push(json!({ "backend": backend.name, "ok": ok, "detail": detail }));
    }
    results
}

/// Re-points backend `i`; `Ok` says what was done, `Err` why it is not streaming.
async fn repoint_one(
    cluster: &Cluster,
    i: usize,
    was_primary: bool,
    creds: &Credentials,
    host: &str,
    port: u16,
    new_conn: &mut ControlConn,
) -> Result<String, String> {
    let dialect = Dialect::of(cluster.config.protocol);
    let to = cluster.control_target(i).ok_or("no monitor credentials")?;
    let mut conn = ControlConn::connect(&to, "sqlswitch-switchover").await.map_err(|e| {
        if was_primary {
            format!(
                "the old primary does not answer ({e}); before it serves again it must become a replica of \
                 {host}:{port} (MariaDB/MySQL: CHANGE MASTER TO it; PostgreSQL: pg_rewind and standby.signal), \
                 never a second primary"
            )
        } else {
            format!("connect: {e}")
        }
    })?;
    let role = conn.role(dialect).await?;
    match cluster.config.protocol {
        Protocol::Mysql => {
            if !was_primary && role != Role::Replica {
                return Err(format!("left alone: it is {}, not a replica", role.name()));
            }
            let mut statements = vec!["STOP SLAVE".to_owned()];
            if was_primary {
                // Its gtid_slave_pos is from before it was the primary: start from what it has.
                statements.push("SET GLOBAL gtid_slave_pos = @@gtid_binlog_pos".to_owned());
            }
            statements.push(format!(
                "CHANGE MASTER TO MASTER_HOST = {}, MASTER_PORT = {port}, MASTER_USER = {}, MASTER_PASSWORD = {}, \
                 MASTER_USE_GTID = slave_pos",
                mysql_literal(host),
                mysql_literal(&creds.user),
                mysql_literal(creds.password.expose())
            ));
            statements.push("START SLAVE".to_owned());
            statements.push("SET GLOBAL read_only = 1".to_owned());
            // `CHANGE MASTER` carries the password: kept out of the general and slow logs.
            let exposed = conn.quiet(dialect).await;
            for sql in &statements {
                conn.exec(sql).await.map_err(|e| format!("{}: {e}", redact(sql)))?;
            }
            wait_streaming(&mut conn, cluster.config.protocol, port).await?;
            let what = if was_primary { "the old primary now replicates" } else { "replicates" };
            Ok(format!("{what} from {host}:{port} (GTID, slave_pos), read_only = 1{}", note(exposed)))
        }
        Protocol::Postgres => {
            if role != Role::Replica {
                if was_primary {
                    return Err(format!(
                        "the old primary stays fenced (a PostgreSQL primary becomes a standby only with a restart); \
                         to rejoin it: stop it, run `CHECKPOINT` on the new primary, then `pg_rewind -D <its data \
                         directory> --source-server='host={host} port={port} user=<superuser>'`, create standby.signal, \
                         set primary_conninfo to host={host} port={port} and start it: the monitor then sees it \
                         replicate and sends it reads"
                    ));
                }
                return Err(format!("left alone: it is {}, not a standby", role.name()));
            }
            let slot = conn.value("SHOW primary_slot_name").await.unwrap_or_default();
            if !slot.is_empty() {
                let sql = format!(
                    "SELECT count(pg_create_physical_replication_slot({0}))::text FROM (SELECT 1) one \
                     WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = {0})",
                    crate::replication::literal(&slot)
                );
                new_conn.exec(&sql).await.map_err(|e| format!("creating slot {slot:?} on the new primary: {e}"))?;
            }
            let name = &cluster.backends[i].name;
            let conninfo = pg_conninfo(host, port, creds, &[("application_name", name)]);
            let alter = format!("ALTER SYSTEM SET primary_conninfo = {}", crate::replication::literal(&conninfo));
            // A password here lands in postgresql.auto.conf and in the server's log at the reload
            // (which prints the new value), whatever this session's logging: the config advice says
            // to leave it out and give the standby a .pgpass.
            conn.exec(&alter).await.map_err(|e| format!("ALTER SYSTEM SET primary_conninfo: {e}"))?;
            conn.exec("SELECT pg_reload_conf()").await.map_err(|e| format!("pg_reload_conf(): {e}"))?;
            wait_streaming(&mut conn, cluster.config.protocol, port).await?;
            let via = if slot.is_empty() { String::new() } else { format!(" through slot {slot:?}") };
            Ok(format!("streams from {host}:{port}{via}"))
        }
    }
}

/// Waits until the replica on `conn` streams from the server on `port`.
async fn wait_streaming(conn: &mut ControlConn, protocol: Protocol, port: u16) -> Result<(), String> {
    let until = Instant::now() + STREAMING_WITHIN;
    let mut last;
    loop {
        last = match protocol {
            Protocol::Postgres => {
                let sql =
                    "SELECT coalesce(status, '') || ' ' || coalesce(sender_port::text, '') FROM pg_stat_wal_receiver";
                let answer = conn.value(sql).await.unwrap_or_else(|e| e);
                if answer == format!("streaming {port}") {
                    return Ok(());
                }
                format!("wal receiver: {answer:?}")
            }
            Protocol::Mysql => {
                let rows = conn.exec("SHOW SLAVE STATUS").await.map_err(|e| e.to_string())?;
                let row = rows.into_iter().next().unwrap_or_default();
                let col = |n: usize| row.get(n).cloned().flatten().unwrap_or_default();
                // Master_Port, Slave_IO_Running, Slave_SQL_Running.
                let (master_port, io, sql) = (col(3), col(10), col(11));
                if master_port == port.to_string() && io == "Yes" && sql == "Yes" {
                    return Ok(());
                }
                format!("master port {master_port}, IO thread {io:?}, SQL thread {sql:?}")
            }
        };
        if Instant::now() >= until {
            return Err(format!("not streaming from the new primary after {STREAMING_WITHIN:?}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `host` and `port` of a `host:port` address (`[v6]:port` too); `None` for a socket path.
pub(crate) fn host_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty() && !host.starts_with('/')).then_some(())?;
    Some((host.to_owned(), port.parse().ok()?))
}

/// A MySQL string literal.
fn mysql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A libpq connection string to `host:port` as `creds`, with `extra` keywords.
pub(crate) fn pg_conninfo(host: &str, port: u16, creds: &Credentials, extra: &[(&str, &str)]) -> String {
    let mut conninfo = format!("host={} port={port} user={}", conninfo_value(host), conninfo_value(&creds.user));
    for (key, value) in extra {
        conninfo.push_str(&format!(" {key}={}", conninfo_value(value)));
    }
    if !creds.password.expose().is_empty() {
        conninfo.push_str(&format!(" password={}", conninfo_value(creds.password.expose())));
    }
    conninfo
}

/// A libpq connection-string value.
fn conninfo_value(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// What [`ControlConn::quiet`] could not turn off, as the end of a step's detail.
fn note(exposed: Option<String>) -> String {
    exposed.map(|e| format!("; {e}")).unwrap_or_default()
}

/// A statement as it may be shown: the password left out.
fn redact(sql: &str) -> String {
    match sql.find("MASTER_PASSWORD") {
        Some(at) => format!("{} ...", sql.get(..at).unwrap_or_default()),
        None => sql.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_quoting() {
        assert_eq!(host_port("127.0.0.1:5432"), Some(("127.0.0.1".into(), 5432)));
        assert_eq!(host_port("[::1]:3306"), Some(("::1".into(), 3306)));
        assert_eq!(host_port("db.internal:6543"), Some(("db.internal".into(), 6543)));
        assert_eq!(host_port("/run/postgresql/.s.PGSQL.5432"), None);
        assert_eq!(host_port("/tmp/mysql.sock"), None);
        assert_eq!(mysql_literal(r"it's\"), r"'it\'s\\'");
        assert_eq!(crate::replication::literal("it's"), "'it''s'");
        assert_eq!(conninfo_value(r"p'w\"), r"'p\'w\\'");
        let sql = "CHANGE MASTER TO MASTER_HOST = 'h', MASTER_PASSWORD = 'secret', MASTER_USE_GTID = slave_pos";
        assert!(!redact(sql).contains("secret"));
    }
}
