//! `sqlswitch-demo` (run by `scripts/demo`): starts a real PostgreSQL primary with two streaming
//! replicas and a MariaDB primary with two GTID replicas in temporary directories, the
//! `sqlswitch` binary in front of them, prints URLs to paste into `psql` and `mariadb`, and
//! stops everything on Ctrl-C. `sqlswitch-demo upgrade` starts instead an old and a new
//! PostgreSQL cluster, the new one subscribed to the old by logical replication, in two groups:
//! the upgrade cutover to try by hand.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sqlswitch_tests::pg::{Topology, ANON, APP, DATABASE};
use sqlswitch_tests::proxy::config_text;

const LISTEN: &str = "127.0.0.1:6432";
const READ_ONLY_LISTEN: &str = "127.0.0.1:6433";
const MYSQL_LISTEN: &str = "127.0.0.1:3307";
const MYSQL_READ_ONLY_LISTEN: &str = "127.0.0.1:3308";
const METRICS: &str = "127.0.0.1:9930";

fn main() -> Result<()> {
    let sqlswitch = sibling("sqlswitch")?;
    for addr in [LISTEN, READ_ONLY_LISTEN, MYSQL_LISTEN, MYSQL_READ_ONLY_LISTEN, METRICS] {
        if std::net::TcpListener::bind(addr).is_err() {
            bail!("{addr} is in use: stop whatever listens there (another demo?) and try again");
        }
    }
    match std::env::args().nth(1).as_deref() {
        Some("upgrade") => return upgrade(&sqlswitch),
        Some("fleet") => return fleet(&sqlswitch),
        Some(other) => bail!("unknown demo {other:?}: run it without an argument, or with `upgrade` or `fleet`"),
        None => {}
    }
    eprintln!("starting a PostgreSQL primary and two streaming replicas...");
    let topo = Topology::start(2)?;
    eprintln!("starting a MariaDB primary and two GTID replicas...");
    let maria = sqlswitch_tests::mysql::Topology::start(2)?;
    let config_path = topo.dir.join("sqlswitch.toml");
    let mut text =
        config_text(&topo, "app", LISTEN, READ_ONLY_LISTEN, Some(METRICS), sqlswitch_tests::proxy::PG_REPLICATION)
            .replace("/tmp/sqlswitch-test.sock", "/tmp/sqlswitch-demo.sock");
    let mysql = sqlswitch_tests::proxy::mysql_config_text(&maria, "shop", sqlswitch_tests::proxy::MY_REPLICATION);
    let mysql = &mysql[mysql.find("[[cluster]]").unwrap_or(0)..];
    text += &mysql.replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"{MYSQL_LISTEN}\""), 1).replacen(
        "read_only_listen = \"127.0.0.1:0\"",
        &format!("read_only_listen = \"{MYSQL_READ_ONLY_LISTEN}\""),
        1,
    );
    write_private(&config_path, &text)?;
    let daemon = start_daemon(&sqlswitch, &config_path)?;
    let (primary, r1, r2) = (topo.nodes[0].port, topo.nodes[1].port, topo.nodes[2].port);
    println!(
        "\nsqlswitch is running (config: {config}).\n\n\
         Application user (reads and writes; primary):\n  psql 'postgresql://{au}:{ap}@{LISTEN}/{DATABASE}'\n\
         Anonymous user (read-only; a replica; writes refused with 25006):\n  psql 'postgresql://{nu}:{np}@{LISTEN}/{DATABASE}'\n\
         Read-only listener (every session read-only):\n  psql 'postgresql://{au}:{ap}@{READ_ONLY_LISTEN}/{DATABASE}'\n\n\
         Try: SELECT pg_is_in_recovery();   INSERT INTO items (note) VALUES ('hello');\n\n\
         MariaDB (cluster shop; server_id 1 is the primary, 2 and 3 the replicas):\n  \
         mariadb -h127.0.0.1 -P3307 -uapp -papp app      # SELECT @@server_id; INSERT INTO items (note) VALUES ('hi');\n  \
         mariadb -h127.0.0.1 -P3307 -uanon -panon app    # reads on a replica; INSERT -> ERROR 1290\n\n\
         Admin:   {ctl} ctl --socket /tmp/sqlswitch-demo.sock status   (also: reload, switchover app replica1 promote)\n\
         Metrics: curl http://{METRICS}/metrics\n\
         Load:    PGPASSWORD={ap} pgbench -i -h 127.0.0.1 -p {primary} -U {au} {DATABASE}   (once, direct to the primary)\n         \
         PGPASSWORD={ap} pgbench -S -c 8 -T 10 -h 127.0.0.1 -p 6432 -U {au} {DATABASE}\n\
         Servers: primary 127.0.0.1:{primary}, replicas 127.0.0.1:{r1} and 127.0.0.1:{r2}; data in {dir}\n\n\
         Ctrl-C stops everything.",
        config = config_path.display(),
        ctl = sqlswitch.display(),
        au = APP.0,
        ap = APP.1,
        nu = ANON.0,
        np = ANON.1,
        dir = topo.dir.display(),
    );
    run_until_stopped(vec![daemon], "sqlswitch, PostgreSQL and MariaDB")?;
    topo.stop();
    drop(maria);
    Ok(())
}

