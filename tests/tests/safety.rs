//! The safety rules of a change of primary, against real servers: a transaction open when
//! the primary changes commits nothing anywhere and its client is told; every hold ends. Each
//! test changes the primary by hand as an external tool (Patroni, repmgr, orchestrator) would,
//! on a topology of its own.

use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use sqlswitch_tests::client::{code, connect};
use sqlswitch_tests::pg::{Topology, APP, DATABASE};
use sqlswitch_tests::proxy;
use sqlswitch_tests::proxy::{eventually, primary_of};
use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;

/// Each test promotes servers and wants the machine: one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// The reproduction: `BEGIN; INSERT` on the primary, the primary fenced and a standby
/// promoted by hand, sqlswitch follows; then the transaction's next statement (an INSERT in
/// one session, COMMIT in another) fails as on a lost connection (57P01), and no row of either
/// transaction is committed on the new primary or the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_a_transaction_open_across_a_followed_promotion_commits_nothing() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    let daemon = proxy::start(&topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let (inserting, committing) = (connect(port, APP).await.unwrap(), connect(port, APP).await.unwrap());
    for client in [&inserting, &committing] {
        client.batch_execute("BEGIN; INSERT INTO items (note) VALUES ('split, first')").await.unwrap();
    }
    let old = topo.primary();
    topo.psql_admin(old, "ALTER SYSTEM SET default_transaction_read_only = on", "postgres").unwrap();
    topo.psql_admin(old, "SELECT pg_reload_conf()", "postgres").unwrap();
    topo.psql_admin(&topo.replicas()[0], "SELECT pg_promote(true, 60)", "postgres").unwrap();
    eventually(5, "sqlswitch follows the promoted server", || primary_of(&daemon) == "replica1").await;

    let e = inserting.batch_execute("INSERT INTO items (note) VALUES ('split, second')").await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::ADMIN_SHUTDOWN), "{e:?}");
    let text = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
    assert!(
        text.contains("transaction") && text.contains("nothing of it was committed"),
        "the client hears why: {text}"
    );
    let e = committing.batch_execute("COMMIT").await.expect_err("COMMIT must not succeed");
    assert_eq!(code(&e), Some(&SqlState::ADMIN_SHUTDOWN), "{e:?}");

    let count = "SELECT count(*) FROM items WHERE note LIKE 'split%'";
    assert_eq!(topo.psql_admin(&topo.replicas()[0], count, DATABASE).unwrap().trim(), "0", "new primary");
    // The old primary's transactions were rolled back (their connections closed), not left
    // open to commit later.
    let open = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state LIKE 'idle in transaction%'";
    eventually(5, "no transaction left open on the old primary", || {
        topo.psql_admin(old, open, "postgres").unwrap().trim() == "0"
    })
    .await;
    assert_eq!(topo.psql_admin(old, count, DATABASE).unwrap().trim(), "0", "old primary");
    // A new session writes on the new primary.
    let fresh = connect(port, APP).await.unwrap();
    fresh.batch_execute("INSERT INTO items (note) VALUES ('after')").await.expect("a new transaction goes on");
}

/// The same on MariaDB: the statement after the followed promotion gets 1927 (connection
/// killed) and the connection closes; nothing of the transaction is on either server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_a_transaction_open_across_a_followed_promotion_commits_nothing() {
    let _serial = SERIAL.lock().await;
    let topo = sqlswitch_tests::mysql::Topology::start(1).unwrap();
    let daemon = proxy::start_mysql(&topo, "").await.unwrap();
    let url = proxy::mysql_url(daemon.addr("app", false).unwrap().port(), APP);
    let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).unwrap()).await.unwrap();
    conn.query_drop("START TRANSACTION").await.unwrap();
    conn.query_drop("INSERT INTO items (note) VALUES ('split, first')").await.unwrap();
    let (old, new) = (topo.primary(), &topo.replicas()[0]);
    topo.sql(old, "SET GLOBAL read_only = 1").unwrap();
    topo.sql(new, "STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0").unwrap();
    eventually(5, "sqlswitch follows the promoted server", || primary_of(&daemon) == "replica1").await;

    let e = conn.query_drop("INSERT INTO items (note) VALUES ('split, second')").await.unwrap_err();
    match &e {
        mysql_async::Error::Server(s) => assert_eq!(s.code, 1927, "{e:?}"),
        other => panic!("expected the server error 1927, got {other:?}"),
    }
    assert!(conn.query_drop("COMMIT").await.is_err(), "the connection is closed");
    let count = format!("SELECT count(*) FROM {DATABASE}.items WHERE note LIKE 'split%'");
    assert_eq!(topo.sql(new, &count).unwrap().trim(), "0", "new primary");
    assert_eq!(topo.sql(old, &count).unwrap().trim(), "0", "old primary");
}

