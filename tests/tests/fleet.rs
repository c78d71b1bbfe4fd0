//! Fleet mode: several sqlswitch instances in front of one real PostgreSQL cluster act as one
//! through a real etcd (Debian's etcd-server) that the harness starts. Some instances run in
//! this process, others as processes of their own (`sqlswitch-instance`) so that a test can
//! freeze (`SIGSTOP`) or kill one. Each test starts its own topology; they run one at a time.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlswitch_tests::client::{code, connect, direct, in_recovery};
use sqlswitch_tests::etcd::{Etcd, Relay};
use sqlswitch_tests::fleet::{
    config, fleet_of, instance, joined, port_of, prefix, rand_u32, switchover, until, write_through, TTL,
};
use sqlswitch_tests::pg::{free_ports, Topology, APP};
use sqlswitch_tests::proxy::primary_of;
use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;

static SERIAL: Mutex<()> = Mutex::const_new(());

/// An instance as a process of its own, stopped by SIGKILL when dropped.
struct Process {
    child: Child,
    port: u16,
    socket: PathBuf,
    dir: PathBuf,
}

impl Process {
    fn start(topo: &Topology, etcd: &str, prefix: &str, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sqlswitch-fleet-{}-{name}-{}", std::process::id(), rand_u32()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_ports(1).unwrap()[0];
        let socket = dir.join("admin.sock");
        let text = config(topo, etcd, prefix, name, &format!("127.0.0.1:{port}"), &socket.display().to_string());
        std::fs::write(dir.join("sqlswitch.toml"), text).unwrap();
        let log = std::fs::File::create(dir.join("sqlswitch.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sqlswitch-instance"))
            .arg(dir.join("sqlswitch.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self { child, port, socket, dir }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill {signal}");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sqlswitch.log")).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends an admin command over a daemon's socket; its last answer line.
async fn admin(socket: &std::path::Path, command: &str) -> Value {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let Ok(stream) = tokio::net::UnixStream::connect(socket).await else { return Value::Null };
    let (read, mut write) = stream.into_split();
    if write.write_all(format!("{command}\n").as_bytes()).await.is_err() {
        return Value::Null;
    }
    let mut lines = tokio::io::BufReader::new(read).lines();
    let mut last = Value::Null;
    while let Ok(Some(line)) = lines.next_line().await {
        last = serde_json::from_str(&line).unwrap_or(Value::Null);
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_switch_over_together_under_load_and_share_a_mode_change() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    let etcd = Etcd::start().unwrap();
    let prefix = prefix();
    let mut daemons = Vec::new();
    for name in ["a", "b", "c"] {
        daemons.push(instance(&topo, &etcd.endpoint(), &prefix, name).await);
    }
    for d in &daemons {
        joined(d, 3).await;
    }
    let old = direct(topo.primary().port, "app").await;
    old.batch_execute(
        "CREATE TABLE fleet_writes (id bigserial PRIMARY KEY, via text); ALTER TABLE fleet_writes OWNER TO app",
    )
    .await
    .unwrap();

    // Write load through every instance: each insert is acknowledged or an error.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for (i, d) in daemons.iter().enumerate() {
        let (port, stop) = (port_of(d), Arc::clone(&stop));
        load.push(tokio::spawn(async move {
            let client = connect(port, APP).await.unwrap();
            let (mut acked, mut errors) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match client
                    .query_one("INSERT INTO fleet_writes (via) VALUES ($1) RETURNING id", &[&format!("{i}")])
                    .await
                {
                    Ok(row) => acked.push(row.get::<_, i64>(0)),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (acked, errors)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answer = switchover(&daemons[1], "replica1").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let answer = answer.expect("the switchover typed on instance b");
    eprintln!("switchover across 3 instances: pause {} ms", answer["pause_ms"]);
    let (mut acked, mut errors) = (Vec::new(), Vec::new());
    for l in load {
        let (a, e) = l.await.unwrap();
        acked.extend(a);
        errors.extend(e);
    }
    assert!(errors.is_empty(), "client errors during the switchover: {errors:?}");
    assert!(acked.len() > 20, "the load ran ({} writes)", acked.len());
    for d in &daemons {
        until("every instance routes to the new primary", Duration::from_secs(5), || primary_of(d) == "replica1").await;
    }
    let generations: BTreeSet<String> =
        daemons.iter().map(|d| fleet_of(&d.control.status())["generation"].to_string()).collect();
    assert_eq!(generations.len(), 1, "every instance applies the same generation: {generations:?}");
    // The fleet's gauges (deploy/prometheus/alerts.yml names sqlswitch_fleet_fenced).
    let body = daemons[2].metrics.render();
    let generation = fleet_of(&daemons[2].control.status())["generation"].to_string();
    for series in [
        format!("sqlswitch_fleet_generation{{cluster=\"app\"}} {generation}"),
        "sqlswitch_fleet_instances{cluster=\"app\"} 3".to_owned(),
        "sqlswitch_fleet_fenced{cluster=\"app\"} 0".to_owned(),
    ] {
        assert!(body.lines().any(|l| l == series), "{series} in:\n{body}");
    }

    // No write reached the old primary after its fence: every row it has, the new primary
    // has too (it replayed up to the fence), and every acknowledged write is on the new one.
    let new = direct(topo.replicas()[0].port, "app").await;
    let ids = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| r.get::<_, i64>(0)).collect::<BTreeSet<i64>>();
    let on_old = ids(old.query("SELECT id FROM fleet_writes", &[]).await.unwrap());
    let on_new = ids(new.query("SELECT id FROM fleet_writes", &[]).await.unwrap());
    let split: Vec<&i64> = on_old.difference(&on_new).collect();
    assert!(split.is_empty(), "rows written on the old primary after its fence: {split:?}");
    let lost: Vec<&i64> = acked.iter().filter(|id| !on_new.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged writes missing on the new primary: {lost:?}");
    assert!(on_new.len() > on_old.len(), "writes went on, on the new primary, after the switchover");

    // A mode change typed on one instance is applied by all before the command answers.
    let answer = daemons[0].control.mode("app", "read-only").await.unwrap();
    assert_eq!(answer["fleet"]["applied_by"], 3, "{answer}");
    eprintln!("mode change propagated to 3 instances in {} ms", answer["fleet"]["propagation_ms"]);
    for d in &daemons {
        assert_eq!(d.control.status()["clusters"][0]["mode"], "read-only");
    }
    let refused = write_through(port_of(&daemons[2])).await.expect_err("a write in read-only mode");
    assert_eq!(code(&refused), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
    daemons[2].control.mode("app", "read-write").await.unwrap();
    assert_eq!(write_through(port_of(&daemons[0])).await.unwrap(), "replica1");
    drop(daemons);
    topo.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_etcd_fences_itself_before_its_key_expires_and_rejoins() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    let etcd = Etcd::start().unwrap();
    let relay = Relay::start(etcd.port).await.unwrap();
    let prefix = prefix();
    let cut_off = instance(&topo, &relay.endpoint(), &prefix, "behind-relay").await;
    let other = instance(&topo, &etcd.endpoint(), &prefix, "direct").await;
    joined(&cut_off, 2).await;
    joined(&other, 2).await;
    assert_eq!(write_through(port_of(&cut_off)).await.unwrap(), "primary");
    let session = connect(port_of(&cut_off), APP).await.unwrap();

    relay.cut();
    let cut_at = Instant::now();
    until("the cut-off instance fences itself", TTL + Duration::from_secs(1), || {
        fleet_of(&cut_off.control.status())["fenced"] == true
    })
    .await;
    let fenced_after = cut_at.elapsed();
    // Its key has not expired yet: the other instance still counts it.
    let seen = fleet_of(&other.control.status());
    assert!(
        seen["instances"].as_array().unwrap().iter().any(|i| i["name"] == "behind-relay"),
        "fenced {fenced_after:?} after the cut, before its key expired: {seen}"
    );
    eprintln!("cut off from etcd: fenced after {} ms (ttl {} ms)", fenced_after.as_millis(), TTL.as_millis());
    // Writes are held, then refused as read-only; reads go on.
    let refused =
        session.execute("INSERT INTO items (note) VALUES ('cut off')", &[]).await.expect_err("a write while fenced");
    assert_eq!(code(&refused), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{refused}");
    let n: i64 = session.query_one("SELECT count(*) FROM items", &[]).await.unwrap().get(0);
    assert!(n > 0);
    assert_eq!(write_through(port_of(&other)).await.unwrap(), "primary", "the other instance writes on");
    // Its key expires; the other instance stops counting it.
    until("the cut-off instance's key expires", TTL * 3, || {
        fleet_of(&other.control.status())["instances"].as_array().is_some_and(|i| i.len() == 1)
    })
    .await;

    let _mended = Relay::start_on(relay.port, etcd.port).await.unwrap();
    until("the instance rejoins", Duration::from_secs(15), || fleet_of(&cut_off.control.status())["fenced"] == false)
        .await;
    session.execute("INSERT INTO items (note) VALUES ('rejoined')", &[]).await.expect("a write after rejoining");
    drop((cut_off, other));
    topo.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_stopped_reads_go_on_writes_are_refused_after_the_ttl_and_recover() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    let etcd = Etcd::start().unwrap();
    let prefix = prefix();
    let daemons = [
        instance(&topo, &etcd.endpoint(), &prefix, "one").await,
        instance(&topo, &etcd.endpoint(), &prefix, "two").await,
    ];
    for d in &daemons {
        joined(d, 2).await;
    }
    // With the replica drained (on every instance), reads go to the primary: a fenced instance
    // still sends them there.
    let drained = daemons[0].control.set_enabled("app", "replica1", false).await.unwrap();
    assert_eq!(drained["fleet"]["applied_by"], 2, "{drained}");
    assert_eq!(daemons[1].control.status()["clusters"][0]["backends"][1]["state"], "draining");
    let sessions =
        [connect(port_of(&daemons[0]), APP).await.unwrap(), connect(port_of(&daemons[1]), APP).await.unwrap()];
    etcd.stop();
    let stopped = Instant::now();
    for d in &daemons {
        until("fenced once the lease runs out", TTL + Duration::from_secs(1), || {
            fleet_of(&d.control.status())["fenced"] == true
        })
        .await;
    }
    assert!(stopped.elapsed() < TTL, "fenced before the lease expired ({:?})", stopped.elapsed());
    for s in &sessions {
        let refused =
            s.execute("INSERT INTO items (note) VALUES ('no etcd')", &[]).await.expect_err("a write without etcd");
        assert_eq!(code(&refused), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{refused}");
        let on: String = s
            .query_one("SELECT current_setting('cluster_name'), count(*) FROM items", &[])
            .await
            .expect("reads go on without etcd")
            .get(0);
        assert_eq!(on, "primary", "the read went to the primary (the replica is drained)");
    }
    // A change of routing cannot be made without etcd, and says so.
    let refused = daemons[0].control.mode("app", "read-only").await.expect_err("mode without etcd");
    assert!(refused.contains("etcd"), "{refused}");

    etcd.resume().unwrap();
    for d in &daemons {
        until("rejoined once etcd is back", Duration::from_secs(20), || {
            fleet_of(&d.control.status())["fenced"] == false
        })
        .await;
    }
    for s in &sessions {
        s.execute("INSERT INTO items (note) VALUES ('etcd back')", &[]).await.expect("writes once etcd is back");
    }
    drop(daemons);
    topo.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_instance_is_not_waited_for_and_a_killed_driver_is_rolled_back() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(2).unwrap();
    let etcd = Etcd::start().unwrap();
    let prefix = prefix();
    let frozen = Process::start(&topo, &etcd.endpoint(), &prefix, "frozen");
    let driver = Process::start(&topo, &etcd.endpoint(), &prefix, "driver");
    let here = instance(&topo, &etcd.endpoint(), &prefix, "here").await;
    joined(&here, 3).await;

    // An instance frozen (SIGSTOP) during a switchover: the others go on once its lease
    // expires; when it wakes, it is fenced until it has read the new routing.
    frozen.signal("-STOP");
    let at = Instant::now();
    let answer =
        switchover(&here, "replica1").await.unwrap_or_else(|e| panic!("switchover with a frozen instance: {e}"));
    eprintln!(
        "switchover with a frozen instance took {} ms (its lease: {} ms)",
        at.elapsed().as_millis(),
        TTL.as_millis()
    );
    assert_eq!(answer["to"], "replica1");
    frozen.signal("-CONT");
    let landed = write_through(frozen.port)
        .await
        .unwrap_or_else(|e| panic!("a write through the woken instance: {e}\n{}", frozen.log()));
    assert_eq!(landed, "replica1", "the woken instance writes on the new primary, never the old");
    joined(&here, 3).await;

    // The driver of a switchover is killed while it waits for the others to hold: another
    // instance rolls it back once the driver's lease has expired.
    let busy = connect(port_of(&here), APP).await.unwrap();
    busy.batch_execute("BEGIN; INSERT INTO items (note) VALUES ('in flight')").await.unwrap();
    let socket = driver.socket.clone();
    let typed = tokio::spawn(async move { admin(&socket, "switchover app replica2 promote timeout=60s").await });
    until("the driver publishes its change", Duration::from_secs(10), || {
        !fleet_of(&here.control.status())["change"].is_null()
    })
    .await;
    let mut driver = driver;
    driver.child.kill().unwrap();
    driver.child.wait().unwrap();
    let _ = typed.await;
    busy.batch_execute("COMMIT").await.expect("the transaction in flight commits");
    until("the change is rolled back by another instance", TTL * 4, || {
        fleet_of(&here.control.status())["change"].is_null()
    })
    .await;
    assert_eq!(primary_of(&here), "replica1", "rolled back: the primary stays");
    let replica2 = direct(topo.replicas()[1].port, "app").await;
    assert!(in_recovery(&replica2).await, "replica2 was never promoted");
    assert_eq!(write_through(port_of(&here)).await.unwrap(), "replica1");
    assert_eq!(write_through(frozen.port).await.unwrap(), "replica1");
    drop(here);
    topo.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_switchovers_one_wins() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(2).unwrap();
    let etcd = Etcd::start().unwrap();
    let prefix = prefix();
    let a = instance(&topo, &etcd.endpoint(), &prefix, "a").await;
    let b = instance(&topo, &etcd.endpoint(), &prefix, "b").await;
    joined(&a, 2).await;
    joined(&b, 2).await;
    let (to_1, to_2) = tokio::join!(switchover(&a, "replica1"), switchover(&b, "replica2"));
    let winner = match (&to_1, &to_2) {
        (Ok(_), Err(e)) => {
            eprintln!("replica1 won; the other: {e}");
            "replica1"
        }
        (Err(e), Ok(_)) => {
            eprintln!("replica2 won; the other: {e}");
            "replica2"
        }
        _ => panic!("exactly one switchover wins: {to_1:?} / {to_2:?}"),
    };
    for d in [&a, &b] {
        until("both instances route to the winner", Duration::from_secs(5), || primary_of(d) == winner).await;
    }
    let mut writable = Vec::new();
    for node in topo.replicas() {
        if !in_recovery(&direct(node.port, "app").await).await {
            writable.push(node.name.clone());
        }
    }
    assert_eq!(writable, [winner], "exactly one server was promoted");
    assert_eq!(write_through(port_of(&a)).await.unwrap(), winner);
    assert_eq!(write_through(port_of(&b)).await.unwrap(), winner);
    drop((a, b));
    topo.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_driver_died_after_the_promotion_is_finished_by_another_instance() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    let etcd = Etcd::start().unwrap();
    let prefix = prefix();
    let daemons =
        [instance(&topo, &etcd.endpoint(), &prefix, "x").await, instance(&topo, &etcd.endpoint(), &prefix, "y").await];
    for d in &daemons {
        joined(d, 2).await;
    }
    // A driver ("ghost") published its switchover, holds the lock on its lease, fenced the old
    // primary and promoted the target; then it died before publishing the new primary.
    let mut etcd_client = etcd_client::Client::connect([etcd.endpoint()], None).await.unwrap();
    let lease = etcd_client.lease_grant(2, None).await.unwrap().id();
    let lock = format!("{prefix}/app/lock");
    let options = etcd_client::PutOptions::new().with_lease(lease);
    etcd_client.put(lock, r#"{"by":"ghost","kind":"switchover","target":"replica1"}"#, Some(options)).await.unwrap();
    let key = format!("{prefix}/app/routing");
    let got = etcd_client.get(key.clone(), None).await.unwrap();
    let mut doc: Value = serde_json::from_slice(got.kvs()[0].value()).unwrap();
    doc["generation"] = (doc["generation"].as_u64().unwrap() + 1).into();
    doc["change"] = serde_json::json!({ "kind": "switchover", "by": "ghost", "from": "primary", "target": "replica1", "step": "promote" });
    etcd_client.put(key, doc.to_string(), None).await.unwrap();
    for d in &daemons {
        until("every instance holds", Duration::from_secs(5), || !fleet_of(&d.control.status())["change"].is_null())
            .await;
    }
    for sql in ["ALTER SYSTEM SET default_transaction_read_only = on", "SELECT pg_reload_conf()"] {
        topo.psql_admin(topo.primary(), sql, "postgres").unwrap();
    }
    topo.psql_admin(&topo.replicas()[0], "SELECT pg_promote()", "postgres").unwrap();
    let held = tokio::spawn({
        let port = port_of(&daemons[0]);
        async move { write_through(port).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "a write waits while the change is unresolved");
    // The ghost's lease expires with its lock: an instance finishes the change.
    etcd_client.lease_revoke(lease).await.unwrap();
    for d in &daemons {
        until("the change is finished", Duration::from_secs(10), || {
            fleet_of(&d.control.status())["change"].is_null() && primary_of(d) == "replica1"
        })
        .await;
    }
    assert_eq!(held.await.unwrap().unwrap(), "replica1", "the held write is released to the new primary");
    assert_eq!(write_through(port_of(&daemons[1])).await.unwrap(), "replica1");
    drop(daemons);
    topo.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_follows_a_failover_made_outside_sqlswitch() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    let etcd = Etcd::start().unwrap();
    let prefix = prefix();
    let daemons = [
        instance(&topo, &etcd.endpoint(), &prefix, "p").await,
        instance(&topo, &etcd.endpoint(), &prefix, "q").await,
        instance(&topo, &etcd.endpoint(), &prefix, "r").await,
    ];
    for d in &daemons {
        joined(d, 3).await;
    }
    // Another tool (Patroni, repmgr, a person) loses the primary and promotes the replica.
    topo.kill_node(topo.primary()).unwrap();
    topo.psql_admin(&topo.replicas()[0], "SELECT pg_promote()", "postgres").unwrap();
    for d in &daemons {
        until("every instance follows the servers", Duration::from_secs(15), || primary_of(d) == "replica1").await;
    }
    let generations: BTreeSet<String> =
        daemons.iter().map(|d| fleet_of(&d.control.status())["generation"].to_string()).collect();
    assert_eq!(generations.len(), 1, "one generation, published once: {generations:?}");
    for d in &daemons {
        assert_eq!(write_through(port_of(d)).await.unwrap(), "replica1");
    }
    drop(daemons);
    topo.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_instances_switch_over_together() {
    use mysql_async::prelude::Queryable;
    let _serial = SERIAL.lock().await;
    let topo = sqlswitch_tests::mysql::Topology::start(1).unwrap();
    let etcd = Etcd::start().unwrap();
    let prefix = prefix();
    let mut daemons = Vec::new();
    for name in ["m1", "m2"] {
        let text = sqlswitch_tests::proxy::mysql_config_text(&topo, "app", sqlswitch_tests::proxy::MY_REPLICATION)
            + &format!(
                "\n[fleet]\netcd = [\"{}\"]\nprefix = \"{prefix}\"\nttl = \"{}s\"\ninstance = \"{name}\"\n",
                etcd.endpoint(),
                TTL.as_secs()
            );
        let config = sqlswitch_config::Config::parse(&text, std::path::Path::new("<test>"), |_| None).unwrap();
        daemons.push(sqlswitch::Daemon::launch(config, false, 1).await.unwrap());
    }
    for d in &daemons {
        joined(d, 2).await;
    }
    let url = |d: &sqlswitch::Daemon| sqlswitch_tests::proxy::mysql_url(port_of(d), APP);
    // A session through the other instance, open across the switchover.
    let mut session = mysql_async::Conn::from_url(url(&daemons[1])).await.unwrap();
    switchover(&daemons[0], "replica1").await.expect("switchover typed on m1");
    until("m2 routes to the new primary", Duration::from_secs(5), || primary_of(&daemons[1]) == "replica1").await;
    session.query_drop("INSERT INTO items (note) VALUES ('through m2')").await.unwrap();
    // In a transaction, so on the primary.
    let mut fresh = mysql_async::Conn::from_url(url(&daemons[1])).await.unwrap();
    fresh.query_drop("START TRANSACTION").await.unwrap();
    let (server, n): (u32, i64) =
        fresh.query_first("SELECT @@server_id, count(*) FROM items WHERE note = 'through m2'").await.unwrap().unwrap();
    fresh.query_drop("COMMIT").await.unwrap();
    assert_eq!((server, n), (topo.replicas()[0].server_id, 1), "the write through m2 landed on the new primary");
    drop(daemons);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_of_the_same_name_stays_fenced_until_the_first_leaves() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    let etcd = Etcd::start().unwrap();
    let prefix = prefix();
    let first = instance(&topo, &etcd.endpoint(), &prefix, "same").await;
    joined(&first, 1).await;
    let second = instance(&topo, &etcd.endpoint(), &prefix, "same").await;
    tokio::time::sleep(TTL).await;
    assert_eq!(fleet_of(&second.control.status())["fenced"], true, "a second instance of one name does not join");
    let refused = write_through(port_of(&second)).await.expect_err("a write through the second");
    assert_eq!(code(&refused), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
    assert_eq!(write_through(port_of(&first)).await.unwrap(), "primary", "the first one is not disturbed");
    // The first one stops (its lease is revoked as it leaves): the second one joins.
    drop(first);
    until("the second joins once the first has left", Duration::from_secs(10), || {
        fleet_of(&second.control.status())["fenced"] == false
    })
    .await;
    assert_eq!(write_through(port_of(&second)).await.unwrap(), "primary");
    drop(second);
    topo.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_typed_on_one_instance_moves_the_whole_fleet() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    let etcd = Etcd::start().unwrap();
    let prefix = prefix();
    let daemons = [
        instance(&topo, &etcd.endpoint(), &prefix, "f1").await,
        instance(&topo, &etcd.endpoint(), &prefix, "f2").await,
    ];
    for d in &daemons {
        joined(d, 2).await;
    }
    topo.kill_node(topo.primary()).unwrap();
    let mut steps = Vec::new();
    let answer = sqlswitch::failover::run(&daemons[0].control, "app", None, true, Duration::from_secs(30), &mut |s| {
        steps.push(s.name)
    })
    .await
    .expect("failover typed on f1");
    assert_eq!(answer["to"], "replica1");
    until("f2 follows the failover", Duration::from_secs(5), || primary_of(&daemons[1]) == "replica1").await;
    assert!(fleet_of(&daemons[1].control.status())["change"].is_null(), "the change is over on every instance");
    assert_eq!(write_through(port_of(&daemons[1])).await.unwrap(), "replica1");
    drop(daemons);
    topo.stop();
}
