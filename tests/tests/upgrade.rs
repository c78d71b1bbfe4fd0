//! The major-version upgrade cutover, against real PostgreSQL: an old cluster (a primary and a
//! streaming standby) and a new one (a primary subscribed to the old by logical replication, and
//! its own standby), in two groups of one sqlswitch cluster. PostgreSQL 15 to PostgreSQL 15 here;
//! the mechanism is the same across versions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlswitch_tests::client::{connect, direct};
use sqlswitch_tests::pg::{Topology, ANON, APP, DATABASE, MONITOR};

/// An acknowledged insert: table, tag, the id its client got.
type Acked = (&'static str, String, i64);

fn two_clusters() -> (Topology, Topology) {
    sqlswitch_tests::upgrade::two_clusters().expect("two clusters, the new one subscribed")
}

async fn start(old: &Topology, new: &Topology) -> sqlswitch::Daemon {
    let text = sqlswitch_tests::upgrade::config_text(old, new, "127.0.0.1:0", "127.0.0.1:0", None);
    sqlswitch_tests::proxy::start_text(&text).await.unwrap()
}

/// Inserts a row tagged `tag` into `table` through `client`; the port of the server it landed on.
async fn write_lands_on(client: &tokio_postgres::Client, table: &str, tag: &str, what: &str) -> u16 {
    let sql = format!("INSERT INTO {table} (tag) VALUES ($1) RETURNING current_setting('port')");
    let port: String = client.query_one(&sql, &[&tag]).await.expect(what).get(0);
    port.parse().unwrap()
}

/// The port of the server that ran a read of a new read-only session.
async fn read_served_by(daemon: &sqlswitch::Daemon) -> u16 {
    let client = connect(daemon.addr("app", true).unwrap().port(), ANON).await.expect("read-only session");
    let port: String = client.query_one("SELECT current_setting('port')", &[]).await.expect("read").get(0);
    port.parse().unwrap()
}

async fn cutover(daemon: &sqlswitch::Daemon, force: bool, timeout: Duration) -> (Result<Value, String>, Vec<String>) {
    cutover_to(daemon, "new1", force, false, timeout).await
}

async fn cutover_to(
    daemon: &sqlswitch::Daemon,
    target: &str,
    force: bool,
    reverse: bool,
    timeout: Duration,
) -> (Result<Value, String>, Vec<String>) {
    let mut steps = Vec::new();
    let mut report = |s: &sqlswitch::switchover::Step| steps.push(format!("{}: {}", s.name, s.detail));
    let how =
        sqlswitch::switchover::How { promote: false, force, reverse, ..sqlswitch::switchover::How::promoting(timeout) };
    let r = sqlswitch::switchover::run(&daemon.control, "app", target, how, &mut report).await;
    (r.map_err(|e| e.to_string()), steps)
}

fn findings(check: &Value) -> Vec<(String, String)> {
    check["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["level"].as_str().unwrap().to_owned(), f["what"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_cutover_to_a_logical_subscriber_under_insert_load() {
    let (old, new) = tokio::task::spawn_blocking(two_clusters).await.unwrap();
    let daemon = start(&old, &new).await;
    let (old_ports, new_ports): (Vec<u16>, Vec<u16>) =
        (old.nodes.iter().map(|n| n.port).collect(), new.nodes.iter().map(|n| n.port).collect());
    let status = daemon.control.status();
    let backends = status["clusters"][0]["backends"].as_array().unwrap().clone();
    assert_eq!(backends[2]["role"], "inactive", "{status}");
    assert_eq!(backends[2]["group"], "pg-new", "{status}");

    // Before: reads from the old group's standby only, never from the new group.
    for _ in 0..10 {
        assert_eq!(read_served_by(&daemon).await, old_ports[1], "a read before the cutover");
    }

    // upgrade-check finds what would break: a table on the old side only, a table without a key.
    old.psql_admin(old.primary(), "CREATE TABLE only_old (id int PRIMARY KEY); CREATE TABLE no_key (v int)", DATABASE)
        .unwrap();
    new.psql_admin(new.primary(), "CREATE TABLE no_key (v int)", DATABASE).unwrap();
    let check = sqlswitch::switchover::upgrade_check(&daemon.control, "app", "new1", Duration::from_secs(30))
        .await
        .expect("upgrade-check");
    let found = findings(&check);
    println!("{check:#}");
    assert!(
        found.iter().any(|(l, w)| l == "data-loss" && w.contains("public.only_old") && w.contains("missing on new1")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|(l, w)| l == "warning" && w.contains("public.no_key") && w.contains("no primary key")),
        "{found:?}"
    );
    assert!(found.iter().any(|(_, w)| w.contains("sequence public.up_serial_id_seq")), "{found:?}");
    assert!(found.iter().any(|(_, w)| w.contains("versions:")), "{found:?}");

    // The cutover refuses to start while it remains, and changes nothing.
    let (refused, _) = cutover(&daemon, false, Duration::from_secs(10)).await;
    let refused = refused.expect_err("a blocking finding refuses the cutover");
    assert!(refused.contains("only_old") && refused.contains("nothing was changed"), "{refused}");
    // `force` overrides compatibility findings, never one that loses data.
    let (refused, _) = cutover(&daemon, true, Duration::from_secs(10)).await;
    let refused = refused.expect_err("force does not override a data-loss finding");
    assert!(refused.contains("would lose data") && refused.contains("only_old"), "{refused}");
    assert_eq!(daemon.control.status()["clusters"][0]["primary"], "old1", "nothing changed");
    let app = connect(daemon.addr("app", false).unwrap().port(), APP).await.unwrap();
    let port = write_lands_on(&app, "up_serial", "after-refusal", "writes go on after a refused cutover").await;
    assert_eq!(port, old_ports[0]);
    old.psql_admin(old.primary(), "DROP TABLE only_old", DATABASE).unwrap();

    // The way back asked for, which the monitor user cannot create (no superuser on the old
    // side): refused before anything is held, as upgrade-check said.
    assert!(found.iter().any(|(_, w)| w.contains("cannot create the way back")), "{found:?}");
    let (refused, _) = cutover_to(&daemon, "new1", false, true, Duration::from_secs(10)).await;
    let refused = refused.expect_err("reverse without the privileges");
    assert!(refused.contains("reverse") && refused.contains("nothing was changed"), "{refused}");

    // A cutover whose catch-up times out changes nothing: the apply worker waits on a lock.
    let blocker = direct(new.primary().port, DATABASE).await;
    blocker.batch_execute("BEGIN; LOCK TABLE up_serial IN ACCESS EXCLUSIVE MODE").await.unwrap();
    app.execute("INSERT INTO up_serial (tag) VALUES ('stuck')", &[]).await.unwrap();
    let (timed_out, _) = cutover(&daemon, false, Duration::from_secs(3)).await;
    let timed_out = timed_out.expect_err("catch-up cannot finish");
    assert!(timed_out.contains("catch_up") && timed_out.contains("bytes"), "{timed_out}");
    assert!(timed_out.contains("old1 is still the primary"), "{timed_out}");
    let port = write_lands_on(&app, "up_serial", "after-timeout", "writes go on after a failed cutover").await;
    assert_eq!(port, old_ports[0]);
    let enabled = new.psql_admin(new.primary(), "SELECT subenabled FROM pg_subscription", DATABASE).unwrap();
    assert_eq!(enabled.trim(), "t", "the subscription still runs");
    blocker.batch_execute("COMMIT").await.unwrap();
    drop(app);

    // The cutover under load: 8 sessions insert into serial and identity tables throughout.
    let port = daemon.addr("app", false).unwrap().port();
    let acked: Arc<StdMutex<Vec<Acked>>> = Arc::default();
    let errors: Arc<StdMutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for c in 0..8 {
        let (acked, errors, stop) = (Arc::clone(&acked), Arc::clone(&errors), Arc::clone(&stop));
        load.push(tokio::spawn(async move {
            let client = connect(port, APP).await.expect("load session");
            let serial = client.prepare("INSERT INTO up_serial (tag) VALUES ($1) RETURNING id::bigint").await.unwrap();
            let ident = client.prepare("INSERT INTO up_ident (tag) VALUES ($1) RETURNING id").await.unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let tag = format!("load-{c}-{n}");
                let (table, statement) =
                    if n.is_multiple_of(2) { ("up_serial", &serial) } else { ("up_ident", &ident) };
                match client.query_one(statement, &[&tag]).await {
                    Ok(row) => acked.lock().unwrap().push((table, tag, row.get(0))),
                    Err(e) => errors.lock().unwrap().push(format!("{tag}: {e}")),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (result, steps) = cutover(&daemon, false, Duration::from_secs(30)).await;
    let result = result.unwrap_or_else(|e| panic!("cutover failed: {e}\nsteps: {steps:#?}"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    println!("{result:#}");
    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "client errors during the cutover: {errors:?}");
    let names: Vec<&str> = result["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["hold", "drain", "fence", "writers", "catch_up", "sequences", "subscription", "promote", "swap", "release"],
        "{result}"
    );
    assert!(result["pause_ms"].as_u64().unwrap() < 5000, "{result}");

    // Every acknowledged row is on the new primary exactly once, with the id its client got.
    let on_new = direct(new.primary().port, DATABASE).await;
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "the load ran: {} rows", acked.len());
    for table in ["up_serial", "up_ident"] {
        let rows = on_new.query(&format!("SELECT tag, id::bigint FROM {table}"), &[]).await.unwrap();
        let mut ids: HashMap<String, Vec<i64>> = HashMap::new();
        for r in &rows {
            ids.entry(r.get(0)).or_default().push(r.get(1));
        }
        for (t, tag, id) in acked.iter().filter(|(t, _, _)| *t == table) {
            assert_eq!(ids.get(tag), Some(&vec![*id]), "{t} row {tag}: acknowledged with id {id}");
        }
        assert!(ids.values().all(|v| v.len() == 1), "no tag twice in {table}");
    }
    // Rows acknowledged after the swap exist only on the new primary (the old one is fenced).
    let on_old = old
        .psql_admin(
            old.primary(),
            "SELECT (SELECT count(*) FROM up_serial) + (SELECT count(*) FROM up_ident)",
            DATABASE,
        )
        .unwrap();
    let on_old: usize = on_old.trim().parse().unwrap();
    let total: i64 = on_new
        .query_one("SELECT (SELECT count(*) FROM up_serial) + (SELECT count(*) FROM up_ident)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        usize::try_from(total).unwrap() > on_old,
        "the load went on after the swap: {total} rows on new, {on_old} on old"
    );

    // A new session writes on the new primary at once; the subscription is disabled.
    let app = connect(port, APP).await.unwrap();
    let port_now = write_lands_on(&app, "up_serial", "right-after", "an insert right after the cutover").await;
    assert_eq!(port_now, new_ports[0]);
    let enabled = new.psql_admin(new.primary(), "SELECT subenabled FROM pg_subscription", DATABASE).unwrap();
    assert_eq!(enabled.trim(), "f", "the subscription is disabled");
    let status = daemon.control.status();
    assert_eq!(status["clusters"][0]["primary"], "new1", "{status}");

    // Reads: the new group's standby once it has replayed the new primary, never the old group.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut on_new_standby = 0;
    while on_new_standby < 5 {
        let served = read_served_by(&daemon).await;
        assert!(!old_ports.contains(&served), "a read after the cutover went to the old cluster ({served})");
        if served == new_ports[1] {
            on_new_standby += 1;
        }
        assert!(Instant::now() < deadline, "no read reached the new group's standby within 10 s");
    }
    daemon.shutdown(Duration::from_secs(1)).await;

    // sqlswitch restarts with the same config (the old group listed first): the servers say
    // the old cluster takes no writes and the new primary does, so the new group serves.
    let daemon = start(&old, &new).await;
    let status = daemon.control.status();
    assert_eq!(status["clusters"][0]["primary"], "new1", "{status}");
    let app = connect(daemon.addr("app", false).unwrap().port(), APP).await.unwrap();
    let port_now = write_lands_on(&app, "up_ident", "after-restart", "a write after the restart").await;
    assert_eq!(port_now, new_ports[0]);
    for _ in 0..5 {
        let served = read_served_by(&daemon).await;
        assert!(!old_ports.contains(&served), "a read after the restart went to the old cluster ({served})");
    }
    drop(app);
    daemon.shutdown(Duration::from_secs(1)).await;
}

/// The way back: a cutover with `reverse` makes the old primary subscribe to the new one before
/// clients are released; writes made on the new primary reach the old one, and switching back is
/// the same command in the other direction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cutover_with_reverse_can_be_switched_back() {
    let (old, new) = tokio::task::spawn_blocking(two_clusters).await.unwrap();
    // Creating and disabling subscriptions on both sides: a superuser on PostgreSQL 15.
    old.psql_admin(old.primary(), &format!("ALTER ROLE {} SUPERUSER", MONITOR.0), DATABASE).unwrap();
    // The subscriber configured in the serving group, beside the old primary's standby (which
    // would follow a fenced primary for good): refused, nothing changed.
    let text = sqlswitch_tests::upgrade::config_text(&old, &new, "127.0.0.1:0", "127.0.0.1:0", None)
        .replace("role = \"primary\"\ngroup = \"pg-new\"", "role = \"replica\"\ngroup = \"main\"")
        .replace("group = \"pg-new\"", "group = \"main\"");
    let one_group = sqlswitch_tests::proxy::start_text(&text).await.unwrap();
    let (refused, _) = cutover_to(&one_group, "new1", false, false, Duration::from_secs(10)).await;
    let refused = refused.expect_err("a subscriber beside the old primary's standbys");
    assert!(refused.contains("group of its own") && refused.contains("old2"), "{refused}");
    assert_eq!(one_group.control.status()["clusters"][0]["primary"], "old1");
    one_group.shutdown(Duration::from_secs(1)).await;

    let daemon = start(&old, &new).await;
    let app = connect(daemon.addr("app", false).unwrap().port(), APP).await.unwrap();
    app.execute("INSERT INTO up_serial (tag) VALUES ('on-old')", &[]).await.unwrap();

    let (result, steps) = cutover_to(&daemon, "new1", false, true, Duration::from_secs(30)).await;
    let result = result.unwrap_or_else(|e| panic!("cutover failed: {e}\nsteps: {steps:#?}"));
    println!("{result:#}");
    assert_eq!(result["reverse"]["ok"], true, "{result}");
    let on_new: i64 =
        app.query_one("INSERT INTO up_serial (tag) VALUES ('on-new') RETURNING id::bigint", &[]).await.unwrap().get(0);

    // The row written on the new primary reaches the old one.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let id = old.psql_admin(old.primary(), "SELECT id FROM up_serial WHERE tag = 'on-new'", DATABASE).unwrap();
        if id.trim() == on_new.to_string() {
            break;
        }
        assert!(Instant::now() < deadline, "the row written on the new primary did not reach the old one");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Back, with the same command: the old primary takes writes again, and nothing collides.
    let (back, steps) = cutover_to(&daemon, "old1", false, false, Duration::from_secs(30)).await;
    let back = back.unwrap_or_else(|e| panic!("switching back failed: {e}\nsteps: {steps:#?}"));
    println!("{back:#}");
    let row = app
        .query_one(
            "INSERT INTO up_serial (tag) VALUES ('back-on-old') RETURNING id::bigint, current_setting('port')",
            &[],
        )
        .await
        .expect("an insert after switching back");
    let (id, port): (i64, String) = (row.get(0), row.get(1));
    assert_eq!(port.parse::<u16>().unwrap(), old.primary().port);
    assert!(id > on_new, "the old primary's sequence was moved past the new primary's ({id} after {on_new})");
    let tags = old
        .psql_admin(
            old.primary(),
            "SELECT string_agg(tag, ',' ORDER BY id) FROM up_serial WHERE tag IN ('on-old', 'on-new', 'back-on-old')",
            DATABASE,
        )
        .unwrap();
    assert_eq!(tags.trim(), "on-old,on-new,back-on-old");
    drop(app);
    daemon.shutdown(Duration::from_secs(1)).await;
}
