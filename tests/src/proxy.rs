//! An in-process sqlswitch in front of a [`Topology`](crate::pg::Topology).

use std::path::Path;

use anyhow::Result;
use sqlswitch::Daemon;
use sqlswitch_config::Config;

use crate::pg::{Topology, ANON, APP, DATABASE, MD5_USER, MONITOR, TRUST_USER};

/// Config text for a cluster named `name` over `topo`, listening on `listen` and
/// `read_only_listen`; `extra` is appended inside the `[[cluster]]` table.
pub fn config_text(
    topo: &Topology,
    name: &str,
    listen: &str,
    read_only_listen: &str,
    metrics: Option<&str>,
    extra: &str,
) -> String {
    let mut t = String::new();
    t += "[admin]\nsocket = \"/tmp/sqlswitch-test.sock\"\n";
    if let Some(m) = metrics {
        t += &format!("metrics = \"{m}\"\n");
    }
    t += &format!(
        "\n[[cluster]]\nname = \"{name}\"\nprotocol = \"postgres\"\nlisten = \"{listen}\"\nread_only_listen = \"{read_only_listen}\"\n\
         read_only_users = [\"{anon}\"]\nmonitor = {{ user = \"{mu}\", password = \"{mp}\" }}\n{extra}\n",
        anon = ANON.0,
        mu = MONITOR.0,
        mp = MONITOR.1,
    );
    t + &users_and_backends(&[APP, ANON, MD5_USER, TRUST_USER], topo.nodes.iter().map(|n| (n.name.as_str(), n.port)))
}

/// The `[[cluster.user]]` and `[[cluster.backend]]` tables: the first node is the primary.
fn users_and_backends<'a>(users: &[(&str, &str)], nodes: impl Iterator<Item = (&'a str, u16)>) -> String {
    let mut t = String::new();
    for (user, pw) in users {
        t += &format!("\n[[cluster.user]]\nname = \"{user}\"\npassword = \"{pw}\"\n");
    }
    for (i, (name, port)) in nodes.enumerate() {
        let role = if i == 0 { "primary" } else { "replica" };
        t += &format!("\n[[cluster.backend]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\nrole = \"{role}\"\n");
    }
    t
}

/// Starts sqlswitch on `127.0.0.1:0` in front of `topo`.
///
/// # Errors
/// The config did not validate or a listener could not bind.
pub async fn start(topo: &Topology, extra: &str) -> Result<Daemon> {
    start_threads(topo, extra, sqlswitch::workers::default_threads()).await
}

/// As [`start`], with `threads` session threads (sessions alternate between them).
///
/// # Errors
/// The config did not validate or a listener could not bind.
pub async fn start_threads(topo: &Topology, extra: &str, threads: usize) -> Result<Daemon> {
    let text = config_text(topo, "app", "127.0.0.1:0", "127.0.0.1:0", None, extra);
    let config = Config::parse(&text, Path::new("<test>"), |_| None)?;
    // Tests run many daemons at once: none binds the (shared) admin socket path; tests drive
    // `Daemon::control` directly, and the admin socket test binds its own path.
    Daemon::launch(config, false, threads).await
}

/// A libpq-style connection string to `port` as `(user, password)`, database `app`.
pub fn conn_str(port: u16, (user, password): (&str, &str)) -> String {
    format!("host=127.0.0.1 port={port} user={user} password={password} dbname={DATABASE} connect_timeout=10")
}

/// Config text for a MySQL cluster named `name` over a MariaDB topology.
pub fn mysql_config_text(topo: &crate::mysql::Topology, name: &str, extra: &str) -> String {
    let t = format!(
        "[admin]\nsocket = \"/tmp/sqlswitch-test.sock\"\n\n[[cluster]]\nname = \"{name}\"\nprotocol = \"mysql\"\n\
         listen = \"127.0.0.1:0\"\nread_only_listen = \"127.0.0.1:0\"\nread_only_users = [\"{anon}\"]\n\
         monitor = {{ user = \"{mu}\", password = \"{mp}\" }}\n{extra}\n",
        anon = ANON.0,
        mu = MONITOR.0,
        mp = MONITOR.1,
    );
    t + &users_and_backends(&[APP, ANON], topo.nodes.iter().map(|n| (n.name.as_str(), n.port)))
}

/// Starts sqlswitch on `127.0.0.1:0` in front of a MariaDB topology.
///
/// # Errors
/// The config did not validate or a listener could not bind.
pub async fn start_mysql(topo: &crate::mysql::Topology, extra: &str) -> Result<Daemon> {
    let config = Config::parse(&mysql_config_text(topo, "app", extra), Path::new("<test>"), |_| None)?;
    Daemon::start_with(config, false).await
}

