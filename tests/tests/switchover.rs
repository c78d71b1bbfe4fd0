//! Admin commands and the zero-downtime switchover, against real PostgreSQL. A test that
//! changes the primary starts its own topology (a primary and one streaming replica); the
//! others share one. They run one at a time: pgbench and switchovers want the whole machine.

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlswitch::switchover::ChangeError;
use sqlswitch_tests::client::{code, connect, server_name};
use sqlswitch_tests::pg::{Topology, APP};
use sqlswitch_tests::proxy;
use sqlswitch_tests::proxy::{eventually, primary_of};
use tokio::sync::Mutex;
use tokio_postgres::error::SqlState;

static SERIAL: Mutex<()> = Mutex::const_new(());

async fn switchover(
    daemon: &sqlswitch::Daemon,
    target: &str,
    promote: bool,
    timeout: Duration,
) -> Result<Value, ChangeError> {
    let mut steps = Vec::new();
    let mut report = |s: &sqlswitch::switchover::Step| steps.push(s.name);
    let how = sqlswitch::switchover::How { promote, ..sqlswitch::switchover::How::promoting(timeout) };
    let r = sqlswitch::switchover::run(&daemon.control, "app", target, how, &mut report).await;
    if r.is_ok() {
        steps.dedup();
        let expected = ["hold", "drain", "fence", "writers", "catch_up", "promote", "swap", "release"];
        assert_eq!(steps.get(..expected.len()), Some(&expected[..]), "every step reported, in order");
    }
    r
}

/// The server (its `cluster_name`) where a write of a new session lands.
async fn new_session_writes_on(daemon: &sqlswitch::Daemon) -> String {
    let client = connect(daemon.addr("app", false).unwrap().port(), APP).await.unwrap();
    let row = client
        .query_one("INSERT INTO items (note) VALUES ('new') RETURNING current_setting('cluster_name')", &[])
        .await
        .expect("a write");
    row.get(0)
}

