//! Statement-level splitting against a real primary and two streaming replicas (this binary's
//! own topology, since these tests pause replay and stop servers). They run one at a time.

use std::time::{Duration, Instant};

use sqlswitch_tests::client::{connect, direct, in_recovery, server_name};
use sqlswitch_tests::pg::{Topology, APP, DATABASE};
use sqlswitch_tests::proxy;
use tokio::sync::Mutex;

/// These tests change the topology (paused replay, a stopped replica): one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// Pauses WAL replay on a replica; resumes it when dropped, even when the test fails.
struct Paused<'a>(&'a Topology, &'a sqlswitch_tests::pg::Node);

impl<'a> Paused<'a> {
    fn new(topo: &'a Topology, node: &'a sqlswitch_tests::pg::Node) -> Self {
        topo.set_replay_paused(node, true).unwrap();
        Self(topo, node)
    }
}

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        let _ = self.0.set_replay_paused(self.1, false);
    }
}

/// The non-zero routing counters, for failure messages.
fn routed(daemon: &sqlswitch::Daemon) -> String {
    let body = daemon.metrics.render();
    let lines: Vec<&str> =
        body.lines().filter(|l| l.starts_with("sqlswitch_statements_total") && !l.ends_with(" 0")).collect();
    format!("{lines:?} {:?}", daemon.status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_replicas_and_writes_to_the_primary() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let client = connect(daemon.addr("app", false).unwrap().port(), APP).await.unwrap();
    let on_replica = in_recovery(&client).await;
    let routed: Vec<String> = daemon
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("sqlswitch_statements_total") && !l.ends_with(" 0"))
        .map(str::to_owned)
        .collect();
    assert!(on_replica, "a plain SELECT of the read-write user runs on a replica: {routed:?} {:?}", daemon.status());
    let row =
        client.query_one("INSERT INTO items (note) VALUES ('rw') RETURNING pg_is_in_recovery()", &[]).await.unwrap();
    assert!(!row.get::<_, bool>(0), "an INSERT runs on the primary");
    let names: std::collections::HashSet<String> = {
        let mut set = std::collections::HashSet::new();
        for _ in 0..20 {
            let c = connect(daemon.addr("app", false).unwrap().port(), APP).await.unwrap();
            set.insert(server_name(&c).await);
        }
        set
    };
    assert!(names.iter().all(|n| n.starts_with("replica")), "{names:?}");
    let body = daemon.metrics.render();
    assert!(body.contains("sqlswitch_statements_total{cluster=\"app\",target=\"replica\",reason=\"read\"}"), "{body}");
}