/// A pause's timer belongs to its cluster: `pause a timeout=1s` then `resume b` still ends a's
/// pause about a second later (one counter for the daemon made it last forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_ends_by_its_timeout_whatever_other_clusters_do() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::shared();
    let (a, b) = ("127.0.0.1:0", "127.0.0.1:0");
    let first = proxy::config_text(topo, "a", a, b, None, "");
    let second = proxy::config_text(topo, "b", a, b, None, "");
    let second = second.split_once("\n[[cluster]]").map(|(_, rest)| rest).unwrap();
    let daemon = proxy::start_text(&format!("{first}\n[[cluster]]{second}")).await.unwrap();
    let port = daemon.addr("a", false).unwrap().port();
    let client = connect(port, APP).await.unwrap();

    daemon.control.pause("a", Duration::from_secs(1)).unwrap();
    daemon.control.resume("b").unwrap();
    let started = Instant::now();
    let write = client.batch_execute("INSERT INTO items (note) VALUES ('after the pause')");
    tokio::time::timeout(Duration::from_secs(5), write)
        .await
        .expect("the pause ended within 5 s")
        .expect("held, then run");
    let held = started.elapsed();
    assert!(held >= Duration::from_millis(800), "the pause held the write ({held:?})");
    assert!(held < Duration::from_secs(4), "the pause ended by its own timeout ({held:?})");
}

/// The monitor is locked out of the primary (its role can no longer log in: a pg_hba change, a
/// rotated password) while sessions still write there, and the replica stops replaying: the
/// replica must not count as fresh, so a session reads its own write (from the primary), and
/// `status` says the primary does not answer the monitor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_locked_out_of_the_primary_does_not_make_a_stale_replica_fresh() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    let daemon = proxy::start(&topo, "max_replica_lag = \"10s\"").await.unwrap();
    let client = connect(daemon.addr("app", false).unwrap().port(), APP).await.unwrap();
    topo.set_replay_paused(&topo.replicas()[0], true).unwrap();
    let monitor = sqlswitch_tests::pg::MONITOR.0;
    let lock_out = format!(
        "ALTER ROLE {monitor} NOLOGIN; SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{monitor}'"
    );
    topo.psql_admin(topo.primary(), &lock_out, "postgres").unwrap();
    eventually(5, "status says the primary does not answer the monitor", || {
        let status = daemon.control.status();
        status["clusters"][0]["primary_problem"].as_str().is_some_and(|p| p.starts_with("primary unknown"))
    })
    .await;
    client.batch_execute("INSERT INTO items (note) VALUES ('locked out, mine')").await.expect("writes go on");
    // The window in which a monitor that failed open would have marked the paused replica
    // caught up (it sampled every 100 ms): ten samples.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let n: i64 =
        client.query_one("SELECT count(*) FROM items WHERE note = 'locked out, mine'", &[]).await.unwrap().get(0);
    assert_eq!(n, 1, "the session reads its own write");
    topo.set_replay_paused(&topo.replicas()[0], false).unwrap();
}

/// A transaction opened on the primary before a switchover's fence, that has not written yet
/// (`BEGIN; SELECT`, no xid), could write and commit on the old primary after the fence
/// (`default_transaction_read_only` binds only transactions that start later): the writers
/// step waits for it, and the switchover fails cleanly at its deadline, changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_waits_for_a_transaction_that_has_not_written_yet() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    let direct = connect(topo.primary().port, APP).await.unwrap();
    direct.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let daemon = proxy::start(&topo, "").await.unwrap();
    let how =
        sqlswitch::switchover::How { repoint: false, ..sqlswitch::switchover::How::promoting(Duration::from_secs(2)) };
    let mut quiet = |_: &sqlswitch::switchover::Step| {};
    let err = sqlswitch::switchover::run(&daemon.control, "app", "replica1", how, &mut quiet)
        .await
        .expect_err("an open transaction on the old primary");
    assert_eq!((err.step, err.known_primary.as_deref()), ("writers", Some("primary")), "{err}");
    assert_eq!(primary_of(&daemon), "primary", "nothing changed");
    direct.batch_execute("INSERT INTO items (note) VALUES ('fence, direct'); COMMIT").await.expect("unfenced again");
    let count = "SELECT count(*) FROM items WHERE note = 'fence, direct'";
    assert_eq!(topo.psql_admin(topo.primary(), count, DATABASE).unwrap().trim(), "1", "committed on the primary");
}