/// The upgrade demo: two clusters, one sqlswitch in front of both.
fn upgrade(sqlswitch: &std::path::Path) -> Result<()> {
    eprintln!("starting the old PostgreSQL cluster and the new one, subscribed to it...");
    let (old, new) = sqlswitch_tests::upgrade::two_clusters()?;
    // `switchover ... reverse` creates a subscription on the old side: a superuser on PostgreSQL 15.
    old.psql_admin(old.primary(), &format!("ALTER ROLE {} SUPERUSER", sqlswitch_tests::pg::MONITOR.0), DATABASE)?;
    let config_path = old.dir.join("sqlswitch.toml");
    let text = sqlswitch_tests::upgrade::config_text(&old, &new, LISTEN, READ_ONLY_LISTEN, Some(METRICS))
        .replace("/tmp/sqlswitch-upgrade-test.sock", "/tmp/sqlswitch-demo.sock");
    write_private(&config_path, &text)?;
    let daemon = start_daemon(sqlswitch, &config_path)?;
    println!(
        "\nsqlswitch is running (config: {config}): group main (old1 primary :{o1}, old2 standby :{o2}) serves;\n\
         group pg-new (new1 :{n1} subscribed to old1 by logical replication, new2 its standby :{n2}) waits.\n\n\
         Application:  psql 'postgresql://{au}:{ap}@{LISTEN}/{DATABASE}'   (tables up_serial, up_ident, items)\n\
         Load:         while :; do psql -Xq 'postgresql://{au}:{ap}@{LISTEN}/{DATABASE}' -c \"INSERT INTO up_serial (tag) VALUES (md5(random()::text))\"; done\n\n\
         Then:\n  {ctl} ctl --socket /tmp/sqlswitch-demo.sock status\n  \
         {ctl} ctl --socket /tmp/sqlswitch-demo.sock upgrade-check app new1\n  \
         {ctl} ctl --socket /tmp/sqlswitch-demo.sock switchover app new1 reverse\n  \
         ({ctl} ctl --socket /tmp/sqlswitch-demo.sock switchover app old1   goes back)\n\n\
         Ctrl-C stops everything.",
        config = config_path.display(),
        ctl = sqlswitch.display(),
        au = APP.0,
        ap = APP.1,
        o1 = old.nodes[0].port,
        o2 = old.nodes[1].port,
        n1 = new.nodes[0].port,
        n2 = new.nodes[1].port,
    );
    run_until_stopped(vec![daemon], "sqlswitch and PostgreSQL")?;
    new.stop();
    old.stop();
    Ok(())
}