/// A `mysql://` URL to `port` as `(user, password)`, database `app`. `prefer_socket=false`:
/// otherwise mysql_async, seeing a local server, reconnects to the `@@socket` the backend
/// reports and bypasses the proxy.
pub fn mysql_url(port: u16, (user, password): (&str, &str)) -> String {
    format!("mysql://{user}:{password}@127.0.0.1:{port}/{DATABASE}?prefer_socket=false")
}

/// `text` with each backend `address = "127.0.0.1:<port>"` replaced by the Unix socket path
/// `socket(port)`.
pub fn over_unix_sockets(text: &str, ports: &[u16], socket: impl Fn(u16) -> std::path::PathBuf) -> String {
    let mut t = text.to_owned();
    for port in ports {
        t = t
            .replace(&format!("address = \"127.0.0.1:{port}\""), &format!("address = \"{}\"", socket(*port).display()));
    }
    t
}

/// Starts sqlswitch in front of `topo`, reaching its servers over their Unix sockets.
///
/// # Errors
/// The config did not validate or a listener could not bind.
pub async fn start_unix(topo: &Topology, extra: &str) -> Result<Daemon> {
    let text = config_text(topo, "app", "127.0.0.1:0", "127.0.0.1:0", None, extra);
    let ports: Vec<u16> = topo.nodes.iter().map(|n| n.port).collect();
    let text = over_unix_sockets(&text, &ports, |port| topo.dir.join("sock").join(format!(".s.PGSQL.{port}")));
    Daemon::start_with(Config::parse(&text, Path::new("<test>"), |_| None)?, false).await
}

/// Starts sqlswitch in front of a MariaDB topology, reaching its servers over their Unix sockets.
///
/// # Errors
/// The config did not validate or a listener could not bind.
pub async fn start_mysql_unix(topo: &crate::mysql::Topology, extra: &str) -> Result<Daemon> {
    let text = mysql_config_text(topo, "app", extra);
    let ports: Vec<u16> = topo.nodes.iter().map(|n| n.port).collect();
    let text = over_unix_sockets(&text, &ports, |port| {
        let name = topo.nodes.iter().find(|n| n.port == port).map_or("none", |n| n.name.as_str());
        topo.dir.join(format!("{name}.sock"))
    });
    Daemon::start_with(Config::parse(&text, Path::new("<test>"), |_| None)?, false).await
}

/// `text` without the `[[cluster.backend]]` table of backend `name` (a test that needs every
/// session on the same replica keeps only one).
pub fn without_backend(text: &str, name: &str) -> String {
    let head = format!("\n[[cluster.backend]]\nname = \"{name}\"\n");
    let Some(start) = text.find(&head) else { return text.to_owned() };
    let end = text[start + 1..].find("\n[[").map_or(text.len(), |i| start + 1 + i);
    format!("{}{}", &text[..start], &text[end..])
}

/// Starts sqlswitch from config `text`.
///
/// # Errors
/// The config did not validate or a listener could not bind.
pub async fn start_text(text: &str) -> Result<Daemon> {
    Daemon::start_with(Config::parse(text, Path::new("<test>"), |_| None)?, false).await
}

/// The `replication` credentials of a PostgreSQL topology (its standbys stream as `postgres`,
/// trusted on loopback).
pub const PG_REPLICATION: &str = "replication = { user = \"postgres\", password = \"\" }";

/// The `replication` credentials of a MariaDB topology (its replicas stream as `repl`).
pub const MY_REPLICATION: &str = "replication = { user = \"repl\", password = \"repl\" }";

/// The name of the primary in `daemon`'s first cluster's routing table, as `status` says it.
pub fn primary_of(daemon: &Daemon) -> String {
    daemon.control.status()["clusters"][0]["primary"].as_str().unwrap_or("").to_owned()
}

/// Waits until `check` holds, polling every 100 ms, for at most `secs` seconds.
///
/// # Panics
/// `check` did not hold in time (the message says `what`).
pub async fn eventually(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "not within {secs} s: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Waits until every session that left has given its backend connections back (to their
/// pool, or closed them): no backend of the daemon's first cluster counts a session.
pub async fn released(daemon: &sqlswitch::Daemon) {
    let busy = || {
        let status = daemon.control.status();
        let backends = status["clusters"][0]["backends"].as_array().cloned().unwrap_or_default();
        backends.iter().any(|b| b["sessions"].as_u64() != Some(0))
    };
    eventually(10, "the sessions' connections are given back", || !busy()).await;
}

/// The `sqlswitch` binary beside this one (`cargo build` puts both in the same directory), or
/// `SQLSWITCH_BIN`.
///
/// # Errors
/// Not built.
pub fn sqlswitch_bin() -> Result<std::path::PathBuf> {
    if let Ok(path) = std::env::var("SQLSWITCH_BIN") {
        return Ok(std::path::PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().ok_or_else(|| anyhow::anyhow!("no directory"))?;
    for candidate in [dir.join("sqlswitch"), dir.join("../sqlswitch")] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    anyhow::bail!("no sqlswitch binary beside {} (build it: cargo build -p sqlswitch)", exe.display())
}
