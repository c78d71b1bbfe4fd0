//! Fleet members that disagree: an instance whose config lacks the fleet's primary, and a driver
//! that wakes after its change was ended by someone else. Neither may send a write to a server
//! the fleet does not route to. Real PostgreSQL and etcd; one test at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlswitch::replication::ControlConn;
use sqlswitch_tests::client::{code, connect};
use sqlswitch_tests::etcd::Etcd;
use sqlswitch_tests::fleet::{
    config, fleet_of, instance, joined, launch, port_of, prefix, switchover, until, write_through,
};
use sqlswitch_tests::pg::{Topology, APP};
use sqlswitch_tests::proxy::{primary_of, without_backend};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

fn unfence_by_hand(topo: &Topology, node: &sqlswitch_tests::pg::Node) {
    for sql in ["ALTER SYSTEM RESET default_transaction_read_only", "SELECT pg_reload_conf()"] {
        topo.psql_admin(node, sql, "postgres").unwrap();
    }
}

/// An instance whose config does not have the server the fleet switched to refuses writes,
/// and goes on serving reads: it never sends a write to the primary it knew, even once that
/// server takes writes again (a DBA lifted its fence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_without_the_fleets_primary_refuses_writes_and_serves_reads() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(2).unwrap();
    let etcd = Etcd::start().unwrap();
    let prefix = prefix();
    let full = instance(&topo, &etcd.endpoint(), &prefix, "full").await;
    let text = config(&topo, &etcd.endpoint(), &prefix, "short", "127.0.0.1:0", "/tmp/unused.sock");
    let short = launch(&without_backend(&text, "replica1")).await;
    joined(&full, 2).await;
    joined(&short, 2).await;
    switchover(&full, "replica1").await.expect("switchover");
    until("the short instance sees a primary it does not have", Duration::from_secs(10), || {
        fleet_of(&short.control.status())["foreign_primary"] == "replica1"
    })
    .await;
    unfence_by_hand(&topo, topo.primary());
    until("the short instance's monitor sees the old primary writable", Duration::from_secs(10), || {
        short.control.status()["clusters"][0]["backends"][0]["server_says"] == "writable"
    })
    .await;
    let refused = write_through(port_of(&short)).await.expect_err("a write with no known primary");
    assert_eq!(code(&refused), Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION), "{refused:?}");
    assert!(format!("{refused:?}").contains("does not have"), "{refused:?}");
    let reader = connect(port_of(&short), APP).await.unwrap();
    let n: i64 = reader.query_one("SELECT count(*) FROM items", &[]).await.expect("reads go on").get(0);
    assert!(n >= 0);
    let written = topo.psql_admin(topo.primary(), "SELECT count(*) FROM items WHERE note = 'fleet'", "app").unwrap();
    assert_eq!(written.trim(), "0", "no write reached the old primary");
    assert_eq!(write_through(port_of(&full)).await.unwrap(), "replica1");
    drop((full, short));
    topo.stop();
}

/// A driver stopped past its lease after it recorded `promote`: meanwhile the change is ended
/// elsewhere naming the old primary (a takeover's roll-back, here the operator's
/// `fleet-resolve`, the same compare-and-swap). When it wakes and promotes its target anyway,
/// its end finds the change taken over: it fences the target again, deposes it, reports the
/// failure, and every write goes on to the fleet's primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_that_promotes_after_its_change_was_ended_fences_its_target_again() {
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
    let cluster = Arc::clone(daemons[0].control.cluster("app").unwrap());
    let link = daemons[0].control.fleet_link("app").expect("fleet mode");
    let generation = link.begin("switchover", 0, 1, Duration::from_secs(30)).await.unwrap();
    link.acknowledged(generation, Instant::now() + Duration::from_secs(10)).await.unwrap();
    link.step("promote").await.unwrap();
    daemons[1].control.fleet_resolve("app", "primary").await.expect("the change is ended elsewhere");
    topo.psql_admin(&topo.replicas()[0], "SELECT pg_promote()", "postgres").unwrap();
    let target = cluster.control_target(1).unwrap();
    let mut conn = ControlConn::connect(&target, "sqlswitch-test").await.unwrap();
    let failed = link.end_promoted(1, &mut conn).await.expect_err("the change was taken over");
    assert!(failed.contains("taken over") && failed.contains("fenced again"), "{failed}");
    let fenced = topo.psql_admin(&topo.replicas()[0], "SHOW default_transaction_read_only", "postgres").unwrap();
    assert_eq!(fenced.trim(), "on", "the target refuses writes again");
    assert_eq!(daemons[0].control.status()["clusters"][0]["backends"][1]["deposed"], true);
    for d in &daemons {
        until("the fleet serves from the old primary", Duration::from_secs(10), || primary_of(d) == "primary").await;
        assert_eq!(write_through(port_of(d)).await.unwrap(), "primary");
    }
    // The lock was released: the next change may run.
    for d in &daemons {
        until("the fleet's lock is free", Duration::from_secs(10), || fleet_of(&d.control.status())["lock"].is_null())
            .await;
    }
    drop(daemons);
    topo.stop();
}