/// After a failover the old primary comes back writable (restarted, never rewound: its history
/// may have diverged). It is deposed: never followed, even while the new primary is down for
/// longer than a blip; `status` names it; and it takes no write through sqlswitch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_primary_that_returns_writable_takes_no_writes() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    let daemon = proxy::start(&topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let (old, new) = (topo.primary(), &topo.replicas()[0]);
    topo.kill_node(old).unwrap();
    let mut quiet = |_: &sqlswitch::switchover::Step| {};
    sqlswitch::failover::run(&daemon.control, "app", None, false, Duration::from_secs(30), &mut quiet)
        .await
        .expect("failover");
    assert_eq!(primary_of(&daemon), "replica1");
    topo.restart_node(old).unwrap();
    eventually(10, "status names the deposed primary that takes writes", || {
        let status = daemon.control.status();
        status["clusters"][0]["primary_problem"].as_str().is_some_and(|p| p.starts_with("deposed primary primary"))
    })
    .await;
    let client = connect(port, APP).await.unwrap();
    client.batch_execute("INSERT INTO items (note) VALUES ('deposed?')").await.expect("writes go to replica1");

    // The new primary goes away for longer than a blip: the deposed one stays unfollowed.
    topo.kill_node(new).unwrap();
    eventually(10, "the cluster knows its primary is away", || {
        daemon.control.status()["clusters"][0]["maintenance"].as_str().is_some()
    })
    .await;
    assert_eq!(primary_of(&daemon), "replica1", "a deposed primary is never followed");
    let e = client.batch_execute("INSERT INTO items (note) VALUES ('deposed?')").await.expect_err("no primary");
    assert_eq!(code(&e), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{e:?}");
    topo.restart_node(new).unwrap();
    eventually(20, "replica1 is back", || daemon.control.status()["clusters"][0]["maintenance"].is_null()).await;
    let row = client
        .query_one("INSERT INTO items (note) VALUES ('deposed?') RETURNING current_setting('cluster_name')", &[])
        .await
        .expect("writes resume on replica1");
    assert_eq!(row.get::<_, String>(0), "replica1");
    let count = "SELECT count(*) FROM items WHERE note = 'deposed?'";
    assert_eq!(topo.psql_admin(old, count, DATABASE).unwrap().trim(), "0", "the deposed primary took no write");

    assert_eq!(daemon.control.status()["clusters"][0]["backends"][0]["deposed"], true, "status shows it");
    // The operator re-admits it: it may be followed again (here: still not, replica1 answers).
    let answer = daemon.control.rejoin("app", "primary").unwrap();
    assert_eq!(answer["was_deposed"], true, "{answer}");
}

/// A standby that lacks acknowledged writes (it stopped streaming: cut off, or a DBA's
/// point-in-time recovery copy) is promoted while the primary runs (split brain: writes wait), then the
/// primary dies. The standby alone takes writes, but following it would lose what the primary
/// acknowledged: sqlswitch does not follow it, says why, and `failover` (the operator accepting
/// the loss) is what moves the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_lacks_acknowledged_writes_is_not_followed_when_the_primary_dies() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    let daemon = proxy::start(&topo, "connect_timeout = \"1s\"").await.unwrap();
    let client = connect(daemon.addr("app", false).unwrap().port(), APP).await.unwrap();
    let (old, pitr) = (topo.primary(), &topo.replicas()[0]);
    // It stops streaming (a standby cut off, or restored to a point in time).
    topo.psql_admin(pitr, "ALTER SYSTEM SET primary_conninfo = ''", "postgres").unwrap();
    topo.psql_admin(pitr, "SELECT pg_reload_conf()", "postgres").unwrap();
    eventually(10, "the standby stops streaming", || {
        topo.psql_admin(pitr, "SELECT count(*) FROM pg_stat_wal_receiver", "postgres").unwrap().trim() == "0"
    })
    .await;
    client.batch_execute("INSERT INTO items (note) VALUES ('acknowledged')").await.unwrap();
    eventually(5, "the monitor sees the standby behind", || {
        daemon.control.status()["clusters"][0]["backends"][1]["lag_bytes"].as_u64().is_some_and(|b| b > 0)
    })
    .await;
    topo.psql_admin(pitr, "SELECT pg_promote(true, 60)", "postgres").unwrap();
    eventually(5, "split brain", || {
        let status = daemon.control.status();
        status["clusters"][0]["primary_problem"].as_str().is_some_and(|p| p.starts_with("split brain"))
    })
    .await;
    topo.kill_node(old).unwrap();
    eventually(10, "status says why the standby is not followed", || {
        let status = daemon.control.status();
        status["clusters"][0]["primary_problem"].as_str().is_some_and(|p| p.contains("lacks writes"))
    })
    .await;
    assert_eq!(primary_of(&daemon), "primary", "not followed");
    let e = client.batch_execute("INSERT INTO items (note) VALUES ('where?')").await.expect_err("no primary");
    assert!(e.code().is_some(), "refused with an error: {e:?}");

    let mut quiet = |_: &sqlswitch::switchover::Step| {};
    let result =
        sqlswitch::failover::run(&daemon.control, "app", Some("replica1"), false, Duration::from_secs(10), &mut quiet)
            .await
            .expect("a failover to the server that already takes writes");
    assert_eq!(primary_of(&daemon), "replica1", "the operator's failover moves it");
    assert!(result["possible_loss"].as_u64().is_some_and(|n| n > 0), "the loss is reported: {result}");
}

