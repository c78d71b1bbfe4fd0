//! A PostgreSQL primary and two streaming replicas, as real servers.
//!
//! PostgreSQL refuses to run as root, so when the harness runs as root (CI does) every server
//! binary runs as the `postgres` OS user through `runuser`, and the directory is theirs.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Roles created on the primary (and so on the replicas), `(name, password)`.
pub const APP: (&str, &str) = ("app", "app");
/// Read-only (anonymous) role.
pub const ANON: (&str, &str) = ("anon", "anon");
/// Monitoring role.
pub const MONITOR: (&str, &str) = ("monitor", "monitor");
/// A role that the servers authenticate with md5.
pub const MD5_USER: (&str, &str) = ("md5user", "md5pw");
/// A role that the servers trust without a password.
pub const TRUST_USER: (&str, &str) = ("trustuser", "trustpw");
/// Database the tests use, owned by `app`.
pub const DATABASE: &str = "app";

/// One server of the topology.
#[derive(Debug, Clone)]
pub struct Node {
    /// `primary`, `replica1`, `replica2`.
    pub name: String,
    /// Data directory.
    pub data: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
}

/// A running primary and replicas.
#[derive(Debug)]
pub struct Topology {
    /// Where everything lives.
    pub dir: PathBuf,
    /// The PostgreSQL binaries.
    pub bin: PathBuf,
    /// `nodes[0]` is the primary.
    pub nodes: Vec<Node>,
    as_postgres: bool,
}

static SHARED: OnceLock<Topology> = OnceLock::new();

