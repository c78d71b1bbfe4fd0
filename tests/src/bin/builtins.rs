//! Regenerates the classifier's lists of the servers' own read-only built-in functions
//! (`protocol/src/classify/builtins/*.txt`) from the servers' catalogs: PostgreSQL's `pg_proc`
//! (immutable and stable functions of `pg_catalog`, set-returning ones included) and MariaDB's `mysql.help_topic` (the
//! function categories of its help). Each list leaves out the functions that change something
//! or answer for the server or connection they run on ([`PG_DENIED`], [`MYSQL_DENIED`]): they
//! go to the primary. `scripts/regen-builtins` runs it; review the diff before committing.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result};

/// PostgreSQL functions left out although stable or immutable, by prefix: the server's own
/// state (WAL positions, recovery, its process, its files, statistics), transaction ids a
/// standby cannot assign, and the session's own connection.
const PG_DENIED: &[&str] = &[
    "current_setting",
    "inet_client_",
    "inet_server_",
    "pg_backend_pid",
    "pg_blocking_pids",
    "pg_conf_load_time",
    "pg_control_",
    "pg_current_",
    "pg_cursor",
    "pg_get_backend_memory_contexts",
    "pg_get_replication_slots",
    "pg_get_shmem",
    "pg_get_wal",
    "pg_hba_file_rules",
    "pg_ident_file_mappings",
    "pg_is_in_recovery",
    "pg_is_other_temp_schema",
    "pg_is_wal_replay_paused",
    "pg_last_",
    "pg_listening_channels",
    "pg_lock_status",
    "pg_ls_",
    "pg_my_temp_schema",
    "pg_notification_queue_usage",
    "pg_postmaster_start_time",
    "pg_prepared_",
    "pg_read_",
    "pg_replication_origin",
    "pg_safe_snapshot_blocking_pids",
    "pg_show_",
    "pg_snapshot_",
    "pg_stat",
    "pg_trigger_depth",
    "pg_wal",
    "pg_xact_",
    "txid_",
];

/// MariaDB functions left out, by prefix: connection-local values, locks, waits on
/// replication, server files and state, sequences.
const MYSQL_DENIED: &[&str] = &[
    "benchmark",
    "binlog_gtid_pos",
    "connection_id",
    "found_rows",
    "get_lock",
    "is_free_lock",
    "is_used_lock",
    "last_insert_id",
    "lastval",
    "load_file",
    "master_gtid_wait",
    "master_pos_wait",
    "nextval",
    "release_",
    "row_count",
    "setval",
    "wsrep_",
];

fn denied(name: &str, list: &[&str]) -> bool {
    list.iter().any(|p| name.starts_with(p))
}

/// A plain function name (letters, digits, underscores), lower-case: help topics also name
/// operators and syntax.
fn plain(name: &str) -> Option<String> {
    let name = name.trim().to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    ok.then_some(name)
}