/// sqlswitch (or its host) crashed between a switchover's fence and its promotion: the old
/// primary stays fenced, no server takes writes, and writes are refused. `unfence` is the way
/// back; it refuses to unfence a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_left_by_a_crash_mid_switchover_is_lifted_by_unfence() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    let old = topo.primary();
    topo.psql_admin(old, "ALTER SYSTEM SET default_transaction_read_only = on", "postgres").unwrap();
    topo.psql_admin(old, "SELECT pg_reload_conf()", "postgres").unwrap();
    let daemon = proxy::start(&topo, "connect_timeout = \"1s\"").await.unwrap();
    let client = connect(daemon.addr("app", false).unwrap().port(), APP).await.unwrap();
    eventually(5, "no primary", || {
        let status = daemon.control.status();
        status["clusters"][0]["primary_problem"].as_str().is_some_and(|p| p.starts_with("no primary"))
    })
    .await;
    client.batch_execute("INSERT INTO items (note) VALUES ('fenced')").await.expect_err("no server takes writes");

    let e = daemon.control.unfence("app", "replica1").await.expect_err("a replica keeps its setting");
    assert!(e.contains("replica"), "{e}");
    daemon.control.unfence("app", "primary").await.expect("the fence is lifted");
    eventually(5, "the primary takes writes again", || {
        daemon.control.status()["clusters"][0]["primary_problem"].is_null()
    })
    .await;
    client.batch_execute("INSERT INTO items (note) VALUES ('unfenced')").await.expect("writes go on");
    topo.psql_admin(old, "ALTER SYSTEM RESET default_transaction_read_only", "postgres").unwrap();
}