/// Every routing pitfall (README, "Routing") that a standby would refuse succeeds: it ran on the
/// primary. Each runs in a fresh session so that pins do not carry over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pitfalls_run_on_the_primary() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::shared();
    let primary = direct(topo.primary().port, DATABASE).await;
    primary
        .batch_execute(
            "CREATE OR REPLACE FUNCTION touch() RETURNS int LANGUAGE sql AS 'SELECT 1';\
             GRANT EXECUTE ON FUNCTION touch() TO PUBLIC;",
        )
        .await
        .unwrap();
    topo.wait_replicas_caught_up().unwrap();
    let daemon = proxy::start(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    for sql in [
        "SELECT nextval('items_id_seq')",
        "SELECT txid_current()",
        "SELECT pg_notify('chan', 'x')",
        "SELECT id FROM items LIMIT 1 FOR UPDATE",
        "SELECT id FROM items LIMIT 1 FOR SHARE",
        "SELECT id FROM items LIMIT 1 FOR NO KEY UPDATE",
        "SELECT id FROM items LIMIT 1 FOR KEY SHARE",
        "WITH d AS (DELETE FROM items WHERE note = 'never there' RETURNING *) SELECT count(*) FROM d",
        "SELECT 1 AS a INTO TEMP pitfall_into",
        "EXPLAIN ANALYZE INSERT INTO items (note) VALUES ('explained')",
        "LISTEN chan",
        "CREATE TEMP TABLE pitfall_temp AS SELECT 1 AS a",
        "SELECT pg_is_in_recovery(); INSERT INTO items (note) VALUES ('multi')",
    ] {
        let client = connect(port, APP).await.unwrap();
        client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    // Statements that a standby would run too: prove where they ran.
    for sql in [
        "SELECT pg_is_in_recovery(), pg_advisory_lock(7)::text",
        "SELECT pg_is_in_recovery(), touch()::text",
        "SELECT pg_is_in_recovery(), currval('items_id_seq')::text FROM (SELECT nextval('items_id_seq')) s",
    ] {
        let client = connect(port, APP).await.unwrap();
        let row = client.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        assert!(!row.get::<_, bool>(0), "{sql} ran on a replica");
    }
    // Pins last for the session: a temp table, then plain reads stay on the primary.
    let client = connect(port, APP).await.unwrap();
    client.batch_execute("CREATE TEMP TABLE t_pin (a int); INSERT INTO t_pin VALUES (1)").await.unwrap();
    let n: i64 = client.query_one("SELECT count(*) FROM t_pin", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    assert!(!in_recovery(&client).await, "a session with a temp table stays on the primary");
    // SERIALIZABLE as the session default pins too (a standby refuses it).
    let client = connect(port, APP).await.unwrap();
    client.batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE").await.unwrap();
    assert!(!in_recovery(&client).await);
    // An explicit transaction stays whole on the primary, reads included.
    let client = connect(port, APP).await.unwrap();
    client.batch_execute("BEGIN").await.unwrap();
    assert!(!in_recovery(&client).await, "a read inside BEGIN runs on the primary");
    client.batch_execute("INSERT INTO items (note) VALUES ('in tx')").await.unwrap();
    assert!(!in_recovery(&client).await);
    client.batch_execute("COMMIT").await.unwrap();
    // A READ ONLY transaction runs whole on one replica (in a session with no fresh write of
    // its own: that one would keep it on the primary until a replica has the write).
    let client = connect(port, APP).await.unwrap();
    client.batch_execute("BEGIN READ ONLY").await.unwrap();
    let first = server_name(&client).await;
    assert!(first.starts_with("replica"), "{first}");
    for _ in 0..5 {
        assert_eq!(server_name(&client).await, first);
    }
    client.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_and_prepared_statements_follow_the_session() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::shared();
    let primary = direct(topo.primary().port, DATABASE).await;
    primary
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS other AUTHORIZATION app;\
             CREATE TABLE IF NOT EXISTS other.marker (v text);\
             ALTER TABLE other.marker OWNER TO app;\
             TRUNCATE other.marker; INSERT INTO other.marker VALUES ('other schema');",
        )
        .await
        .unwrap();
    topo.wait_replicas_caught_up().unwrap();
    let daemon = proxy::start(topo, "").await.unwrap();
    let client = connect(daemon.addr("app", false).unwrap().port(), APP).await.unwrap();
    client.batch_execute("SET search_path = other, public").await.unwrap();
    let row = client.query_one("SELECT v, pg_is_in_recovery() FROM marker", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "other schema", "the replica sees the session's search_path");
    assert!(row.get::<_, bool>(1), "and it was a replica: {}", routed(&daemon));

    let read = client.prepare("SELECT pg_is_in_recovery(), $1::int + 1").await.unwrap();
    for i in 0..5 {
        let row = client.query_one(&read, &[&i]).await.unwrap();
        assert!(row.get::<_, bool>(0), "a prepared read runs on a replica");
        assert_eq!(row.get::<_, i32>(1), i + 1);
    }
    let write =
        client.prepare("INSERT INTO public.items (note) VALUES ($1) RETURNING pg_is_in_recovery()").await.unwrap();
    let row = client.query_one(&write, &[&"prepared"]).await.unwrap();
    assert!(!row.get::<_, bool>(0), "a prepared write runs on the primary");
    // Right after the write, reads wait for a replica that has it; soon they are back on one.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let row = client.query_one(&read, &[&1]).await.unwrap();
        if row.get::<_, bool>(0) {
            break;
        }
        assert!(Instant::now() < deadline, "reads never returned to a replica after a write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_its_own_writes_while_replicas_lag() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let client = connect(daemon.addr("app", false).unwrap().port(), APP).await.unwrap();
    let paused: Vec<Paused<'_>> = topo.replicas().iter().map(|r| Paused::new(topo, r)).collect();
    let insert = client.prepare("INSERT INTO items (note) VALUES ($1) RETURNING id").await.unwrap();
    let select = client.prepare("SELECT note FROM items WHERE id = $1").await.unwrap();
    let mut found = 0;
    for i in 0..1000 {
        let note = format!("ryw {i}");
        let id: i64 = client.query_one(&insert, &[&note]).await.unwrap().get(0);
        let rows = client.query(&select, &[&id]).await.unwrap();
        if rows.first().map(|r| r.get::<_, String>(0)) == Some(note) {
            found += 1;
        }
    }
    drop(paused);
    assert_eq!(found, 1000, "every read after a write sees it");
    topo.wait_replicas_caught_up().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_gets_no_reads_until_it_recovers() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "max_replica_lag = \"300ms\"").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let lagging = &topo.replicas()[0];
    let paused = Paused::new(topo, lagging);
    // Keep the primary moving, straight to it, so the paused replica falls behind.
    let writer = direct(topo.primary().port, DATABASE).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_writer = std::sync::Arc::clone(&stop);
    let writes = tokio::spawn(async move {
        while !stop_writer.load(std::sync::atomic::Ordering::Relaxed) {
            writer.batch_execute("INSERT INTO items (note) VALUES ('lag')").await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut seen = std::collections::HashMap::new();
    for _ in 0..30 {
        let c = connect(port, APP).await.unwrap();
        for _ in 0..5 {
            *seen.entry(server_name(&c).await).or_insert(0) += 1;
        }
    }
    assert!(!seen.contains_key(&lagging.name), "a replica past max_replica_lag got reads: {seen:?}");
    assert!(seen.contains_key(&topo.replicas()[1].name), "the healthy replica still serves reads: {seen:?}");

    drop(paused);
    let deadline = Instant::now() + Duration::from_secs(10);
    'recovered: loop {
        for _ in 0..10 {
            let c = connect(port, APP).await.unwrap();
            if server_name(&c).await == lagging.name {
                break 'recovered;
            }
        }
        assert!(Instant::now() < deadline, "the replica never got reads again after catching up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writes.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_replica_costs_no_read_errors() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        tasks.push(tokio::spawn(async move {
            let client = connect(port, APP).await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(3);
            let (mut ok, mut errors) = (0u32, Vec::new());
            while Instant::now() < deadline {
                match client.query_one("SELECT count(*) FROM items", &[]).await {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        errors.push(format!("{e:?}"));
                        break;
                    }
                }
            }
            (ok, errors)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let victim = &topo.replicas()[1];
    topo.kill_node(victim).unwrap();
    let mut total = 0;
    for t in tasks {
        let (ok, errors) = t.await.unwrap();
        assert!(errors.is_empty(), "reads failed when a replica stopped: {errors:?}");
        total += ok;
    }
    assert!(total > 100, "only {total} reads");
    topo.restart_node(victim).unwrap();
    topo.wait_replicas_caught_up().unwrap();
}
