//! The system under test: real servers (a primary and two replicas), a relay in front of each
//! for sqlswitch's paths to it, and sqlswitch itself as a process of its own (its log is
//! checked for secrets; it can be signalled), driven through its admin socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::Protocol;
use crate::relay::Relay;

/// The servers of one protocol.
pub enum Servers {
    /// PostgreSQL: a primary and streaming standbys.
    Pg(crate::pg::Topology),
    /// MariaDB: a primary and GTID replicas.
    My(crate::mysql::Topology),
}

/// Everything a run needs.
pub struct World {
    /// The servers.
    pub servers: Servers,
    /// One relay per backend, in config order (what sqlswitch connects to).
    pub relays: Vec<Relay>,
    /// The sqlswitch process.
    daemon: Child,
    /// Its admin socket.
    admin: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// Where clients connect.
    pub port: u16,
    /// The workload's login.
    pub login: (String, String),
    /// The configured passwords (checked never to appear in any output).
    pub secrets: Vec<String>,
    /// Every admin answer of the run.
    pub answers: String,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// The names of the backends, in config order (as the harness names its servers).
pub const NAMES: [&str; 3] = ["primary", "replica1", "replica2"];

impl World {
    /// Starts the servers, the relays and sqlswitch; the workload's table exists and every
    /// replica has it.
    ///
    /// # Errors
    /// A server, the relays or sqlswitch did not start.
    pub async fn start(protocol: Protocol, seed: u64, out: &Path) -> Result<Self> {
        let (app_pw, monitor_pw) = (format!("fault-{seed:x}-Pw"), format!("mon-{seed:x}-Pw"));
        let login = ("faulter".to_owned(), app_pw.clone());
        let servers = tokio::task::spawn_blocking(move || -> Result<Servers> {
            Ok(match protocol {
                Protocol::Postgres => Servers::Pg(crate::pg::Topology::start(2)?),
                Protocol::Mysql => Servers::My(crate::mysql::Topology::start(2)?),
            })
        })
        .await??;
        let ports = ports(&servers);
        let mut relays = Vec::new();
        for p in &ports {
            relays.push(Relay::start(*p).await?);
        }
        setup_sql(&servers, &login, &monitor_pw)?;
        let listen = crate::pg::free_ports(2)?;
        let admin = out.join("admin.sock");
        let settings = "max_replica_lag = \"2s\"\nconnect_timeout = \"2s\"";
        let (l0, l1) = (format!("127.0.0.1:{}", listen[0]), format!("127.0.0.1:{}", listen[1]));
        let mut text = match &servers {
            Servers::Pg(t) => {
                let extra = format!("{}\n{settings}", crate::proxy::PG_REPLICATION);
                crate::proxy::config_text(t, "app", &l0, &l1, None, &extra)
            }
            Servers::My(t) => {
                let extra = format!("{}\n{settings}", crate::proxy::MY_REPLICATION);
                // The read-only listener first: "listen = ..." is also the end of its line.
                crate::proxy::mysql_config_text(t, "app", &extra)
                    .replace("read_only_listen = \"127.0.0.1:0\"", &format!("read_only_listen = \"{l1}\""))
                    .replace("\nlisten = \"127.0.0.1:0\"", &format!("\nlisten = \"{l0}\""))
            }
        };
        for (port, relay) in ports.iter().zip(&relays) {
            text = text.replace(&format!("\"127.0.0.1:{port}\""), &format!("\"127.0.0.1:{}\"", relay.port));
        }
        text = text.replace("/tmp/sqlswitch-test.sock", &admin.display().to_string());
        text = text.replace("password = \"monitor\" }", &format!("password = \"{monitor_pw}\" }}"));
        text += &format!("\n[[cluster.user]]\nname = \"{}\"\npassword = \"{}\"\n", login.0, login.1);
        let config = out.join("sqlswitch.toml");
        std::fs::write(&config, &text)?;
        let log = out.join("sqlswitch.log");
        let daemon = Command::new(sqlswitch_bin()?)
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::options().append(true).open(&log)?)
            .spawn()
            .context("starting sqlswitch")?;
        let world = Self {
            servers,
            relays,
            daemon,
            admin,
            log,
            port: listen[0],
            login,
            secrets: vec![app_pw, monitor_pw],
            answers: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while world.try_ctl("status").await.is_err() {
            if Instant::now() > deadline {
                bail!("sqlswitch did not answer on its admin socket: {}", std::fs::read_to_string(&world.log)?);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(world)
    }

    async fn try_ctl(&self, command: &str) -> Result<Value> {
        let mut stream = tokio::net::UnixStream::connect(&self.admin).await?;
        stream.write_all(format!("{command}\n").as_bytes()).await?;
        let mut lines = BufReader::new(stream).lines();
        while let Some(line) = lines.next_line().await? {
            let v: Value = serde_json::from_str(&line)?;
            if v.get("ok").is_some() {
                return Ok(v);
            }
        }
        bail!("no answer to {command}")
    }

    /// Sends an admin command; its answer (an error answer too) is kept for the secrets check.
    pub async fn ctl(&mut self, command: &str) -> Value {
        let answer = tokio::time::timeout(Duration::from_secs(90), self.try_ctl(command))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in 90 s")))
            .unwrap_or_else(|e| serde_json::json!({ "ok": false, "error": e.to_string() }));
        self.answers.push_str(&answer.to_string());
        self.answers.push('\n');
        answer
    }

    /// The cluster's status.
    pub async fn status(&mut self) -> Value {
        let mut s = self.ctl("status").await;
        s["clusters"][0].take()
    }

    /// The index of the primary sqlswitch routes to, and of the backends the servers say are
    /// replicas and that are up.
    pub async fn roles(&mut self) -> (usize, Vec<usize>) {
        let status = self.status().await;
        let primary = status["primary"].as_str().and_then(|p| NAMES.iter().position(|n| *n == p)).unwrap_or(0);
        let backends = status["backends"].as_array().cloned().unwrap_or_default();
        let replicas = backends
            .iter()
            .enumerate()
            .filter(|(i, b)| *i != primary && b["server_says"] == "replica" && b["state"] == "up")
            .map(|(i, _)| i)
            .collect();
        (primary, replicas)
    }

    /// The protocol of the servers.
    pub fn servers_protocol(&self) -> Protocol {
        match self.servers {
            Servers::Pg(_) => Protocol::Postgres,
            Servers::My(_) => Protocol::Mysql,
        }
    }

    /// sqlswitch's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn ports(servers: &Servers) -> Vec<u16> {
    match servers {
        Servers::Pg(t) => t.nodes.iter().map(|n| n.port).collect(),
        Servers::My(t) => t.nodes.iter().map(|n| n.port).collect(),
    }
}

/// The workload's user and table, and a monitor password of the run's own.
fn setup_sql(servers: &Servers, (user, password): &(String, String), monitor_pw: &str) -> Result<()> {
    let monitor = crate::pg::MONITOR.0;
    match servers {
        Servers::Pg(t) => {
            let db = crate::pg::DATABASE;
            t.psql_admin(t.primary(), &format!("CREATE ROLE {user} LOGIN PASSWORD '{password}'"), "postgres")?;
            t.psql_admin(t.primary(), &format!("ALTER ROLE {monitor} PASSWORD '{monitor_pw}'"), "postgres")?;
            let table = format!("CREATE TABLE faults (client int, seq int, part text); GRANT ALL ON faults TO {user}");
            t.psql_admin(t.primary(), &table, db)?;
            t.wait_replicas_caught_up()
        }
        Servers::My(t) => {
            let db = crate::pg::DATABASE;
            t.sql(
                t.primary(),
                &format!(
                    "CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'; GRANT ALL ON {db}.* TO '{user}'@'%'; \
                     ALTER USER '{monitor}'@'%' IDENTIFIED BY '{monitor_pw}'; \
                     CREATE TABLE {db}.faults (client INT, seq INT, part VARCHAR(8), KEY (client, seq)) ENGINE=InnoDB"
                ),
            )?;
            t.wait_replicas_caught_up()
        }
    }
}

/// The `sqlswitch` binary beside this one (`cargo build` puts both in the same directory), or
/// `SQLSWITCH_BIN`.
fn sqlswitch_bin() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("SQLSWITCH_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("no directory")?;
    for candidate in [dir.join("sqlswitch"), dir.join("../sqlswitch")] {
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("no sqlswitch binary beside {} (build it: cargo build -p sqlswitch)", exe.display())
}