/// After a switchover without re-pointing, replica2 still streams from the deposed primary, on
/// the old timeline, and that server takes a direct write (a superuser past the fence): its
/// WAL position passes the new primary's in bytes. Freshness compares within the primary's
/// timeline, so replica2 never counts as caught up, and a session reads its own write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_on_the_old_timeline_never_counts_as_fresh() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(2).unwrap();
    let daemon = proxy::start(&topo, "max_replica_lag = \"10s\"").await.unwrap();
    let how =
        sqlswitch::switchover::How { repoint: false, ..sqlswitch::switchover::How::promoting(Duration::from_secs(30)) };
    let mut quiet = |_: &sqlswitch::switchover::Step| {};
    sqlswitch::switchover::run(&daemon.control, "app", "replica1", how, &mut quiet).await.expect("switchover");
    let bulk =
        "BEGIN READ WRITE; INSERT INTO items (note) SELECT repeat('x', 1000) FROM generate_series(1, 20000); COMMIT";
    topo.psql_admin(topo.primary(), bulk, DATABASE).unwrap();
    let lsn = |node| topo.psql_admin(node, "SELECT pg_last_wal_replay_lsn() - '0/0'", "postgres").unwrap();
    let new_lsn = |node| topo.psql_admin(node, "SELECT pg_current_wal_insert_lsn() - '0/0'", "postgres").unwrap();
    eventually(10, "replica2 replays the old timeline past the new primary's position", || {
        let (old_tl, new_tl) = (lsn(&topo.replicas()[1]), new_lsn(&topo.replicas()[0]));
        old_tl.trim().parse::<f64>().unwrap_or(0.0) > new_tl.trim().parse::<f64>().unwrap_or(f64::MAX)
    })
    .await;
    let client = connect(daemon.addr("app", false).unwrap().port(), APP).await.unwrap();
    client.batch_execute("INSERT INTO items (note) VALUES ('new timeline')").await.unwrap();
    for _ in 0..20 {
        let n: i64 =
            client.query_one("SELECT count(*) FROM items WHERE note = 'new timeline'", &[]).await.unwrap().get(0);
        assert_eq!(n, 1, "a session reads its own write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A change of primary published in the fleet whose driver is gone and whose target does not
/// answer: no instance can finish or roll it back. Writes wait for it at most three lease TTLs
/// and are then refused (never held forever), and `fleet-resolve` ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_fleet_change_holds_writes_for_a_bounded_time_and_fleet_resolve_ends_it() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    let etcd = sqlswitch_tests::etcd::Etcd::start().unwrap();
    let prefix = format!("/sqlswitch-safety-{}", std::process::id());
    let text = proxy::config_text(&topo, "app", "127.0.0.1:0", "127.0.0.1:0", None, "connect_timeout = \"1s\"")
        + &format!(
            "\n[fleet]\netcd = [\"{}\"]\nprefix = \"{prefix}\"\nttl = \"2s\"\ninstance = \"solo\"\n",
            etcd.endpoint()
        );
    let config = sqlswitch_config::Config::parse(&text, std::path::Path::new("<test>"), |_| None).unwrap();
    let daemon = sqlswitch::Daemon::launch(config, false, 1).await.unwrap();
    eventually(10, "the instance joins its fleet", || {
        daemon.control.status()["clusters"][0]["fleet"]["fenced"] == false
    })
    .await;
    let client = connect(daemon.addr("app", false).unwrap().port(), APP).await.unwrap();
    client.batch_execute("INSERT INTO items (note) VALUES ('before')").await.unwrap();

    // The driver died at `promote`, and its target is gone too.
    topo.kill_node(&topo.replicas()[0]).unwrap();
    let mut etcd_client = etcd_client::Client::connect([etcd.endpoint()], None).await.unwrap();
    let key = format!("{prefix}/app/routing");
    let got = etcd_client.get(key.clone(), None).await.unwrap();
    let mut doc: serde_json::Value = serde_json::from_slice(got.kvs()[0].value()).unwrap();
    doc["generation"] = (doc["generation"].as_u64().unwrap() + 1).into();
    doc["change"] = serde_json::json!({
        "kind": "switchover", "by": "gone", "from": "primary", "target": "replica1", "step": "promote"
    });
    etcd_client.put(key, doc.to_string(), None).await.unwrap();
    eventually(5, "the instance holds for the change", || {
        !daemon.control.status()["clusters"][0]["fleet"]["change"].is_null()
    })
    .await;
    let started = Instant::now();
    let write = client.batch_execute("INSERT INTO items (note) VALUES ('held')");
    let e = tokio::time::timeout(Duration::from_secs(20), write).await.expect("not held forever").unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::CONNECTION_FAILURE), "{e:?}");
    assert!(e.as_db_error().is_some_and(|d| d.message().contains("fleet-resolve")), "{e:?}");
    let held = started.elapsed();
    assert!(held >= Duration::from_secs(5), "held for three TTLs first ({held:?})");

    let answer = daemon.control.fleet_resolve("app", "primary").await.expect("resolved");
    assert_eq!(answer["primary"], "primary", "{answer}");
    client.batch_execute("INSERT INTO items (note) VALUES ('after')").await.expect("writes go on");
    let e = daemon.control.fleet_resolve("app", "primary").await.expect_err("nothing left to resolve");
    assert!(e.contains("no change"), "{e}");
}