/// pgbench's success and its whole output.
fn pgbench(topo: &Topology, port: u16, args: &[&str]) -> (bool, String) {
    match sqlswitch_tests::pg::pgbench(topo, port, args) {
        Ok(out) => (true, out),
        Err(e) => (false, format!("{e:#}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_under_pgbench_load_costs_no_client_errors() {
    let _serial = SERIAL.lock().await;
    let topo = std::sync::Arc::new(Topology::start(1).unwrap());
    let daemon = proxy::start(&topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let (ok, out) = pgbench(&topo, topo.primary().port, &["-i", "-q", "-s", "1"]);
    assert!(ok, "{out}");
    topo.wait_replicas_caught_up().unwrap();

    let load_topo = std::sync::Arc::clone(&topo);
    let load =
        tokio::task::spawn_blocking(move || pgbench(&load_topo, port, &["-c", "8", "-j", "2", "-T", "6", "-P", "1"]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let result = switchover(&daemon, "replica1", true, Duration::from_secs(30)).await.expect("switchover");
    let (ok, report) = load.await.unwrap();
    println!("{result}\n{report}");
    assert!(ok, "pgbench failed during the switchover:\n{report}");
    assert!(!report.contains("aborted"), "{report}");
    assert!(report.contains("number of failed transactions: 0"), "{report}");
    let pause = result["pause_ms"].as_u64().unwrap();
    assert!(pause < 1000, "clients paused {pause} ms");
    assert_eq!(primary_of(&daemon), "replica1");

    // Writes land on the new primary, through a session that lived across the switchover too.
    let client = connect(port, APP).await.unwrap();
    let row = client
        .query_one("INSERT INTO items (note) VALUES ('after') RETURNING current_setting('cluster_name')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "replica1");

    // Restarted with the same config (whose primary is the old, fenced one), sqlswitch follows
    // the servers: writes go to the new primary.
    drop(client);
    drop(daemon);
    let again = proxy::start(&topo, "").await.unwrap();
    assert_eq!(primary_of(&again), "replica1", "the servers' primary, not the config's");
    assert_eq!(new_session_writes_on(&again).await, "replica1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_with_state_carry_on_after_a_switchover() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    let daemon = proxy::start(&topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let client = connect(port, APP).await.unwrap();
    client.batch_execute("SET application_name = 'carry-on'").await.unwrap();
    let insert =
        client.prepare("INSERT INTO items (note) VALUES ($1) RETURNING current_setting('cluster_name')").await.unwrap();
    assert_eq!(client.query_one(&insert, &[&"before"]).await.unwrap().get::<_, String>(0), "primary");
    let temp = connect(port, APP).await.unwrap();
    temp.batch_execute("CREATE TEMP TABLE scratch (a int)").await.unwrap();
    let locker = connect(port, APP).await.unwrap();
    locker.query_one("SELECT pg_advisory_lock(42)", &[]).await.unwrap();
    let listener = connect(port, APP).await.unwrap();
    listener.batch_execute("LISTEN news").await.unwrap();
    let in_tx = connect(port, APP).await.unwrap();
    for sql in ["BEGIN", "SET search_path = public", "COMMIT"] {
        in_tx.batch_execute(sql).await.unwrap();
    }

    switchover(&daemon, "replica1", true, Duration::from_secs(30)).await.expect("switchover");

    let row = client.query_one(&insert, &[&"after"]).await.expect("the prepared statement works on the new primary");
    assert_eq!(row.get::<_, String>(0), "replica1");
    let app: String = client.query_one("SHOW application_name", &[]).await.unwrap().get(0);
    assert_eq!(app, "carry-on", "session state was replayed on the new primary");
    // A session that only listens hears nothing more from the old primary: it is told at once.
    let since = Instant::now();
    while !listener.is_closed() {
        assert!(since.elapsed() < Duration::from_secs(5), "the listening session was not ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Sessions whose state lives only on the old primary are ended as a restart would end
    // them, with the reason: not moved without their table or lock.
    for (session, what) in [(&temp, "temporary table"), (&locker, "advisory lock"), (&in_tx, "inside a transaction")] {
        let e = session.query_one("SELECT 1", &[]).await.expect_err("a session that cannot move is ended");
        assert_eq!(code(&e), Some(&SqlState::ADMIN_SHUTDOWN), "{e:?}");
        let text = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
        assert!(text.contains(what), "{text}");
        assert!(session.is_closed() || session.query_one("SELECT 1", &[]).await.is_err(), "its connection is closed");
    }
    // The lock died with its session on the old primary; nothing holds it on the new one.
    let other = connect(port, APP).await.unwrap();
    let got: bool = other.query_one("SELECT pg_try_advisory_lock(42)", &[]).await.unwrap().get(0);
    assert!(got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_whose_drain_times_out_changes_nothing() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    let daemon = proxy::start(&topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let client = connect(port, APP).await.unwrap();
    client.batch_execute("BEGIN; INSERT INTO items (note) VALUES ('open transaction')").await.unwrap();
    let err = switchover(&daemon, "replica1", true, Duration::from_millis(500)).await.expect_err("drain must time out");
    assert_eq!((err.step, err.known_primary.as_deref()), ("drain", Some("primary")), "{err}");
    assert_eq!(primary_of(&daemon), "primary");
    client.batch_execute("COMMIT").await.expect("the open transaction finishes on the old primary");
    let other = connect(port, APP).await.unwrap();
    let row = other
        .query_one("INSERT INTO items (note) VALUES ('still') RETURNING current_setting('cluster_name')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "primary", "the old primary is not fenced and still takes writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_to_a_lagging_target_times_out_cleanly_then_succeeds() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    let daemon = proxy::start(&topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let target = &topo.replicas()[0];
    topo.set_replay_paused(target, true).unwrap();
    let client = connect(port, APP).await.unwrap();
    client.batch_execute("INSERT INTO items (note) VALUES ('not replayed yet')").await.unwrap();
    let err = switchover(&daemon, "replica1", true, Duration::from_secs(1)).await.expect_err("catch-up must time out");
    assert_eq!((err.step, err.known_primary.as_deref()), ("catch_up", Some("primary")), "{err}");
    assert_eq!(primary_of(&daemon), "primary");
    let row = client
        .query_one("INSERT INTO items (note) VALUES ('x') RETURNING current_setting('cluster_name')", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "primary", "the fence was undone");

    topo.set_replay_paused(target, false).unwrap();
    switchover(&daemon, "replica1", true, Duration::from_secs(30))
        .await
        .expect("succeeds once the target can catch up");
    let n: i64 =
        client.query_one("SELECT count(*) FROM items WHERE note = 'not replayed yet'", &[]).await.unwrap().get(0);
    assert_eq!(n, 1, "nothing written before the switchover is lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_mode_refuses_writes_and_serves_reads() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let client = connect(daemon.addr("app", false).unwrap().port(), APP).await.unwrap();
    daemon.control.mode("app", "read-only").await.unwrap();
    let err = client.batch_execute("INSERT INTO items (note) VALUES ('maintenance')").await.unwrap_err();
    assert_eq!(code(&err), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{err:?}");
    let err = client.query_one("SELECT nextval('items_id_seq')", &[]).await.unwrap_err();
    assert_eq!(code(&err), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{err:?}");
    let n: i64 = client.query_one("SELECT count(*) FROM items", &[]).await.expect("reads go on").get(0);
    assert!(n >= 0);
    daemon.control.mode("app", "read-write").await.unwrap();
    client.batch_execute("INSERT INTO items (note) VALUES ('back')").await.expect("writes again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_reads_off_a_replica_and_enable_brings_it_back() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let client = connect(port, APP).await.unwrap();
    daemon.control.set_enabled("app", "replica1", false).await.unwrap();
    assert!(daemon.control.set_enabled("app", "primary", false).await.is_err(), "the primary cannot be drained");
    for _ in 0..20 {
        assert_eq!(server_name(&client).await, "replica2", "a drained replica gets no new reads");
    }
    daemon.control.set_enabled("app", "replica1", true).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = connect(port, APP).await.unwrap();
        if server_name(&c).await == "replica1" {
            break;
        }
        assert!(Instant::now() < deadline, "replica1 never got reads again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_work_and_always_ends() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let client = std::sync::Arc::new(connect(daemon.addr("app", false).unwrap().port(), APP).await.unwrap());

    // A pause nobody resumes ends by its timeout.
    daemon.control.pause("app", Duration::from_millis(300)).unwrap();
    let started = Instant::now();
    client.batch_execute("SELECT 1").await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250), "held only {waited:?}");
    assert!(waited < Duration::from_secs(3), "held {waited:?}");

    // Resume releases at once, and a stale timer does not end a later pause.
    daemon.control.pause("app", Duration::from_secs(60)).unwrap();
    let c = std::sync::Arc::clone(&client);
    let held = tokio::spawn(async move { c.batch_execute("SELECT 2").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.is_finished(), "work is held while paused");
    daemon.control.resume("app").unwrap();
    tokio::time::timeout(Duration::from_secs(2), held).await.expect("resume releases held work").unwrap().unwrap();
    let status = daemon.control.status();
    assert_eq!(status["clusters"][0]["paused"], false);
    assert!(status["clusters"][0]["held_total"].as_u64().unwrap() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_socket_answers_json_and_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let _serial = SERIAL.lock().await;
    let topo = Topology::shared();
    let socket = topo.dir.join("admin-test.sock");
    let text = proxy::config_text(topo, "app", "127.0.0.1:0", "127.0.0.1:0", None, "")
        .replace("/tmp/sqlswitch-test.sock", &socket.display().to_string());
    let config = sqlswitch_config::Config::parse(&text, std::path::Path::new("<test>"), |_| None).unwrap();
    let daemon = sqlswitch::Daemon::start(config.clone()).await.unwrap();
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(sqlswitch::Daemon::start(config).await.is_err(), "a second daemon refuses a socket that is served");

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    for (command, ok) in [
        ("status", true),
        ("mode app read-only", true),
        ("mode app read-write", true),
        ("frobnicate", false),
        ("drain nope x", false),
        // A flag the command does not take is refused, not ignored (and nothing is paused).
        ("pause app force", false),
        ("resume app timeout=1s", false),
    ] {
        write.write_all(format!("{command}\n").as_bytes()).await.unwrap();
        let answer: Value = serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(answer["ok"], ok, "{command}: {answer}");
        if !ok {
            assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()), "{answer}");
        }
    }
    assert!(sqlswitch::ctl::ctl(&socket, "status", true).await.unwrap());
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_weights_and_users_and_refuses_structural_changes() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::shared();
    topo.psql_admin(topo.primary(), "DROP ROLE IF EXISTS late; CREATE ROLE late LOGIN PASSWORD 'late'", "postgres")
        .unwrap();
    topo.psql_admin(topo.primary(), "GRANT CONNECT ON DATABASE app TO late", "postgres").unwrap();
    topo.wait_replicas_caught_up().unwrap();
    let file = topo.dir.join("reload.toml");
    // The admin socket of its own: `reload` is tested as an operator sends it.
    let socket = topo.dir.join("reload-admin.sock");
    let text = proxy::config_text(topo, "app", "127.0.0.1:0", "127.0.0.1:0", None, "")
        .replace("/tmp/sqlswitch-test.sock", &socket.display().to_string());
    std::fs::write(&file, &text).unwrap();
    let config = sqlswitch_config::Config::load(&file).unwrap();
    let daemon = sqlswitch::Daemon::start_with(config, true).await.unwrap();
    daemon.control.set_config_path(file.clone());

    // Nothing changed: the socket says so.
    let answer = admin(&socket, "reload").await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["reloaded"][0]["changes"], serde_json::json!([]), "{answer}");
    let port = daemon.addr("app", false).unwrap().port();

    // Weight 0 takes replica1 out of reads; a new user can log in. Sessions stay up.
    let kept = connect(port, APP).await.unwrap();
    let weighted = text.replacen("name = \"replica1\"\naddress", "name = \"replica1\"\nweight = 0\naddress", 1)
        + "\n[[cluster.user]]\nname = \"late\"\npassword = \"late\"\n";
    // `[[cluster.user]]` after the backends still belongs to the cluster table.
    std::fs::write(&file, &weighted).unwrap();
    let answer = admin(&socket, "reload").await;
    assert_eq!(answer["ok"], true, "{answer}");
    let changes = answer["reloaded"][0]["changes"].to_string();
    assert!(changes.contains("backend replica1 weight 1 -> 0") && changes.contains("user late added"), "{answer}");
    // `sqlswitch ctl reload` is the same request; it exits 0 on ok.
    assert!(sqlswitch::ctl::ctl(&socket, "reload", true).await.unwrap());
    for _ in 0..20 {
        let c = connect(port, APP).await.unwrap();
        assert_eq!(server_name(&c).await, "replica2", "a replica with weight 0 gets no reads");
    }
    let late = connect(port, ("late", "late")).await.expect("a user added by reload logs in");
    let one: i32 = late.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let one: i32 = kept.query_one("SELECT 1", &[]).await.expect("sessions survive a reload").get(0);
    assert_eq!(one, 1);

    // A listener change cannot apply live: refused, and the running config stays.
    std::fs::write(&file, weighted.replacen("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"", 1)).unwrap();
    let answer = admin(&socket, "reload").await;
    assert_eq!(answer["ok"], false, "a listener change needs a restart");
    let err = answer["error"].as_str().unwrap_or_default();
    assert!(err.contains("restart") && err.contains("running config stays"), "{err}");
    assert!(!sqlswitch::ctl::ctl(&socket, "reload", true).await.unwrap(), "ctl reports the refusal");
    assert_eq!(daemon.control.status()["clusters"][0]["backends"][1]["weight"], 0);
    // A user's pool mode is fixed for the daemon's life, as the cluster's is.
    let moded = weighted.replacen("name = \"late\"\n", "name = \"late\"\npool_mode = \"transaction\"\n", 1);
    std::fs::write(&file, moded).unwrap();
    let answer = admin(&socket, "reload").await;
    let err = answer["error"].as_str().unwrap_or_default();
    assert!(err.contains("user \"late\" would change pool_mode"), "{answer}");
    // An invalid file is refused the same way.
    std::fs::write(&file, "[[cluster]]\nname = 1\n").unwrap();
    assert_eq!(admin(&socket, "reload").await["ok"], false);
    assert_eq!(admin(&socket, "reload now").await["ok"], false, "reload takes no argument");
    drop(daemon);
}

/// Sends one admin command over the socket, as `socat` or `sqlswitch ctl` would, and returns
/// the final answer line.
async fn admin(socket: &std::path::Path, command: &str) -> Value {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let stream = tokio::net::UnixStream::connect(socket).await.expect("the admin socket");
    let (read, mut write) = stream.into_split();
    write.write_all(format!("{command}\n").as_bytes()).await.unwrap();
    let mut lines = tokio::io::BufReader::new(read).lines();
    let mut last = Value::Null;
    while let Some(line) = lines.next_line().await.unwrap() {
        last = serde_json::from_str(&line).unwrap();
        if last.get("ok").is_some() {
            break;
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_replicas_without_dropping_sessions() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::shared();
    let file = topo.dir.join("reload-backends.toml");
    let full = proxy::config_text(topo, "app", "127.0.0.1:0", "127.0.0.1:0", None, "");
    // Start without replica1.
    let block = |name: &str| {
        let node = topo.nodes.iter().find(|n| n.name == name).unwrap();
        format!("\n[[cluster.backend]]\nname = \"{name}\"\naddress = \"127.0.0.1:{}\"\nrole = \"replica\"\n", node.port)
    };
    let without_r1 = full.replace(&block("replica1"), "");
    std::fs::write(&file, &without_r1).unwrap();
    let daemon = sqlswitch::Daemon::start_with(sqlswitch_config::Config::load(&file).unwrap(), false).await.unwrap();
    daemon.control.set_config_path(file.clone());
    let port = daemon.addr("app", false).unwrap().port();
    let kept = connect(port, APP).await.unwrap();
    for _ in 0..10 {
        assert_eq!(server_name(&connect(port, APP).await.unwrap()).await, "replica2");
    }

    // Add replica1 and remove replica2.
    std::fs::write(&file, full.replace(&block("replica2"), "")).unwrap();
    daemon.control.reload().expect("reload adding and removing replicas");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let name = server_name(&connect(port, APP).await.unwrap()).await;
        assert_ne!(name, "replica2", "a removed replica gets no new reads");
        if name == "replica1" {
            break;
        }
        assert!(Instant::now() < deadline, "the added replica never got reads");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = daemon.control.status();
    let states: Vec<(String, String)> = status["clusters"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["name"].as_str().unwrap().to_owned(), b["state"].as_str().unwrap().to_owned()))
        .collect();
    assert!(states.contains(&("replica2".into(), "removed".into())), "{states:?}");
    assert!(states.contains(&("replica1".into(), "up".into())), "{states:?}");
    let one: i32 = kept.query_one("SELECT 1", &[]).await.expect("sessions survive").get(0);
    assert_eq!(one, 1);
    // The primary cannot be removed by a reload.
    let block_primary = format!(
        "\n[[cluster.backend]]\nname = \"primary\"\naddress = \"127.0.0.1:{}\"\nrole = \"primary\"\n",
        topo.primary().port
    );
    std::fs::write(&file, full.replace(&block_primary, "")).unwrap();
    assert!(daemon.control.reload().is_err());
}

/// A statement that cannot reach the primary leaves no primary work counted: a later drain
/// (pause, switchover) does not wait for a session that has nothing in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_that_could_not_reach_the_primary_is_not_waited_for() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    let daemon = proxy::start(&topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let client = connect(port, APP).await.unwrap();
    client.batch_execute("INSERT INTO items (note) VALUES ('before')").await.unwrap();
    // The session's primary connection goes away while idle, and a new one is refused.
    topo.psql_admin(topo.primary(), "ALTER ROLE app NOLOGIN", "postgres").unwrap();
    topo.psql_admin(
        topo.primary(),
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'",
        "postgres",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = client.batch_execute("INSERT INTO items (note) VALUES ('refused')").await.unwrap_err();
    assert_eq!(code(&err), Some(&SqlState::CONNECTION_FAILURE), "{err:?}");
    topo.psql_admin(topo.primary(), "ALTER ROLE app LOGIN", "postgres").unwrap();

    let paused = daemon.control.pause("app", Duration::from_secs(5)).unwrap();
    assert_eq!(paused["in_flight"], 0, "nothing is in flight: {paused}");
    daemon.control.resume("app").unwrap();
    let started = Instant::now();
    switchover(&daemon, "replica1", true, Duration::from_secs(5)).await.expect("the drain finds nothing to wait for");
    assert!(started.elapsed() < Duration::from_secs(3), "drained at once ({:?})", started.elapsed());
    let row = client
        .query_one("INSERT INTO items (note) VALUES ('after') RETURNING current_setting('cluster_name')", &[])
        .await
        .expect("the session goes on");
    assert_eq!(row.get::<_, String>(0), "replica1");
}

/// Two servers that both take writes (a replica promoted by hand, the old primary not fenced):
/// sqlswitch does not guess. The routing table stays, `status` says "split brain", writes wait
/// (up to connect_timeout) and are then refused with 25006, reads go on; once one of the two is
/// fenced, writes go to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writable_servers_hold_then_refuse_writes_until_one_is_fenced() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(2).unwrap();
    topo.psql_admin(&topo.replicas()[0], "SELECT pg_promote(true, 60)", "postgres").unwrap();
    let daemon = proxy::start(&topo, "connect_timeout = \"1s\"").await.unwrap();
    assert_eq!(primary_of(&daemon), "primary", "split brain: no guess");
    let status = daemon.control.status();
    let problem = status["clusters"][0]["primary_problem"].as_str().unwrap_or("").to_owned();
    assert!(problem.starts_with("split brain") && problem.contains("replica1"), "{status}");
    let client = connect(daemon.addr("app", false).unwrap().port(), APP).await.unwrap();
    let started = Instant::now();
    let e = client.batch_execute("INSERT INTO items (note) VALUES ('where?')").await.expect_err("held, then refused");
    assert_eq!(code(&e), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{e:?}");
    assert!(e.as_db_error().unwrap().message().contains("split brain"), "{e:?}");
    assert!(started.elapsed() >= Duration::from_millis(900), "held for connect_timeout first");
    println!("{}", daemon.control.status());
    // Reads go on, from the replica that still replicates.
    assert_eq!(server_name(&client).await, "replica2");

    // The operator fences the old primary: exactly one takes writes, and sqlswitch follows it.
    topo.psql_admin(topo.primary(), "ALTER SYSTEM SET default_transaction_read_only = on", "postgres").unwrap();
    topo.psql_admin(topo.primary(), "SELECT pg_reload_conf()", "postgres").unwrap();
    eventually(5, "sqlswitch follows replica1", || primary_of(&daemon) == "replica1").await;
    let row = client
        .query_one("INSERT INTO items (note) VALUES ('here') RETURNING current_setting('cluster_name')", &[])
        .await
        .expect("writes go on");
    assert_eq!(row.get::<_, String>(0), "replica1");
}

use sqlswitch_tests::proxy::PG_REPLICATION as REPLICATION;

/// After a switchover the other standby streams from the new primary and serves reads again;
/// the old primary stays fenced, and the answer says how to rejoin it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switchover_repoints_the_other_standby() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(2).unwrap();
    // The advised config: no replication password (the standby finds it in its .pgpass; the
    // harness trusts replication), so none is written into primary_conninfo.
    let daemon = proxy::start(&topo, "replication = { user = \"postgres\" }").await.unwrap();
    let result = switchover(&daemon, "replica1", true, Duration::from_secs(30)).await.expect("switchover");
    println!("{result}");
    let replicas = result["replicas"].as_array().unwrap();
    let by_name = |n: &str| replicas.iter().find(|r| r["backend"] == n).cloned().unwrap_or_default();
    assert_eq!(by_name("replica2")["ok"], true, "{replicas:?}");
    assert_eq!(by_name("primary")["ok"], false, "{replicas:?}");
    assert!(by_name("primary")["detail"].as_str().unwrap().contains("pg_rewind"), "{replicas:?}");
    let new_port = topo.replicas()[0].port;
    let sender = topo
        .psql_admin(&topo.replicas()[1], "SELECT status || ' ' || sender_port FROM pg_stat_wal_receiver", "postgres")
        .unwrap();
    assert_eq!(sender.trim(), format!("streaming {new_port}"));
    let conninfo = topo.psql_admin(&topo.replicas()[1], "SHOW primary_conninfo", "postgres").unwrap();
    assert!(conninfo.contains(&format!("port={new_port}")) && !conninfo.contains("password"), "{conninfo}");

    // A write on the new primary reaches replica2, and sqlswitch reads from it again.
    assert_eq!(new_session_writes_on(&daemon).await, "replica1");
    eventually(10, "replica2 caught up and up", || {
        let status = daemon.control.status();
        let r2 = &status["clusters"][0]["backends"][2];
        r2["state"] == "up" && r2["lag_ms"].as_u64().is_some_and(|l| l < 1000)
    })
    .await;
    let reader = connect(daemon.addr("app", true).unwrap().port(), sqlswitch_tests::pg::ANON).await.unwrap();
    let n: i64 = reader.query_one("SELECT count(*) FROM items WHERE note = 'new'", &[]).await.unwrap().get(0);
    assert_eq!(n, 1, "the read-only session reads the new primary's write from replica2");
    assert_eq!(server_name(&reader).await, "replica2");
}

/// Two switchovers typed at once: one runs, the other is refused at once; one primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_switchovers_at_once_leave_one_primary() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(2).unwrap();
    let daemon = proxy::start(&topo, "").await.unwrap();
    let how =
        sqlswitch::switchover::How { repoint: false, ..sqlswitch::switchover::How::promoting(Duration::from_secs(30)) };
    let (mut quiet_a, mut quiet_b) = (|_: &sqlswitch::switchover::Step| {}, |_: &sqlswitch::switchover::Step| {});
    let (a, b) = tokio::join!(
        sqlswitch::switchover::run(&daemon.control, "app", "replica1", how, &mut quiet_a),
        sqlswitch::switchover::run(&daemon.control, "app", "replica2", how, &mut quiet_b),
    );
    let (won, lost) = match (&a, &b) {
        (Ok(_), Err(e)) => ("replica1", e),
        (Err(e), Ok(_)) => ("replica2", e),
        _ => panic!("exactly one may succeed: {a:?} {b:?}"),
    };
    assert!(lost.step == "check" && lost.to_string().contains("already running"), "{lost}");
    assert_eq!(primary_of(&daemon), won);
    let writable = ["primary", "replica1", "replica2"]
        .iter()
        .zip(&topo.nodes)
        .filter(|(_, node)| {
            let sql = "SELECT NOT pg_is_in_recovery() AND current_setting('default_transaction_read_only') = 'off'";
            topo.psql_admin(node, sql, "postgres").unwrap().trim() == "t"
        })
        .map(|(name, _)| *name)
        .collect::<Vec<_>>();
    assert_eq!(writable, [won], "one writable server");
}

/// A transaction opened directly on the old primary (not through sqlswitch) could still commit
/// after the fence: with `fence = "wait"` the switchover waits for it (and fails cleanly at its
/// deadline); with `fence = "terminate"` it ends that session and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_waits_for_or_ends_other_writers() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    let direct = connect(topo.primary().port, APP).await.unwrap();
    direct.batch_execute("BEGIN; INSERT INTO items (note) VALUES ('direct, open')").await.unwrap();
    let daemon = proxy::start(&topo, "").await.unwrap();
    let err = switchover(&daemon, "replica1", true, Duration::from_secs(2)).await.expect_err("an open writer");
    assert!(err.step == "writers" && err.to_string().contains("still the primary"), "{err}");
    assert_eq!(err.known_primary.as_deref(), Some("primary"));
    assert_eq!(primary_of(&daemon), "primary");
    direct.batch_execute("COMMIT").await.expect("the fence was undone: the direct transaction commits");
    drop(daemon);

    direct.batch_execute("BEGIN; INSERT INTO items (note) VALUES ('direct, ended')").await.unwrap();
    let daemon = proxy::start(&topo, "fence = \"terminate\"").await.unwrap();
    let result = switchover(&daemon, "replica1", true, Duration::from_secs(10)).await.expect("switchover");
    let writers = result["steps"].as_array().unwrap().iter().find(|s| s["step"] == "writers").unwrap().clone();
    assert!(writers["detail"].as_str().unwrap().contains("ended"), "{writers}");
    assert!(direct.batch_execute("COMMIT").await.is_err(), "the direct session was ended");
    let n: i64 = connect(daemon.addr("app", false).unwrap().port(), APP)
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM items WHERE note = 'direct, ended'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the ended transaction committed nowhere");
}

/// An operator (or Patroni, repmgr) fences the primary and promotes a replica by hand while
/// sqlswitch runs under write load: sqlswitch follows within a few monitor intervals, and
/// every write after that succeeds on the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_promotion_is_followed_under_load() {
    let _serial = SERIAL.lock().await;
    let topo = std::sync::Arc::new(Topology::start(1).unwrap());
    let daemon = proxy::start(&topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = std::sync::Arc::clone(&stop);
        tokio::spawn(async move {
            let client = connect(port, APP).await.unwrap();
            let (mut ok, mut failed, mut last_failure) = (0u32, 0u32, None);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let insert = "INSERT INTO items (note) VALUES ('load') RETURNING current_setting('cluster_name')";
                match client.query_one(insert, &[]).await {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        failed += 1;
                        last_failure = Some((Instant::now(), e.to_string()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed, last_failure)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = topo.primary();
    topo.psql_admin(old, "ALTER SYSTEM SET default_transaction_read_only = on", "postgres").unwrap();
    topo.psql_admin(old, "SELECT pg_reload_conf()", "postgres").unwrap();
    topo.psql_admin(&topo.replicas()[0], "SELECT pg_promote(true, 60)", "postgres").unwrap();
    let promoted = Instant::now();
    eventually(5, "sqlswitch follows the promoted server", || primary_of(&daemon) == "replica1").await;
    let followed = promoted.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, last_failure) = writer.await.unwrap();
    println!("followed in {followed:?}; {ok} writes ok, {failed} refused by the fenced server meanwhile");
    if let Some((at, e)) = last_failure {
        assert!(at < promoted + followed, "a write failed after sqlswitch followed: {e}");
    }
    assert_eq!(new_session_writes_on(&daemon).await, "replica1");
    let status = daemon.control.status();
    assert!(status["clusters"][0]["primary_problem"].is_null(), "{status}");
}

async fn failover(daemon: &sqlswitch::Daemon, target: Option<&str>) -> Result<Value, ChangeError> {
    let mut quiet = |_: &sqlswitch::switchover::Step| {};
    sqlswitch::failover::run(&daemon.control, "app", target, true, Duration::from_secs(30), &mut quiet).await
}

/// The primary dies (SIGKILL, as a crash or the OOM killer): `failover` promotes the most
/// advanced replica, says how much it may lack, re-points the other one, and writes go on.
/// Refused while the primary answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_promotes_the_most_advanced_replica_when_the_primary_dies() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(2).unwrap();
    let daemon = proxy::start(&topo, REPLICATION).await.unwrap();
    let err = failover(&daemon, None).await.expect_err("the primary answers");
    assert!(err.step == "check" && err.to_string().contains("use `switchover`"), "{err}");

    let port = daemon.addr("app", false).unwrap().port();
    let client = connect(port, APP).await.unwrap();
    client.batch_execute("INSERT INTO items (note) VALUES ('before the crash')").await.unwrap();
    topo.wait_replicas_caught_up().unwrap();
    let (replica1, replica2) = (&topo.replicas()[0], &topo.replicas()[1]);
    topo.set_replay_paused(replica2, true).unwrap();
    client.batch_execute("INSERT INTO items (note) VALUES ('replayed by replica1 only')").await.unwrap();
    let count = "SELECT count(*) FROM items WHERE note = 'replayed by replica1 only'";
    eventually(10, "replica1 replays the last write", || {
        topo.psql_admin(replica1, count, sqlswitch_tests::pg::DATABASE).unwrap().trim() == "1"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // the monitor samples the final position
    topo.sigkill_node(topo.primary()).unwrap();
    // A paused standby does not reconnect anywhere; replica2 replays what it received (at most
    // as far as replica1), so replica1 stays the most advanced (a tie goes to the first).
    topo.set_replay_paused(replica2, false).unwrap();

    let result = failover(&daemon, None).await.expect("failover");
    println!("{result}");
    assert_eq!(result["to"], "replica1", "the most advanced replica");
    assert_eq!(result["possible_loss"], 0, "replica1 has everything the primary was seen to have");
    let replicas = result["replicas"].as_array().unwrap();
    let r2 = replicas.iter().find(|r| r["backend"] == "replica2").unwrap();
    assert_eq!(r2["ok"], true, "{replicas:?}");
    assert_eq!(primary_of(&daemon), "replica1");
    assert_eq!(new_session_writes_on(&daemon).await, "replica1");

    let all = "SELECT count(*) FROM items WHERE note IN ('replayed by replica1 only', 'new')";
    eventually(10, "replica2 follows the new primary", || {
        topo.psql_admin(replica2, all, sqlswitch_tests::pg::DATABASE).unwrap().trim() == "2"
    })
    .await;
}

/// `mode read-only` with the primary up stops every write, not only those the classifier sees:
/// transactions run on replicas (or read-only on the primary), a write inside `BEGIN`, a `DO`
/// block and a writing function that the config wrongly calls read-only are all refused, and
/// nothing reaches the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_mode_stops_writes_the_classifier_cannot_see() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(1).unwrap();
    topo.psql_admin(
        topo.primary(),
        "CREATE FUNCTION sneaky() RETURNS int LANGUAGE sql AS $$ INSERT INTO items (note) VALUES ('sneaky') RETURNING 1 $$;\
         GRANT EXECUTE ON FUNCTION sneaky() TO app",
        sqlswitch_tests::pg::DATABASE,
    )
    .unwrap();
    topo.wait_replicas_caught_up().unwrap();
    let daemon = proxy::start(&topo, "read_only_functions = [\"sneaky\"]").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let client = connect(port, APP).await.unwrap();
    // A session's own setting survives maintenance: made read-only by it, given back after.
    let own = connect(port, APP).await.unwrap();
    own.batch_execute("SET default_transaction_read_only = on").await.unwrap();
    daemon.control.mode("app", "read-only").await.unwrap();
    assert_eq!(server_name(&own).await, "replica1");

    client.batch_execute("BEGIN").await.unwrap();
    let e = client.batch_execute("INSERT INTO items (note) VALUES ('in a transaction')").await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{e:?}");
    client.batch_execute("ROLLBACK").await.unwrap();
    let e =
        client.batch_execute("DO $$ BEGIN INSERT INTO items (note) VALUES ('a do block'); END $$").await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{e:?}");
    let e = client.query_one("SELECT sneaky()", &[]).await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "a replica refuses it: {e:?}");
    // With no replica to read from, the session's primary connection is read-only: the
    // primary itself refuses what the classifier let through.
    daemon.control.set_enabled("app", "replica1", false).await.unwrap();
    let fresh = connect(port, APP).await.unwrap();
    let e = fresh.query_one("SELECT sneaky()", &[]).await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "the primary refuses it: {e:?}");
    assert_eq!(server_name(&fresh).await, "primary");
    let written = "SELECT count(*) FROM items WHERE note IN ('in a transaction', 'a do block', 'sneaky')";
    assert_eq!(topo.psql_admin(topo.primary(), written, sqlswitch_tests::pg::DATABASE).unwrap().trim(), "0");

    // Back to read-write: the same connection writes again.
    daemon.control.mode("app", "read-write").await.unwrap();
    daemon.control.set_enabled("app", "replica1", true).await.unwrap();
    let one: i32 = fresh.query_one("SELECT sneaky()", &[]).await.expect("writes again").get(0);
    assert_eq!(one, 1);
    let own_setting: String = own.query_one("SHOW default_transaction_read_only", &[]).await.unwrap().get(0);
    assert_eq!(own_setting, "on", "the session's own SET, replayed after maintenance");
}

/// The primary dies and the site runs read-only from the replicas: a new read-write session
/// logs in and reads from a replica, every write gets 25006 at once, reads go on for longer
/// than max_replica_lag, and once the primary is back writes resume without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_primary_the_replicas_serve_and_writes_are_refused() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::start(2).unwrap();
    let daemon = proxy::start(&topo, "max_replica_lag = \"1s\"").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let before = connect(port, APP).await.unwrap();
    before.batch_execute("INSERT INTO items (note) VALUES ('before')").await.unwrap();
    topo.wait_replicas_caught_up().unwrap();
    topo.sigkill_node(topo.primary()).unwrap();
    eventually(10, "the cluster knows its primary is away", || {
        daemon.control.status()["clusters"][0]["maintenance"].as_str().is_some()
    })
    .await;

    let client = connect(port, APP).await.expect("a read-write user logs in without the primary");
    assert_ne!(server_name(&client).await, "primary");
    let n: i64 = client.query_one("SELECT count(*) FROM items WHERE note = 'before'", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    for write in ["INSERT INTO items (note) VALUES ('refused')", "SELECT nextval('items_id_seq')"] {
        let started = Instant::now();
        let e = client.batch_execute(write).await.expect_err("refused");
        assert_eq!(code(&e), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{write}: {e:?}");
        assert!(started.elapsed() < Duration::from_secs(1), "refused at once, not after a wait for the primary");
    }
    client.batch_execute("BEGIN").await.unwrap();
    let e = client.batch_execute("INSERT INTO items (note) VALUES ('refused')").await.unwrap_err();
    assert_eq!(code(&e), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{e:?}");
    client.batch_execute("ROLLBACK").await.unwrap();
    let anon = connect(daemon.addr("app", true).unwrap().port(), sqlswitch_tests::pg::ANON).await.unwrap();
    assert_ne!(server_name(&anon).await, "primary");
    // Three times max_replica_lag later, the replicas still serve (freshness is measured
    // between them), and so does the session that was open when the primary died.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_ne!(server_name(&client).await, "primary");
    let n: i64 = before.query_one("SELECT count(*) FROM items WHERE note = 'before'", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    let status = daemon.control.status();
    assert!(status["clusters"][0]["primary_away_ms"].as_u64().unwrap_or(0) >= 3000, "{status}");

    // The primary comes back: writes resume, without restarting sqlswitch.
    topo.restart_node(topo.primary()).unwrap();
    eventually(20, "the primary is back", || daemon.control.status()["clusters"][0]["maintenance"].is_null()).await;
    let row = client
        .query_one("INSERT INTO items (note) VALUES ('after') RETURNING current_setting('cluster_name')", &[])
        .await
        .expect("writes resume");
    assert_eq!(row.get::<_, String>(0), "primary");
}
