//! What the suite measures against: the sqlswitch binary (one process, several clusters) and
//! PgBouncer, each a real process on loopback, stopped on drop (the other peers: `peers`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sqlswitch_tests::pg::{is_root, APP, DATABASE, MONITOR};

/// One `[[cluster]]` of the daemon's config.
pub struct ClusterSpec<'a> {
    /// Cluster name.
    pub name: &'a str,
    /// `postgres` or `mysql`.
    pub protocol: &'a str,
    /// Listener port on 127.0.0.1.
    pub port: u16,
    /// `(name, port)`; the first is the primary.
    pub nodes: Vec<(String, u16)>,
    /// Extra keys inside the cluster table.
    pub extra: &'a str,
}

/// Writes a config holding passwords, readable by its owner only (as `sqlswitch check` asks).
///
/// # Errors
/// The file could not be written.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Config text for the bench daemon: `app` as the only client user, `monitor` as the monitor.
pub fn config_text(socket: &Path, metrics: Option<u16>, clusters: &[ClusterSpec<'_>]) -> String {
    let mut t = format!("[admin]\nsocket = \"{}\"\n", socket.display());
    if let Some(port) = metrics {
        t += &format!("metrics = \"127.0.0.1:{port}\"\n");
    }
    for c in clusters {
        t += &format!(
            "\n[[cluster]]\nname = \"{}\"\nprotocol = \"{}\"\nlisten = \"127.0.0.1:{}\"\n\
             monitor = {{ user = \"{}\", password = \"{}\" }}\n{}\n\
             [[cluster.user]]\nname = \"{}\"\npassword = \"{}\"\n",
            c.name, c.protocol, c.port, MONITOR.0, MONITOR.1, c.extra, APP.0, APP.1
        );
        for (i, (name, port)) in c.nodes.iter().enumerate() {
            let role = if i == 0 { "primary" } else { "replica" };
            t += &format!(
                "\n[[cluster.backend]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\nrole = \"{role}\"\n"
            );
        }
    }
    t
}

/// A process stopped with SIGTERM (then waited for) on drop.
pub struct Process {
    child: Child,
    /// Its pid.
    pub pid: u32,
}

impl Process {
    /// Wraps a started child.
    pub fn new(child: Child) -> Self {
        Self { pid: child.id(), child }
    }

    /// Stops it.
    pub fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `sqlswitch run --config <config>` (optionally under `wrapper`, e.g. valgrind) and
/// waits until `port` accepts connections.
///
/// # Errors
/// It could not start or did not listen within 60 s.
pub fn start_sqlswitch(bin: &Path, config: &Path, port: u16, wrapper: &[&str]) -> Result<Process> {
    let child = wrapped(bin, wrapper)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut p = Process::new(child);
    wait_listening(&mut p, port, Duration::from_secs(60))?;
    Ok(p)
}

/// `bin`, or `wrapper... bin` (valgrind).
fn wrapped(bin: &Path, wrapper: &[&str]) -> Command {
    match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// Waits until `port` on 127.0.0.1 accepts connections, or fails when `p` exits first.
///
/// # Errors
/// `p` exited, or nothing listened within `limit`.
pub fn wait_listening(p: &mut Process, port: u16, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = p.child.try_wait() {
            bail!("the process exited before listening on {port}: {status}");
        }
        if Instant::now() > deadline {
            bail!("nothing listens on {port} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Debian's PgBouncer binary, when installed.
pub fn pgbouncer_bin() -> Option<PathBuf> {
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Starts PgBouncer in session pooling mode on `port` in front of the primary at `primary`,
/// with `app` authenticated by SCRAM like sqlswitch does it. Runs as `postgres` when root
/// (PgBouncer refuses to run as root).
///
/// # Errors
/// It could not start or did not listen within 30 s.
pub fn start_pgbouncer(bin: &Path, dir: &Path, port: u16, primary: u16, wrapper: &[&str]) -> Result<Process> {
    start_pgbouncer_pooling(bin, &dir.join("pgbouncer"), port, primary, wrapper, "session", 80)
}

/// As [`start_pgbouncer`], in `mode` (`session`, `transaction`) with `pool_size` server
/// connections, its files in `dir`.
///
/// # Errors
/// It could not start or did not listen within 30 s.
pub fn start_pgbouncer_pooling(
    bin: &Path,
    dir: &Path,
    port: u16,
    primary: u16,
    wrapper: &[&str],
    mode: &str,
    pool_size: usize,
) -> Result<Process> {
    std::fs::create_dir_all(dir)?;
    let pidfile = dir.join("pgbouncer.pid");
    let _ = std::fs::remove_file(&pidfile);
    std::fs::write(dir.join("userlist.txt"), format!("\"{}\" \"{}\"\n", APP.0, APP.1))?;
    let ini = format!(
        "[databases]\n{DATABASE} = host=127.0.0.1 port={primary} dbname={DATABASE}\n\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
         auth_type = scram-sha-256\nauth_file = {users}\npool_mode = {mode}\n\
         max_client_conn = 20000\ndefault_pool_size = {pool_size}\nmax_db_connections = 0\n\
         logfile = {log}\npidfile = {pid}\nlog_connections = 0\nlog_disconnections = 0\n\
         ignore_startup_parameters = extra_float_digits\n",
        users = dir.join("userlist.txt").display(),
        log = dir.join("pgbouncer.log").display(),
        pid = pidfile.display(),
    );
    let ini_path = dir.join("pgbouncer.ini");
    std::fs::write(&ini_path, ini)?;
    // PgBouncer will not run as root; started as root with `user =`, it drops to that user
    // itself and keeps this process's file-descriptor limit (runuser would reset it to 1024).
    if is_root() {
        let mut ini = std::fs::read_to_string(&ini_path)?;
        ini += "user = postgres\n";
        std::fs::write(&ini_path, ini)?;
        sqlswitch_tests::pg::run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir))?;
    }
    let mut cmd = wrapped(bin, wrapper);
    cmd.arg(&ini_path).stdout(Stdio::null()).stderr(Stdio::null());
    start_listening(cmd, "pgbouncer", port, Duration::from_secs(30), &dir.join("pgbouncer.log"))
}

/// Starts `cmd` (its output already directed) with no standard input and waits until `port`
/// accepts connections; a failure carries what `log` holds.
///
/// # Errors
/// It could not start, exited, or did not listen within `limit`.
pub fn start_listening(mut cmd: Command, what: &str, port: u16, limit: Duration, log: &Path) -> Result<Process> {
    let child = cmd.stdin(Stdio::null()).spawn().with_context(|| format!("starting {what}"))?;
    let mut p = Process::new(child);
    wait_listening(&mut p, port, limit).with_context(|| std::fs::read_to_string(log).unwrap_or_default())?;
    Ok(p)
}