/// A session that begins a transaction while a switchover holds primary work waits at BEGIN,
/// also when an answer is still owed for its last statement (tokio-postgres closes a prepared
/// statement with Close and Sync and does not wait), and runs it wherever the primary is when
/// the hold ends. Let through, BEGIN started a read-only transaction on the fenced old primary
/// and the client's first INSERT failed with 25006; held, then released after the change, it
/// was taken for a transaction open on the old primary and the session was ended (both found
/// by `scripts/faults --protocol postgres --seed 4`). Here each switchover waits at its
/// `writers` step for a direct transaction on the old primary: the first fails at its deadline
/// (the held BEGIN runs on the unfenced old primary), the second goes on once that transaction
/// ends (the held BEGIN runs on the new primary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_begun_during_a_switchover_hold_waits_at_begin() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    let daemon = proxy::start(&topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    for succeeds in [false, true] {
        let direct = connect(topo.primary().port, APP).await.unwrap();
        direct.batch_execute("BEGIN; SELECT 1").await.unwrap();
        let client = connect(port, APP).await.unwrap();
        let control = std::sync::Arc::clone(&daemon.control);
        let how = sqlswitch::switchover::How {
            repoint: false,
            ..sqlswitch::switchover::How::promoting(Duration::from_secs(if succeeds { 20 } else { 4 }))
        };
        let switchover =
            tokio::spawn(
                async move { sqlswitch::switchover::run(&control, "app", "replica1", how, &mut |_| {}).await },
            );
        let fenced = "SELECT current_setting('default_transaction_read_only')";
        eventually(5, "the old primary is fenced", || {
            topo.psql_admin(topo.primary(), fenced, "postgres").unwrap().trim() == "on"
        })
        .await;
        let one: i32 = client.query_one("SELECT 1", &[]).await.expect("reads go on during the hold").get(0);
        assert_eq!(one, 1);
        let held = daemon.control.status()["clusters"][0]["held_total"].as_u64().unwrap_or(0);
        let task = tokio::spawn(async move { client.batch_execute("BEGIN").await.map(|()| client) });
        let deadline = Instant::now() + Duration::from_secs(3);
        while daemon.control.status()["clusters"][0]["held_total"].as_u64().unwrap_or(0) == held {
            assert!(!task.is_finished(), "BEGIN answered during the switchover's hold");
            assert!(Instant::now() < deadline, "BEGIN neither answered nor held");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if succeeds {
            direct.batch_execute("ROLLBACK").await.unwrap();
            switchover.await.unwrap().expect("the switchover goes on once the direct transaction ended");
        } else {
            let err = switchover.await.unwrap().expect_err("the direct transaction keeps it at writers");
            assert_eq!(err.step, "writers", "{err}");
            direct.batch_execute("ROLLBACK").await.unwrap();
        }
        let client = task.await.unwrap().expect("BEGIN runs once the hold ends");
        client.batch_execute("INSERT INTO items (note) VALUES ('begun in a hold'); COMMIT").await.expect("committed");
        let expected = if succeeds { "replica1" } else { "primary" };
        assert_eq!(primary_of(&daemon), expected);
    }
    let count = "SELECT count(*) FROM items WHERE note = 'begun in a hold'";
    assert_eq!(topo.psql_admin(&topo.replicas()[0], count, DATABASE).unwrap().trim(), "2", "both on the new primary");
}

/// A frozen primary (SIGSTOP: it accepts connections and never answers) with the default
/// `connect_timeout` (5 s) and `max_replica_lag` (1 s): each of the monitor's checks waits the
/// timeout for it, and the replicas still count as fresh between themselves, so a read-write
/// session logs in and reads on a replica for as long as the primary stays frozen (three
/// checks here), and writes are refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_frozen_primary_the_replicas_keep_serving_reads() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(2).unwrap();
    let daemon = proxy::start(&topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let pids = topo.pids(topo.primary()).unwrap();
    let signal = |sig: &str| {
        for pid in &pids {
            let _ = std::process::Command::new("kill").args([sig, pid]).status();
        }
    };
    /// Thaws the primary however the test ends.
    struct Thaw<F: Fn(&str)>(F);
    impl<F: Fn(&str)> Drop for Thaw<F> {
        fn drop(&mut self) {
            (self.0)("-CONT");
        }
    }
    signal("-STOP");
    let _thaw = Thaw(signal);
    eventually(20, "the cluster knows its primary is away", || {
        daemon.control.status()["clusters"][0]["maintenance"].as_str().is_some()
    })
    .await;
    let client = connect(port, APP).await.expect("a read-write session logs in on a replica");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(16) {
        let on: String = client
            .query_one("SELECT current_setting('cluster_name')", &[])
            .await
            .expect("reads go to a fresh replica")
            .get(0);
        assert_ne!(on, "primary");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let e = client.batch_execute("INSERT INTO items (note) VALUES ('refused')").await.expect_err("refused");
    assert_eq!(code(&e), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{e:?}");
}
