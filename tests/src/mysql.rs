//! A MariaDB primary and two GTID replicas, as real servers, on free loopback ports in a
//! temporary directory; a reaper stops them when the process that started them exits.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::pg::{free_ports, is_root, run, spawn_detached, unique, ANON, APP, DATABASE, MONITOR};

/// One server.
#[derive(Debug)]
pub struct Node {
    /// `primary`, `replica1`, `replica2`.
    pub name: String,
    /// Data directory.
    pub data: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// `server_id` (also how tests tell servers apart: `SELECT @@server_id`).
    pub server_id: u32,
    process: Child,
}

/// A running MariaDB primary and replicas.
#[derive(Debug)]
pub struct Topology {
    /// Where everything lives.
    pub dir: PathBuf,
    /// `nodes[0]` is the primary.
    pub nodes: Vec<Node>,
}

static SHARED: OnceLock<Topology> = OnceLock::new();

impl Topology {
    /// The process-wide topology, started on first use.
    ///
    /// # Panics
    /// MariaDB cannot be started: the tests that need it fail rather than skip.
    pub fn shared() -> &'static Topology {
        crate::watchdog();
        SHARED.get_or_init(|| Topology::start(2).unwrap_or_else(|e| panic!("cannot start the MariaDB topology: {e:#}")))
    }

    /// The primary.
    pub fn primary(&self) -> &Node {
        &self.nodes[0]
    }

    /// The replicas.
    pub fn replicas(&self) -> &[Node] {
        &self.nodes[1..]
    }

    /// Starts a primary and `replicas` GTID replicas.
    ///
    /// # Errors
    /// Any step failing, with the server's error log where there is one.
    pub fn start(replicas: usize) -> Result<Self> {
        Self::start_with(replicas, None)
    }

    /// Starts a primary and `replicas` GTID replicas, offering TLS with `tls` (certificate and
    /// key PEM files) when given: MariaDB reads them only at start.
    ///
    /// # Errors
    /// Any step failing, with the server's error log where there is one.
    pub fn start_with(replicas: usize, tls: Option<(&Path, &Path)>) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("sqlswitch-mariadb-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir)?;
        spawn_reaper(&dir)?;
        let template = dir.join("template");
        // Each topology its own temporary directory: a starting mariadbd removes every `#sql*`
        // file it finds there, and so broke another topology's bootstrap sharing /tmp.
        std::fs::create_dir_all(dir.join("tmp"))?;
        let mut install = Command::new("mariadb-install-db");
        install.env("TMPDIR", dir.join("tmp")).arg(format!("--tmpdir={}", dir.join("tmp").display()));
        install
            .arg(format!("--datadir={}", template.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
        if is_root() {
            install.arg("--user=root");
        }
        run(&mut install).context("mariadb-install-db (install mariadb-server)")?;
        let ports = free_ports(replicas + 1)?;
        let mut topo = Topology { dir: dir.clone(), nodes: Vec::new() };
        for (i, port) in ports.iter().enumerate() {
            let name = if i == 0 { "primary".to_owned() } else { format!("replica{i}") };
            let data = dir.join(&name);
            run(Command::new("cp").arg("-a").arg(&template).arg(&data))?;
            let server_id = u32::try_from(i + 1).unwrap_or(1);
            let process = start_server(&dir, &name, &data, (*port, server_id), i > 0, tls, None)?;
            topo.nodes.push(Node { name, data, port: *port, server_id, process });
        }
        for n in &topo.nodes {
            topo.wait_ready(n)?;
        }
        let (app, anon, mon) = (APP, ANON, MONITOR);
        topo.sql(
            topo.primary(),
            &format!(
                "CREATE USER 'repl'@'%' IDENTIFIED BY 'repl'; GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%';\
                 CREATE USER '{u}'@'%' IDENTIFIED BY '{p}'; \
                 CREATE USER '{nu}'@'%' IDENTIFIED BY '{np}'; \
                 CREATE USER '{mu}'@'%' IDENTIFIED BY '{mp}'; \
                 GRANT REPLICA MONITOR, BINLOG MONITOR, READ_ONLY ADMIN, REPLICATION SLAVE ADMIN, RELOAD, SUPER, PROCESS, CONNECTION ADMIN ON *.* TO '{mu}'@'%';\
                 CREATE DATABASE {db}; GRANT ALL ON {db}.* TO '{u}'@'%'; GRANT SELECT, CREATE TEMPORARY TABLES ON {db}.* TO '{nu}'@'%';\
                 CREATE TABLE {db}.items (id BIGINT AUTO_INCREMENT PRIMARY KEY, note LONGTEXT, at TIMESTAMP(6) DEFAULT CURRENT_TIMESTAMP(6));",
                u = app.0,
                p = app.1,
                nu = anon.0,
                np = anon.1,
                mu = mon.0,
                mp = mon.1,
                db = DATABASE,
            ),
        )?;
        for r in topo.replicas() {
            topo.sql(
                r,
                &format!(
                    "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='repl', MASTER_PASSWORD='repl', \
                     MASTER_USE_GTID=slave_pos; START SLAVE;",
                    topo.primary().port
                ),
            )?;
        }
        topo.wait_replicas_caught_up()?;
        Ok(topo)
    }

    /// The server's process id, for SIGSTOP and SIGCONT.
    pub fn pid(node: &Node) -> u32 {
        node.process.id()
    }

    /// Runs SQL as root over the node's Unix socket; returns the tab-separated output.
    ///
    /// # Errors
    /// The client failed; its stderr is in the error.
    pub fn sql(&self, node: &Node, sql: &str) -> Result<String> {
        run(Command::new("mariadb")
            .arg(format!("--socket={}", self.dir.join(format!("{}.sock", node.name)).display()))
            .args(["-uroot", "-N", "-B", "-e", sql]))
    }

    fn wait_ready(&self, node: &Node) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.sql(node, "SELECT 1").is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join(format!("{}.err", node.name))).unwrap_or_default();
                bail!("{} did not start within 60 s:\n{log}", node.name);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Waits until every replica has applied the primary's current GTID position.
    ///
    /// # Errors
    /// Not caught up within 60 s.
    pub fn wait_replicas_caught_up(&self) -> Result<()> {
        let pos = self.sql(self.primary(), "SELECT @@gtid_binlog_pos")?;
        let pos = pos.trim();
        for r in self.replicas() {
            let done = self.sql(r, &format!("SELECT MASTER_GTID_WAIT('{pos}', 60)"))?;
            if done.trim() != "0" {
                bail!("{} did not reach GTID {pos} within 60 s", r.name);
            }
        }
        Ok(())
    }

    /// Restarts replica `i` (1-based) announcing `version` as its `@@version`, as a replica
    /// upgraded in place does, and starts its replication again.
    ///
    /// # Errors
    /// The server did not stop or start, or replication did not start.
    pub fn restart_replica_as(&mut self, i: usize, version: &str) -> Result<()> {
        let node = self.nodes.get_mut(i).context("no such replica")?;
        let _ = node.process.kill();
        let _ = node.process.wait();
        let (name, data, port, server_id) = (node.name.clone(), node.data.clone(), node.port, node.server_id);
        node.process = start_server(&self.dir, &name, &data, (port, server_id), true, None, Some(version))?;
        let node = &self.nodes[i];
        self.wait_ready(node)?;
        self.sql(node, "START SLAVE").map(drop)
    }

    /// Stops (or starts again) the SQL thread of a replica: it keeps receiving but applies nothing.
    ///
    /// # Errors
    /// The client failed.
    pub fn set_apply_paused(&self, node: &Node, paused: bool) -> Result<()> {
        let sql = if paused { "STOP SLAVE SQL_THREAD" } else { "START SLAVE SQL_THREAD" };
        self.sql(node, sql).map(drop)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            let _ = n.process.kill();
            let _ = n.process.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_server(
    dir: &Path,
    name: &str,
    data: &Path,
    (port, server_id): (u16, u32),
    replica: bool,
    tls: Option<(&Path, &Path)>,
    version: Option<&str>,
) -> Result<Child> {
    let mut cmd = Command::new("/usr/sbin/mariadbd");
    cmd.arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--socket={}", dir.join(format!("{name}.sock")).display()))
        .arg(format!("--pid-file={}", dir.join(format!("{name}.pid")).display()))
        .arg(format!("--log-error={}", dir.join(format!("{name}.err")).display()))
        .arg(format!("--tmpdir={}", dir.join("tmp").display()))
        .arg(format!("--port={port}"))
        .arg(format!("--server-id={server_id}"))
        .args([
            "--bind-address=127.0.0.1",
            "--skip-name-resolve",
            "--log-bin=binlog",
            "--log-slave-updates",
            "--gtid-strict-mode=1",
            "--binlog-format=ROW",
            "--innodb-buffer-pool-size=32M",
            "--innodb-log-file-size=16M",
            "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0",
            "--max-connections=500",
            "--max-allowed-packet=64M",
            "--skip-slave-start",
        ]);
    if replica {
        cmd.arg("--read-only=1");
    }
    if let Some(version) = version {
        cmd.arg(format!("--version={version}"));
    }
    if let Some((cert, key)) = tls {
        cmd.arg(format!("--ssl-cert={}", cert.display())).arg(format!("--ssl-key={}", key.display()));
    }
    if is_root() {
        cmd.arg("--user=root");
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    cmd.spawn().with_context(|| format!("starting mariadbd for {name}"))
}

/// Stops every server whose pid file is in `dir` and removes `dir` once this process exits.
fn spawn_reaper(dir: &Path) -> Result<()> {
    spawn_detached(&format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; for f in {dir}/*.pid; do [ -f \"$f\" ] && kill -9 $(cat \"$f\") 2>/dev/null; done; rm -rf {dir}",
        pid = std::process::id(),
        dir = dir.display()
    ))
}