/// The names among `candidates` that MariaDB does not know as functions: `SELECT name()`
/// fails with 1305 ("FUNCTION ... does not exist") for them, where a built-in fails with a
/// wrong argument count or a syntax error, or answers (help keywords include plain words).
fn not_functions(my: &sqlswitch_tests::mysql::Topology, candidates: &BTreeSet<String>) -> Result<BTreeSet<String>> {
    use std::io::Write as _;
    let socket = my.dir.join(format!("{}.sock", my.primary().name));
    let mut child = std::process::Command::new("mariadb")
        .arg(format!("--socket={}", socket.display()))
        .args(["-uroot", "-N", "-B", "--force", "mysql"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running mariadb")?;
    let mut input = child.stdin.take().context("mariadb's stdin")?;
    for name in candidates {
        writeln!(input, "SELECT {name}();")?;
    }
    drop(input);
    let out = child.wait_with_output()?;
    let errors = String::from_utf8_lossy(&out.stderr);
    // "ERROR 1305 (42000) at line 7: FUNCTION mysql.addition does not exist"
    Ok(errors
        .lines()
        .filter(|l| l.starts_with("ERROR 1305"))
        .filter_map(|l| l.split("FUNCTION mysql.").nth(1)?.split(' ').next().map(str::to_ascii_lowercase))
        .collect())
}

fn write(path: &Path, header: &str, names: &BTreeSet<String>) -> Result<()> {
    let mut text = String::from(header);
    for n in names {
        text.push_str(n);
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn main() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = root.join("protocol/src/classify/builtins");
    std::fs::create_dir_all(&out)?;

    eprintln!("starting PostgreSQL...");
    let pg = sqlswitch_tests::pg::Topology::start(0)?;
    let version = pg.psql_admin(pg.primary(), "SHOW server_version", "postgres")?;
    let rows = pg.psql_admin(
        pg.primary(),
        "SELECT DISTINCT p.proname FROM pg_catalog.pg_proc p \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = 'pg_catalog' AND p.provolatile IN ('i', 's') AND p.prokind IN ('f', 'a', 'w') \
         ORDER BY 1",
        "postgres",
    )?;
    let names: BTreeSet<String> = rows.lines().filter_map(plain).filter(|n| !denied(n, PG_DENIED)).collect();
    let header = format!(
        "# PostgreSQL {}: immutable and stable functions of pg_catalog (pg_proc.provolatile), less\n\
         # those that answer for the server or the connection (tests/src/bin/builtins.rs).\n\
         # Regenerated by scripts/regen-builtins.\n",
        version.trim()
    );
    write(&out.join("postgres.txt"), &header, &names)?;
    eprintln!("{} PostgreSQL functions", names.len());
    drop(pg);

    eprintln!("starting MariaDB...");
    let my = sqlswitch_tests::mysql::Topology::start(0)?;
    let version = my.sql(my.primary(), "SELECT VERSION()")?;
    // Every category of functions or operators, and the geographic ones (whose names do not
    // say so): their topics' names (markdown-escaped: `GROUP\_CONCAT`) and the keywords
    // related to those topics (JSON functions are keywords only, in some versions' help).
    let categories = "SELECT c.help_category_id FROM mysql.help_category c \
         LEFT JOIN mysql.help_category p ON p.help_category_id = c.parent_category_id \
         WHERE c.name LIKE '%Functions%' OR c.name LIKE '%operators%' \
         OR c.name LIKE 'Geographic%' OR p.name LIKE 'Geographic%'";
    let rows = my.sql(
        my.primary(),
        &format!(
            "SELECT REPLACE(t.name, '\\\\', '') FROM mysql.help_topic t WHERE t.help_category_id IN ({categories}) \
             UNION SELECT k.name FROM mysql.help_keyword k \
             JOIN mysql.help_relation r ON r.help_keyword_id = k.help_keyword_id \
             JOIN mysql.help_topic t ON t.help_topic_id = r.help_topic_id \
             WHERE t.help_category_id IN ({categories})"
        ),
    )?;
    let candidates: BTreeSet<String> = rows.lines().filter_map(plain).filter(|n| !denied(n, MYSQL_DENIED)).collect();
    let unknown = not_functions(&my, &candidates)?;
    let names: BTreeSet<String> = candidates.difference(&unknown).cloned().collect();
    anyhow::ensure!(names.len() > 100, "mysql.help_topic gave only {} functions: is it filled?", names.len());
    let header = format!(
        "# MariaDB {}: the functions of mysql.help_topic's categories of functions and operators\n\
         # (topics, and their keywords), less those that change something or answer for the\n\
         # server or the connection (tests/src/bin/builtins.rs). Regenerated by\n\
         # scripts/regen-builtins.\n",
        version.trim()
    );
    write(&out.join("mariadb.txt"), &header, &names)?;
    eprintln!("{} MariaDB functions", names.len());
    drop(my);
    Ok(())
}