impl Drop for Topology {
    /// A topology a test started for itself is stopped and removed when the test is done (the
    /// shared one is static and left to the reaper).
    fn drop(&mut self) {
        for n in self.nodes.iter().rev() {
            let _ = self.kill_node(n);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Topology {
    /// The process-wide topology, started on first use and stopped when the process exits.
    ///
    /// # Panics
    /// When PostgreSQL cannot be started: every test that needs it must fail, not skip.
    pub fn shared() -> &'static Topology {
        crate::watchdog();
        SHARED.get_or_init(|| {
            Topology::start(2).unwrap_or_else(|e| panic!("cannot start the PostgreSQL topology: {e:#}"))
        })
    }

    /// The primary.
    pub fn primary(&self) -> &Node {
        &self.nodes[0]
    }

    /// The replicas.
    pub fn replicas(&self) -> &[Node] {
        &self.nodes[1..]
    }

    /// Starts a primary and `replicas` streaming replicas in a new temporary directory.
    ///
    /// # Errors
    /// Any step failing, with the server's log where there is one.
    pub fn start(replicas: usize) -> Result<Self> {
        let bin = find_bin()?;
        let as_postgres = is_root();
        let dir = std::env::temp_dir().join(format!("sqlswitch-pg-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(dir.join("sock"))?;
        let mut topo = Topology { dir: dir.clone(), bin, nodes: Vec::new(), as_postgres };
        if as_postgres {
            run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir))?;
        }
        let ports = free_ports(replicas + 1)?;
        // The reaper: stops every server and removes the directory once this process is gone.
        topo.spawn_reaper(replicas + 1)?;
        let primary = Node { name: "primary".into(), data: dir.join("primary"), port: ports[0] };
        topo.pg(Command::new(topo.bin.join("initdb")).args(["-D"]).arg(&primary.data).args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]))
        .context("initdb")?;
        std::fs::write(
            primary.data.join("pg_hba.conf"),
            "local all all trust\n\
             host replication all 127.0.0.1/32 trust\n\
             host all postgres 127.0.0.1/32 trust\n\
             host all md5user 127.0.0.1/32 md5\n\
             host all trustuser 127.0.0.1/32 trust\n\
             host all all 127.0.0.1/32 scram-sha-256\n",
        )?;
        let mut conf = std::fs::OpenOptions::new().append(true).open(primary.data.join("postgresql.conf"))?;
        std::io::Write::write_all(
            &mut conf,
            b"\nmax_connections = 500\nshared_buffers = 32MB\nfsync = off\n\
              full_page_writes = off\nmax_wal_senders = 10\nhot_standby_feedback = on\n\
              wal_receiver_status_interval = 1s\nlog_min_messages = warning\nwal_level = logical\n\
              include_if_exists = 'node.conf'\n",
        )?;
        topo.write_node_conf(&primary)?;
        topo.nodes.push(primary.clone());
        topo.pg_ctl_start(&primary)?;
        topo.psql_admin(
            &primary,
            &format!(
                "CREATE ROLE {app} LOGIN PASSWORD '{app_pw}';\n\
                 CREATE ROLE {anon} LOGIN PASSWORD '{anon_pw}';\n\
                 CREATE ROLE {mon} LOGIN REPLICATION PASSWORD '{mon_pw}' IN ROLE pg_monitor, pg_signal_backend;\n\
                 CREATE ROLE {trust} LOGIN PASSWORD '{trust_pw}';\n\
                 SET password_encryption = 'md5';\n\
                 CREATE ROLE {md5} LOGIN PASSWORD '{md5_pw}';\n\
                 GRANT ALTER SYSTEM ON PARAMETER default_transaction_read_only TO {mon};\n\
                 GRANT ALTER SYSTEM ON PARAMETER primary_conninfo TO {mon};\n\
                 GRANT EXECUTE ON FUNCTION pg_reload_conf() TO {mon};\n\
                 GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO {mon};\n",
                app = APP.0,
                app_pw = APP.1,
                anon = ANON.0,
                anon_pw = ANON.1,
                mon = MONITOR.0,
                mon_pw = MONITOR.1,
                trust = TRUST_USER.0,
                trust_pw = TRUST_USER.1,
                md5 = MD5_USER.0,
                md5_pw = MD5_USER.1,
            ),
            "postgres",
        )?;
        topo.psql_admin(&primary, &format!("CREATE DATABASE {DATABASE} OWNER {}", APP.0), "postgres")?;
        topo.psql_admin(
            &primary,
            &format!(
                "GRANT ALL ON SCHEMA public TO PUBLIC;\n\
                 CREATE TABLE items (id bigserial PRIMARY KEY, note text, at timestamptz DEFAULT now());\n\
                 ALTER TABLE items OWNER TO {app};\n\
                 GRANT SELECT ON items TO {anon}, {md5}, {trust};\n\
                 GRANT USAGE ON SEQUENCE items_id_seq TO {anon};\n",
                app = APP.0,
                anon = ANON.0,
                md5 = MD5_USER.0,
                trust = TRUST_USER.0
            ),
            DATABASE,
        )?;
        for (i, port) in ports.iter().enumerate().skip(1) {
            let node = Node { name: format!("replica{i}"), data: dir.join(format!("replica{i}")), port: *port };
            topo.pg(Command::new(topo.bin.join("pg_basebackup"))
                .arg("-D")
                .arg(&node.data)
                .args(["-R", "-X", "stream", "-c", "fast", "-h", "127.0.0.1", "-U", "postgres", "-p"])
                .arg(topo.primary().port.to_string()))
                .context("pg_basebackup")?;
            topo.write_node_conf(&node)?;
            topo.pg_ctl_start(&node)?;
            topo.nodes.push(node);
        }
        topo.wait_streaming(replicas)?;
        Ok(topo)
    }

