//! The other relays a user would put in the same place, each a real process on loopback:
//! HAProxy in TCP mode (Debian's `haproxy`), the floor any relay pays (it forwards bytes and
//! decodes nothing), and Pgpool-II with load balancing (Debian's `pgpool2`), the splitting
//! peer a Debian user has at hand. `scripts/bench` installs both when root; without them the
//! suite leaves their columns empty and says so.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use sqlswitch_tests::pg::{APP, DATABASE, MONITOR};

use crate::targets::{start_listening, Process};

/// The first of `candidates` that exists.
fn installed(candidates: &[&str]) -> Option<PathBuf> {
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

/// Debian's HAProxy binary, when installed.
pub fn haproxy_bin() -> Option<PathBuf> {
    installed(&["/usr/sbin/haproxy", "/usr/bin/haproxy", "/usr/local/sbin/haproxy"])
}

/// Debian's Pgpool-II binary, when installed.
pub fn pgpool_bin() -> Option<PathBuf> {
    installed(&["/usr/sbin/pgpool", "/usr/bin/pgpool", "/usr/local/bin/pgpool"])
}

/// Starts HAProxy in TCP mode in the foreground, listening on `port` and forwarding every
/// connection to `backend` (both on 127.0.0.1). One thread per core, its default.
///
/// # Errors
/// It could not start or did not listen within 30 s.
pub fn start_haproxy(bin: &Path, dir: &Path, name: &str, port: u16, backend: u16) -> Result<Process> {
    let dir = dir.join(format!("haproxy-{name}"));
    std::fs::create_dir_all(&dir)?;
    let cfg = format!(
        "global\n    maxconn 8000\n\n\
         defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n\n\
         listen {name}\n    bind 127.0.0.1:{port}\n    server primary 127.0.0.1:{backend}\n"
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg)?;
    let log = dir.join("haproxy.log");
    let mut cmd = Command::new(bin);
    cmd.arg("-db").arg("-f").arg(&path);
    logged(&mut cmd, &log)?;
    start_listening(cmd, "haproxy", port, Duration::from_secs(30), &log)
}

/// Starts Pgpool-II in streaming-replication mode with load balancing on `port`: `nodes[0]`
/// (`(name, port)`) is the primary, the others its streaming replicas; reads are balanced over
/// the replicas (the primary's weight is 0, as sqlswitch's split cluster sends reads to
/// replicas only), per session as Pgpool-II does by default. `children` is how many clients it
/// serves at once (one process each). Clients authenticate with `app`'s password by SCRAM, which
/// Pgpool-II also uses to log in to each backend (`pool_passwd`).
///
/// # Errors
/// It could not start or did not listen within 60 s.
pub fn start_pgpool(bin: &Path, dir: &Path, port: u16, nodes: &[(String, u16)], children: usize) -> Result<Process> {
    let dir = dir.join("pgpool");
    std::fs::create_dir_all(&dir)?;
    let pcp_port = sqlswitch_tests::pg::free_ports(1)?[0];
    let mut conf = format!(
        "listen_addresses = '127.0.0.1'\nport = {port}\nsocket_dir = '{d}'\n\
         pcp_listen_addresses = ''\npcp_port = {pcp_port}\npcp_socket_dir = '{d}'\n\
         backend_clustering_mode = 'streaming_replication'\nload_balance_mode = on\n\
         num_init_children = {children}\nmax_pool = 1\nchild_life_time = 0\nconnection_life_time = 0\n\
         client_idle_limit = 0\nchild_max_connections = 0\nreserved_connections = 0\n\
         enable_pool_hba = on\npool_passwd = 'pool_passwd'\nallow_clear_text_frontend_auth = off\n\
         sr_check_period = 1\nsr_check_user = '{mu}'\nsr_check_password = '{mp}'\nsr_check_database = '{db}'\n\
         delay_threshold = 0\nhealth_check_period = 0\nfailover_on_backend_error = off\n\
         use_watchdog = off\nmemory_cache_enabled = off\n\
         logdir = '{d}'\npid_file_name = '{d}/pgpool.pid'\nlog_destination = 'stderr'\n\
         log_connections = off\nlog_statement = off\nlog_per_node_statement = off\n",
        d = dir.display(),
        mu = MONITOR.0,
        mp = MONITOR.1,
        db = DATABASE,
    );
    for (i, (_, node_port)) in nodes.iter().enumerate() {
        let weight = if i == 0 { 0 } else { 1 };
        conf += &format!(
            "backend_hostname{i} = '127.0.0.1'\nbackend_port{i} = {node_port}\nbackend_weight{i} = {weight}\n\
             backend_flag{i} = 'DISALLOW_TO_FAILOVER'\n"
        );
    }
    let conf_path = dir.join("pgpool.conf");
    std::fs::write(&conf_path, conf)?;
    std::fs::write(dir.join("pool_hba.conf"), "host all all 127.0.0.1/32 scram-sha-256\n")?;
    std::fs::write(dir.join("pool_passwd"), format!("{}:TEXT{}\n", APP.0, APP.1))?;
    std::fs::write(dir.join("pcp.conf"), "")?;
    let log = dir.join("pgpool.log");
    let mut cmd = Command::new(bin);
    cmd.arg("-n").arg("-f").arg(&conf_path).arg("-a").arg(dir.join("pool_hba.conf"));
    cmd.arg("-F").arg(dir.join("pcp.conf"));
    logged(&mut cmd, &log)?;
    start_listening(cmd, "pgpool", port, Duration::from_secs(60), &log)
}

/// Sends `cmd`'s output and errors to a new file at `log`.
fn logged(cmd: &mut Command, log: &Path) -> std::io::Result<()> {
    let file = std::fs::File::create(log)?;
    cmd.stdout(file.try_clone()?).stderr(file);
    Ok(())
}
