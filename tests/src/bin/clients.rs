//! `sqlswitch-clients` (run by `scripts/regress`): a client library's own test suite (pytest),
//! run against a real primary with two replicas directly, through sqlswitch with replicas, and
//! through sqlswitch primary-only, with pass/fail compared test by test. A test listed in the
//! known-differences file (`<suite> <test id>  # why`) may differ; any other difference fails.
//! Writes `report.txt` in the output directory; exits 1 on an unlisted difference.
//!
//! Usage: `sqlswitch-clients postgres|mysql SUITE OUTDIR KNOWN_FILE -- COMMAND...`, where the
//! command runs pytest verbosely (`-v`) in the suite's directory; the connection goes in the
//! suite's own environment variables (psycopg2's `PSYCOPG2_TESTDB_*`, MariaDB
//! Connector/Python's `TEST_DB_*`, and `SUITE_DB_*`, which Django's settings in
//! `tests/regress/django/` read). Django's runner (unittest, `-v 2`) is read as well as
//! pytest's.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use sqlswitch_tests::proxy::{config_text, mysql_config_text, start_text, without_backend};

/// The suites' login: a superuser (they create users, databases and extensions), known to the
/// proxy by this password.
const USER: (&str, &str) = ("suite", "suite-pw");

enum Servers {
    Pg(sqlswitch_tests::pg::Topology),
    My(sqlswitch_tests::mysql::Topology),
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, protocol, suite, outdir, known, dashes, command @ ..] = args.as_slice() else {
        bail!("usage: sqlswitch-clients postgres|mysql SUITE OUTDIR KNOWN_FILE -- COMMAND...");
    };
    if dashes != "--" || command.is_empty() {
        bail!("usage: sqlswitch-clients postgres|mysql SUITE OUTDIR KNOWN_FILE -- COMMAND...");
    }
    let outdir = PathBuf::from(outdir);
    std::fs::create_dir_all(&outdir)?;
    let known = known_differences(&std::fs::read_to_string(known).context("KNOWN_FILE")?, suite);
    eprintln!("{suite}: starting a primary and two replicas...");
    let (servers, full) = start(protocol)?;
    let mut primary_only = full.clone();
    for name in ["replica1", "replica2"] {
        primary_only = without_backend(&primary_only, name);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut results = Vec::new();
    for (label, config) in [("direct", None), ("replicas", Some(&full)), ("primary-only", Some(&primary_only))] {
        let daemon = match config {
            Some(text) => Some(runtime.block_on(start_text(text))?),
            None => None,
        };
        let port = match (&daemon, &servers) {
            (Some(d), _) => d.addr("app", false).context("the proxy's address")?.port(),
            (None, Servers::Pg(t)) => t.primary().port,
            (None, Servers::My(t)) => t.primary().port,
        };
        eprintln!("{suite}: running {label} (port {port})...");
        let mut cmd = Command::new(&command[0]);
        cmd.args(&command[1..]);
        for (k, v) in env(protocol, port) {
            cmd.env(k, v);
        }
        let out = cmd.output().context("the suite's command")?;
        let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        std::fs::write(outdir.join(format!("{label}.log")), &log)?;
        let statuses = statuses(&log);
        if statuses.is_empty() {
            bail!("{suite} {label}: no test ran (see {}/{label}.log)", outdir.display());
        }
        results.push((label, statuses));
        drop(daemon);
    }
    drop(runtime);
    drop(servers);
    let (summary, unlisted) = compare(suite, &results, &known);
    std::fs::write(outdir.join("report.txt"), &summary)?;
    print!("{summary}");
    if unlisted > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// The servers, with the suite's superuser, and the config of sqlswitch in front of them.
fn start(protocol: &str) -> Result<(Servers, String)> {
    let user = format!("\n[[cluster.user]]\nname = \"{}\"\npassword = \"{}\"\n", USER.0, USER.1);
    match protocol {
        "postgres" => {
            let t = sqlswitch_tests::pg::Topology::start(2)?;
            let sql = format!(
                "CREATE ROLE {u} SUPERUSER LOGIN PASSWORD '{p}'; CREATE DATABASE suite OWNER {u}",
                u = USER.0,
                p = USER.1
            );
            for statement in sql.split("; ") {
                t.psql_admin(t.primary(), statement, "postgres")?;
            }
            t.wait_replicas_caught_up()?;
            let config = config_text(&t, "app", "127.0.0.1:0", "127.0.0.1:0", None, "") + &user;
            Ok((Servers::Pg(t), config))
        }
        "mysql" => {
            let t = sqlswitch_tests::mysql::Topology::start(2)?;
            t.sql(
                t.primary(),
                &format!(
                    "CREATE USER '{u}'@'%' IDENTIFIED BY '{p}'; GRANT ALL ON *.* TO '{u}'@'%' WITH GRANT OPTION; \
                     CREATE DATABASE suite",
                    u = USER.0,
                    p = USER.1
                ),
            )?;
            for n in &t.nodes {
                t.sql(n, "SET GLOBAL log_bin_trust_function_creators = 1")?;
            }
            t.wait_replicas_caught_up()?;
            let config = mysql_config_text(&t, "app", "") + &user;
            Ok((Servers::My(t), config))
        }
        other => bail!("unknown protocol {other}"),
    }
}

/// The suite's connection settings, in its own variables.
fn env(protocol: &str, port: u16) -> Vec<(&'static str, String)> {
    let port = port.to_string();
    let common = [
        ("SUITE_DB_HOST", "127.0.0.1".to_owned()),
        ("SUITE_DB_PORT", port.clone()),
        ("SUITE_DB_USER", USER.0.into()),
        ("SUITE_DB_PASSWORD", USER.1.into()),
        ("SUITE_DB_NAME", "suite".into()),
    ];
    let own = if protocol == "postgres" {
        vec![
            ("PSYCOPG2_TESTDB", "suite".into()),
            ("PSYCOPG2_TESTDB_HOST", "127.0.0.1".into()),
            ("PSYCOPG2_TESTDB_PORT", port),
            ("PSYCOPG2_TESTDB_USER", USER.0.into()),
            ("PSYCOPG2_TESTDB_PASSWORD", USER.1.into()),
        ]
    } else {
        vec![
            ("TEST_DB_DATABASE", "suite".into()),
            ("TEST_DB_HOST", "127.0.0.1".into()),
            ("TEST_DB_PORT", port),
            ("TEST_DB_USER", USER.0.into()),
            ("TEST_DB_PASSWORD", USER.1.into()),
        ]
    };
    own.into_iter().chain(common).collect()
}

/// `test id -> PASSED | FAILED | SKIPPED | ERROR | XFAIL | XPASS` from pytest's verbose lines
/// (`tests/test_x.py::Class::test_y PASSED   [ 5%]`) or unittest's (`test_y (app.tests.Class.
/// test_y) ... ok`, the outcome maybe on the next line, after the test's docstring).
fn statuses(log: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in log.lines() {
        let mut words = line.split_whitespace();
        let (Some(id), Some(status)) = (words.next(), words.next()) else { continue };
        let known = ["PASSED", "FAILED", "SKIPPED", "ERROR", "XFAIL", "XPASS"];
        if id.contains("::") && known.contains(&status) {
            out.insert(id.to_owned(), status.to_owned());
            continue;
        }
        // unittest: `name (dotted.id)` starts a test.
        if let Some(dotted) = status.strip_prefix('(').and_then(|s| s.strip_suffix(')')) {
            if dotted.contains('.') && !id.contains('(') {
                current = Some(dotted.to_owned());
            }
        }
        let Some((_, outcome)) = line.rsplit_once(" ... ") else { continue };
        let status = match outcome.trim() {
            "ok" => "PASSED",
            "FAIL" => "FAILED",
            "ERROR" => "ERROR",
            "expected failure" => "XFAIL",
            "unexpected success" => "XPASS",
            o if o.starts_with("skipped") => "SKIPPED",
            _ => continue,
        };
        if let Some(id) = current.take() {
            out.insert(id, status.to_owned());
        }
    }
    out
}

/// The tests of `suite` listed as differing for a reason (`<suite> <test id>  # why`).
fn known_differences(text: &str, suite: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (entry, why) = line.split_once('#').unwrap_or((line, ""));
            let mut words = entry.split_whitespace();
            (words.next()? == suite).then(|| (words.next().unwrap_or_default().to_owned(), why.trim().to_owned()))
        })
        .collect()
}

