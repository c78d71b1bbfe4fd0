//! The system under test: real servers (a primary and two replicas), one or several sqlswitch
//! instances as processes of their own (a fleet through a real etcd when several; their logs
//! are checked for secrets; they can be signalled), each with its own relay to every server
//! and to etcd (so a partition can be one-sided), driven through their admin sockets.

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

/// One sqlswitch instance: its process, its admin socket, its own relays.
pub struct Instance {
    /// The process.
    daemon: Child,
    /// Its admin socket.
    admin: PathBuf,
    /// Its log file.
    pub log: PathBuf,
    /// Its config file.
    config: PathBuf,
    /// Where clients connect.
    pub port: u16,
    /// One relay per backend, in config order (this instance's paths to the servers).
    pub relays: Vec<Relay>,
    /// Fleet mode: this instance's path to etcd.
    pub etcd_relay: Option<Relay>,
    /// The process id (for SIGSTOP and SIGCONT).
    pub pid: u32,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// Everything a run needs.
pub struct World {
    /// The servers.
    pub servers: Servers,
    /// The sqlswitch instances (several: a fleet through etcd).
    pub instances: Vec<Instance>,
    /// Fleet mode: etcd.
    etcd: Option<crate::etcd::Etcd>,
    /// The workload's login.
    pub login: (String, String),
    /// The monitor's password of this run.
    monitor_pw: String,
    /// The configured passwords (checked never to appear in any output).
    pub secrets: Vec<String>,
    /// Every admin answer of the run.
    pub answers: String,
}

/// The names of the backends, in config order (as the harness names its servers).
pub const NAMES: [&str; 3] = ["primary", "replica1", "replica2"];

impl World {
    /// Starts the servers and `instances` sqlswitch instances (a fleet through a real etcd
    /// when more than one), each with its own relays; the workload's table exists and every
    /// replica has it.
    ///
    /// # Errors
    /// A server, etcd, the relays or sqlswitch did not start.
    pub async fn start(protocol: Protocol, seed: u64, instances: usize, out: &Path) -> Result<Self> {
        let (app_pw, monitor_pw) = (format!("fault-{seed:x}-Pw"), format!("mon-{seed:x}-Pw"));
        let login = ("faulter".to_owned(), app_pw.clone());
        let servers = tokio::task::spawn_blocking(move || -> Result<Servers> {
            Ok(match protocol {
                Protocol::Postgres => Servers::Pg(crate::pg::Topology::start(2)?),
                Protocol::Mysql => Servers::My(crate::mysql::Topology::start(2)?),
            })
        })
        .await??;
        setup_sql(&servers, &login, &monitor_pw)?;
        let etcd = if instances > 1 { Some(crate::etcd::Etcd::start()?) } else { None };
        let secrets = vec![app_pw, monitor_pw.clone()];
        let mut world =
            Self { servers, instances: Vec::new(), etcd, login, monitor_pw, secrets, answers: String::new() };
        for i in 0..instances {
            let instance = world.start_instance(i, out).await?;
            world.instances.push(instance);
        }
        for i in 0..world.instances.len() {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let ready = world.try_ctl(i, "status").await.ok().is_some_and(|s| {
                    let fleet = &s["clusters"][0]["fleet"];
                    fleet.is_null() || fleet["fenced"] == false
                });
                if ready {
                    break;
                }
                if Instant::now() > deadline {
                    let log = std::fs::read_to_string(&world.instances[i].log).unwrap_or_default();
                    bail!("sqlswitch instance {i} did not become ready: {log}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(world)
    }

    /// Starts instance `i`: its relays, its config, its process.
    async fn start_instance(&self, i: usize, out: &Path) -> Result<Instance> {
        let ports = ports(&self.servers);
        let mut relays = Vec::new();
        for p in &ports {
            relays.push(Relay::start(*p).await?);
        }
        let listen = crate::pg::free_ports(2)?;
        let admin = out.join(format!("admin-{i}.sock"));
        // Cluster keys to add, for a run in another mode (`pool_mode = "transaction"`).
        let more = std::env::var("SQLSWITCH_FAULTS_CLUSTER").unwrap_or_default();
        let settings = format!("max_replica_lag = \"2s\"\nconnect_timeout = \"2s\"\n{more}");
        let (l0, l1) = (format!("127.0.0.1:{}", listen[0]), format!("127.0.0.1:{}", listen[1]));
        let mut text = match &self.servers {
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
        text = text.replace("password = \"monitor\" }", &format!("password = \"{}\" }}", self.monitor_pw));
        text += &format!("\n[[cluster.user]]\nname = \"{}\"\npassword = \"{}\"\n", self.login.0, self.login.1);
        let etcd_relay = match &self.etcd {
            Some(e) => Some(Relay::start(e.port).await?),
            None => None,
        };
        if let Some(r) = &etcd_relay {
            text += &format!(
                "\n[fleet]\netcd = [\"http://127.0.0.1:{}\"]\nprefix = \"/faults\"\nttl = \"3s\"\ninstance = \"i{i}\"\n",
                r.port
            );
        }
        let config = out.join(format!("sqlswitch-{i}.toml"));
        std::fs::write(&config, &text)?;
        let log = out.join(format!("sqlswitch-{i}.log"));
        std::fs::File::create(&log)?;
        let (daemon, pid) = spawn(&config, &log)?;
        Ok(Instance { daemon, admin, log, config, port: listen[0], relays, etcd_relay, pid })
    }

    /// SIGKILL of instance `i` (a crash: no goodbye to clients, servers or etcd), then a new
    /// process with the same config, relays and log; returns once it answers `status`.
    ///
    /// # Errors
    /// It did not start again.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        let instance = self.instances.get_mut(i).context("no such instance")?;
        let _ = Command::new("kill").args(["-CONT", &instance.pid.to_string()]).status();
        let _ = instance.daemon.kill();
        let _ = instance.daemon.wait();
        let (daemon, pid) = spawn(&instance.config, &instance.log)?;
        (instance.daemon, instance.pid) = (daemon, pid);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.try_ctl(i, "status").await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "sqlswitch instance {i} did not come back in 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Fleet mode: etcd SIGKILLed for `hold`, then started again on its data; `false` without
    /// a fleet.
    ///
    /// # Errors
    /// etcd did not start again.
    pub async fn kill_etcd(&self, hold: Duration) -> Result<bool> {
        let Some(etcd) = &self.etcd else { return Ok(false) };
        etcd.stop();
        tokio::time::sleep(hold).await;
        tokio::task::block_in_place(|| etcd.resume())?;
        Ok(true)
    }

    /// Instance `i`'s admin socket.
    ///
    /// # Errors
    /// No such instance.
    pub fn admin(&self, i: usize) -> Result<PathBuf> {
        Ok(self.instances.get(i).context("no such instance")?.admin.clone())
    }

    async fn try_ctl(&self, instance: usize, command: &str) -> Result<Value> {
        let admin = &self.instances.get(instance).context("no such instance")?.admin;
        let mut stream = tokio::net::UnixStream::connect(admin).await?;
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

    /// Sends an admin command to `instance`; its answer (an error answer too) is kept for the
    /// secrets check.
    pub async fn ctl_on(&mut self, instance: usize, command: &str) -> Value {
        let answer = tokio::time::timeout(Duration::from_secs(90), self.try_ctl(instance, command))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in 90 s")))
            .unwrap_or_else(|e| serde_json::json!({ "ok": false, "error": e.to_string() }));
        self.answers.push_str(&answer.to_string());
        self.answers.push('\n');
        answer
    }

    /// The cluster's status, as instance 0 sees it.
    pub async fn status(&mut self) -> Value {
        self.status_on(0).await
    }

    /// The cluster's status, as `instance` sees it.
    pub async fn status_on(&mut self, instance: usize) -> Value {
        let mut s = self.ctl_on(instance, "status").await;
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

    /// Every instance's log so far.
    pub fn log_text(&self) -> String {
        self.instances.iter().map(|i| std::fs::read_to_string(&i.log).unwrap_or_default()).collect()
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
            let table = format!(
                "CREATE TABLE faults (client int, seq int, part text); GRANT ALL ON faults TO {user}; \
                 CREATE TABLE appends (k int PRIMARY KEY, v text NOT NULL); GRANT ALL ON appends TO {user}"
            );
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
                     CREATE TABLE {db}.faults (client INT, seq INT, part VARCHAR(8), KEY (client, seq)) ENGINE=InnoDB; \
                     CREATE TABLE {db}.appends (k INT PRIMARY KEY, v MEDIUMTEXT NOT NULL) ENGINE=InnoDB"
                ),
            )?;
            t.wait_replicas_caught_up()
        }
    }
}

/// Starts sqlswitch on `config`, appending to `log`; the process and its id. It is stopped
/// with this process however that ends (a `timeout` kill included).
fn spawn(config: &Path, log: &Path) -> Result<(Child, u32)> {
    let daemon = Command::new(crate::proxy::sqlswitch_bin()?)
        .args(["run", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(std::fs::File::options().append(true).open(log)?)
        .stderr(std::fs::File::options().append(true).open(log)?)
        .spawn()
        .context("starting sqlswitch")?;
    let pid = daemon.id();
    crate::pg::spawn_detached(&format!(
        "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -CONT {pid}; kill -9 {pid}",
        me = std::process::id()
    ))?;
    Ok((daemon, pid))
}