    /// Makes `node` a streaming standby of `from` again, as an operator rejoins a deposed
    /// primary: stops it, copies `from` afresh (`pg_basebackup -R`) and starts it.
    ///
    /// # Errors
    /// A step failed.
    pub fn rebuild_standby(&self, node: &Node, from: &Node) -> Result<()> {
        let _ = self.kill_node(node);
        std::fs::remove_dir_all(&node.data).with_context(|| format!("removing {}", node.data.display()))?;
        self.pg(Command::new(self.bin.join("pg_basebackup"))
            .arg("-D")
            .arg(&node.data)
            .args(["-R", "-X", "stream", "-c", "fast", "-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(from.port.to_string()))
            .context("pg_basebackup")?;
        self.write_node_conf(node)?;
        self.pg_ctl_start(node)
    }

    /// The server's processes (the postmaster and its children), for SIGSTOP and SIGCONT.
    ///
    /// # Errors
    /// Its pid file could not be read.
    pub fn pids(&self, node: &Node) -> Result<Vec<String>> {
        let pid_file = std::fs::read_to_string(node.data.join("postmaster.pid")).context("postmaster.pid")?;
        let pid = pid_file.lines().next().context("empty postmaster.pid")?.trim().to_owned();
        let children = Command::new("pgrep").args(["-P", &pid]).output().map(|o| o.stdout).unwrap_or_default();
        let mut pids = vec![pid];
        pids.extend(String::from_utf8_lossy(&children).split_whitespace().map(str::to_owned));
        Ok(pids)
    }

    fn write_node_conf(&self, node: &Node) -> Result<()> {
        let text = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\ncluster_name = '{}'\n",
            node.port,
            self.dir.join("sock").display(),
            node.name
        );
        std::fs::write(node.data.join("node.conf"), text)?;
        if self.as_postgres {
            run(Command::new("chown").args(["postgres:postgres"]).arg(node.data.join("node.conf")))?;
        }
        Ok(())
    }

    fn pg_ctl_start(&self, node: &Node) -> Result<()> {
        let log = self.dir.join(format!("{}.log", node.name));
        self.pg(Command::new(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&node.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "start"]))
            .map(drop)
            .with_context(|| format!("starting {}: {}", node.name, std::fs::read_to_string(&log).unwrap_or_default()))
    }

    /// Runs SQL as the superuser over the Unix socket; returns psql's unaligned output.
    ///
    /// # Errors
    /// psql failed; its stderr is in the error.
    pub fn psql_admin(&self, node: &Node, sql: &str, database: &str) -> Result<String> {
        self.pg(Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-h"])
            .arg(self.dir.join("sock"))
            .args(["-p", &node.port.to_string(), "-d", database, "-c", sql]))
    }

    fn wait_streaming(&self, replicas: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let n = self.psql_admin(
                self.primary(),
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
                "postgres",
            )?;
            if n.trim().parse::<usize>().unwrap_or(0) >= replicas {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("replicas did not start streaming within 60 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every replica has replayed the primary's current WAL position.
    ///
    /// # Errors
    /// Not caught up within 30 s.
    pub fn wait_replicas_caught_up(&self) -> Result<()> {
        // The insert position covers every acknowledged commit, even with asynchronous commit;
        // at a page or segment start it points past a header where no record ends.
        let insert =
            self.psql_admin(self.primary(), "SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint", "postgres")?;
        let insert: u64 = insert.trim().parse().context("insert position")?;
        let target = if insert % (16 << 20) == 40 {
            insert - 40
        } else if insert % 8192 == 24 {
            insert - 24
        } else {
            insert
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        for r in self.replicas() {
            loop {
                let sql = format!("SELECT (pg_last_wal_replay_lsn() - '0/0')::bigint >= {target}");
                if self.psql_admin(r, &sql, "postgres")?.trim() == "t" {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("{} did not catch up within 30 s", r.name);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Stops one server at once, as a crash would (`-m immediate`).
    ///
    /// # Errors
    /// pg_ctl failed.
    pub fn kill_node(&self, node: &Node) -> Result<()> {
        self.pg(Command::new(self.bin.join("pg_ctl")).arg("-D").arg(&node.data).args(["-m", "immediate", "-w", "stop"]))
            .map(drop)
    }

    /// Kills a server's postmaster with SIGKILL, as a crash or the OOM killer would: no
    /// shutdown checkpoint, no goodbye to its clients or standbys.
    ///
    /// # Errors
    /// Its pid file could not be read, or `kill` failed.
    pub fn sigkill_node(&self, node: &Node) -> Result<()> {
        let pid_file = std::fs::read_to_string(node.data.join("postmaster.pid")).context("postmaster.pid")?;
        let pid = pid_file.lines().next().context("empty postmaster.pid")?.trim().to_owned();
        run(Command::new("kill").args(["-KILL", &pid])).map(drop)
    }

    /// Starts a stopped server again.
    ///
    /// # Errors
    /// pg_ctl failed.
    pub fn restart_node(&self, node: &Node) -> Result<()> {
        self.pg_ctl_start(node)
    }

    /// Turns TLS on for `node` with this PEM certificate and key (copied into its data
    /// directory), by a reload.
    ///
    /// # Errors
    /// A copy or psql failed.
    pub fn enable_ssl(&self, node: &Node, cert: &Path, key: &Path) -> Result<()> {
        for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
            let dest = node.data.join(to);
            std::fs::copy(from, &dest)?;
            run(Command::new("chmod").arg("600").arg(&dest))?;
            if self.as_postgres {
                run(Command::new("chown").arg("postgres:postgres").arg(&dest))?;
            }
        }
        self.psql_admin(node, "ALTER SYSTEM SET ssl = on", "postgres")?;
        self.psql_admin(node, "SELECT pg_reload_conf()", "postgres").map(drop)
    }

    /// Pauses (or resumes) WAL replay on a replica.
    ///
    /// # Errors
    /// psql failed.
    pub fn set_replay_paused(&self, node: &Node, paused: bool) -> Result<()> {
        let f = if paused { "pg_wal_replay_pause" } else { "pg_wal_replay_resume" };
        self.psql_admin(node, &format!("SELECT {f}()"), "postgres").map(drop)
    }

    /// Stops every server now (the reaper would do it at exit anyway).
    pub fn stop(&self) {
        for n in self.nodes.iter().rev() {
            let _ = self
                .pg(Command::new(self.bin.join("pg_ctl")).arg("-D").arg(&n.data).args(["-m", "fast", "-w", "stop"]));
        }
    }

    fn spawn_reaper(&self, nodes: usize) -> Result<()> {
        let pg_ctl = self.bin.join("pg_ctl");
        let mut stops = String::new();
        let names = std::iter::once("primary".to_owned()).chain((1..nodes).map(|i| format!("replica{i}")));
        for name in names {
            let data = self.dir.join(name);
            let sudo = if self.as_postgres { "runuser -u postgres -- " } else { "" };
            stops += &format!(
                "[ -d {d} ] && {sudo}{} -D {d} -m immediate stop >/dev/null 2>&1; ",
                pg_ctl.display(),
                d = data.display()
            );
        }
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {stops} rm -rf {dir}",
            pid = std::process::id(),
            dir = self.dir.display()
        );
        spawn_detached(&script)
    }

    /// Runs a server binary, as `postgres` when we are root.
    fn pg(&self, cmd: &mut Command) -> Result<String> {
        if self.as_postgres {
            let program = cmd.get_program().to_owned();
            let args: Vec<_> = cmd.get_args().map(ToOwned::to_owned).collect();
            let mut wrapped = Command::new("runuser");
            wrapped.args(["-u", "postgres", "--"]).arg(program).args(args).current_dir(&self.dir);
            run(&mut wrapped)
        } else {
            run(cmd.current_dir(&self.dir))
        }
    }
}

/// Runs a command to completion; its stdout, or an error with both outputs.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}{}",
            cmd.get_program(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `script` in `sh`, detached from this process's group, so it outlives a test process that
/// is killed.
///
/// # Errors
/// The shell could not be started.
pub(crate) fn spawn_detached(script: &str) -> Result<()> {
    use std::os::unix::process::CommandExt;
    Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("spawning the reaper")?;
    Ok(())
}

/// The newest PostgreSQL server binaries installed.
///
/// # Errors
/// None installed.
pub fn find_bin() -> Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (no /usr/lib/postgresql); run scripts/test, which installs it")?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, p): &(u32, PathBuf)| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).context("no PostgreSQL server binaries (initdb) under /usr/lib/postgresql")
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// A number that differs between runs, for directory names.
pub(crate) fn unique() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
}

/// `n` distinct free TCP ports on 127.0.0.1.
///
/// # Errors
/// Binding failed.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<_>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// Runs `pgbench` as the application user against `port` (database `app`).
///
/// # Errors
/// pgbench could not run, or failed; its whole output is in the error.
pub fn pgbench(topo: &Topology, port: u16, args: &[&str]) -> Result<String> {
    let out = Command::new(client_bin(topo, "pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", APP.0])
        .args(args)
        .arg(DATABASE)
        .env("PGPASSWORD", APP.1)
        .stdin(Stdio::null())
        .output()
        .context("running pgbench")?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("pgbench {args:?} on port {port} failed:\n{text}");
    }
    Ok(text)
}

/// `number of failed transactions` from a pgbench report (0 when pgbench does not print it).
pub fn pgbench_failed(report: &str) -> u64 {
    report
        .lines()
        .find(|l| l.starts_with("number of failed transactions"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Where the harness's binaries are, for tests that run `psql` and `pgbench` themselves.
pub fn client_bin(topo: &Topology, name: &str) -> PathBuf {
    let p = topo.bin.join(name);
    if p.exists() {
        p
    } else {
        Path::new("/usr/bin").join(name)
    }
}