/// The fleet demo: one PostgreSQL cluster, a real etcd, and three sqlswitch instances sharing
/// their routing through it.
fn fleet(sqlswitch: &std::path::Path) -> Result<()> {
    for port in FLEET_PORTS.iter().skip(1).flat_map(|(l, m)| [*l, *m]) {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            bail!("127.0.0.1:{port} is in use: stop whatever listens there (another demo?) and try again");
        }
    }
    eprintln!("starting a PostgreSQL primary and two streaming replicas...");
    let topo = Topology::start(2)?;
    eprintln!("starting etcd...");
    let etcd = sqlswitch_tests::etcd::Etcd::start()?;
    let mut daemons = Vec::new();
    let mut lines = String::new();
    for (i, (listen, metrics)) in FLEET_PORTS.iter().enumerate() {
        let name = ["a", "b", "c"][i];
        let config_path = topo.dir.join(format!("sqlswitch-{name}.toml"));
        let listen = format!("127.0.0.1:{listen}");
        let metrics = format!("127.0.0.1:{metrics}");
        let socket = format!("/tmp/sqlswitch-demo-{name}.sock");
        let text =
            config_text(&topo, "app", &listen, "127.0.0.1:0", Some(&metrics), sqlswitch_tests::proxy::PG_REPLICATION)
                .replace("/tmp/sqlswitch-test.sock", &socket)
                + &format!("\n[fleet]\netcd = [\"{}\"]\nttl = \"5s\"\ninstance = \"{name}\"\n", etcd.endpoint());
        write_private(&config_path, &text)?;
        daemons.push(start_daemon(sqlswitch, &config_path)?);
        lines += &format!("  instance {name}: psql 'postgresql://{}:{}@{listen}/{DATABASE}'   ctl --socket {socket}   metrics http://{metrics}/metrics\n", APP.0, APP.1);
    }
    println!(
        "\nthree sqlswitch instances share their routing through etcd at {etcd}:\n{lines}\n\
         Try:\n  {ctl} ctl --socket /tmp/sqlswitch-demo-a.sock status          (the fleet: each instance, its generation, its lease)\n  \
         {ctl} ctl --socket /tmp/sqlswitch-demo-b.sock mode app read-only  (applied by every instance before it answers)\n  \
         {ctl} ctl --socket /tmp/sqlswitch-demo-c.sock switchover app replica1 promote   (under load through every instance)\n  \
         kill -STOP <pid of one sqlswitch>   (the others go on once its lease expires; kill -CONT: it rejoins)\n\n\
         Servers: primary 127.0.0.1:{p}, replicas 127.0.0.1:{r1} and 127.0.0.1:{r2}; data in {dir}\n\n\
         Ctrl-C stops everything.",
        etcd = etcd.endpoint(),
        ctl = sqlswitch.display(),
        p = topo.nodes[0].port,
        r1 = topo.nodes[1].port,
        r2 = topo.nodes[2].port,
        dir = topo.dir.display(),
    );
    run_until_stopped(daemons, "the sqlswitch instances, etcd and PostgreSQL")?;
    drop(etcd);
    topo.stop();
    Ok(())
}

/// The fleet demo's listen and metrics ports, one pair per instance (the first is the main
/// demo's).
const FLEET_PORTS: [(u16, u16); 3] = [(6432, 9930), (6442, 9931), (6452, 9932)];

/// Starts `sqlswitch run` on `config`, and sees it still running half a second later (a bad
/// config or a port in use ends it at once; the servers are stopped as the topologies drop).
fn start_daemon(sqlswitch: &std::path::Path, config: &std::path::Path) -> Result<std::process::Child> {
    let mut daemon = Command::new(sqlswitch)
        .args(["run", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .spawn()
        .context("starting sqlswitch")?;
    std::thread::sleep(Duration::from_millis(500));
    if let Some(status) = daemon.try_wait()? {
        bail!("sqlswitch exited at start ({status})");
    }
    Ok(daemon)
}

/// Waits for whatever ends the demo (Ctrl-C, a closed terminal, kill, or sqlswitch exiting),
/// then stops sqlswitch; the caller stops the databases (`what` names everything stopped).
fn run_until_stopped(mut daemons: Vec<std::process::Child>, what: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut hup) = match (signal(SignalKind::terminate()), signal(SignalKind::hangup())) {
            (Ok(t), Ok(h)) => (t, h),
            _ => return,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
            _ = wait_exit(&mut daemons) => eprintln!("sqlswitch exited"),
        }
    });
    eprintln!("\nstopping {what}...");
    for daemon in &mut daemons {
        let _ = Command::new("kill").arg("-TERM").arg(daemon.id().to_string()).status();
        let _ = daemon.wait();
    }
    Ok(())
}

/// Until one of `children` exits.
async fn wait_exit(children: &mut [std::process::Child]) {
    while children.iter_mut().all(|c| matches!(c.try_wait(), Ok(None))) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes the config readable by its owner only: it holds passwords, and sqlswitch warns about a
/// config file other users can read.
fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// A binary built next to this one.
fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("no parent directory")?.join(name);
    if !path.exists() {
        bail!("{} not found: build it with `cargo build --release -p sqlswitch`", path.display());
    }
    Ok(path)
}