/// The report, and how many differences are not listed.
fn compare(
    suite: &str,
    results: &[(&str, BTreeMap<String, String>)],
    known: &BTreeMap<String, String>,
) -> (String, usize) {
    let Some((_, direct)) = results.first() else { return (String::new(), 0) };
    let mut summary = String::new();
    let mut unlisted = 0;
    for (label, theirs) in results.iter().skip(1) {
        let differing: Vec<(&String, &String)> = direct.iter().filter(|(t, s)| theirs.get(*t) != Some(s)).collect();
        let new: Vec<String> = differing
            .iter()
            .filter(|(t, _)| !known.contains_key(*t))
            .map(|(t, s)| format!("{t} ({s} -> {})", theirs.get(*t).map_or("missing", String::as_str)))
            .collect();
        unlisted += new.len();
        summary += &format!(
            "{suite} {label}: {} tests ({} pass directly), {} differ ({} listed in known-differences), unlisted: {}\n",
            direct.len(),
            direct.values().filter(|s| *s == "PASSED").count(),
            differing.len(),
            differing.len() - new.len(),
            if new.is_empty() { "none".to_owned() } else { new.join(" ") }
        );
    }
    summary += &format!("clients {suite}: {} tests, {unlisted} unlisted differences\n", direct.len());
    (summary, unlisted)
}

#[cfg(test)]
mod tests {
    /// pytest's and unittest's verbose lines, Django's docstring lines between a test and its
    /// outcome included.
    #[test]
    fn statuses_read_pytest_and_unittest() {
        let log = "\
tests/test_a.py::T::test_one PASSED   [ 5%]
tests/test_a.py::T::test_two FAILED   [10%]
test_save (basic.tests.ModelTest.test_save) ... ok
test_doc (basic.tests.ModelTest.test_doc)
Saving an unchanged object updates it. ... FAIL
test_skip (update.tests.U.test_skip) ... skipped 'Database doesn't support feature(s): x'
test_err (delete.tests.D.test_err) ... ERROR
test_xf (bulk_create.tests.B.test_xf) ... expected failure
Creating test database for alias 'default'...
";
        let s = super::statuses(log);
        let get = |id: &str| s.get(id).map(String::as_str);
        assert_eq!(get("tests/test_a.py::T::test_one"), Some("PASSED"));
        assert_eq!(get("tests/test_a.py::T::test_two"), Some("FAILED"));
        assert_eq!(get("basic.tests.ModelTest.test_save"), Some("PASSED"));
        assert_eq!(get("basic.tests.ModelTest.test_doc"), Some("FAILED"));
        assert_eq!(get("update.tests.U.test_skip"), Some("SKIPPED"));
        assert_eq!(get("delete.tests.D.test_err"), Some("ERROR"));
        assert_eq!(get("bulk_create.tests.B.test_xf"), Some("XFAIL"));
        assert_eq!(s.len(), 7);
    }
}
