//! End-to-end tests of sqlswitch in front of a real PostgreSQL primary with two streaming
//! replicas (started once for this test binary by the harness). Clients are tokio-postgres,
//! `psql` and `pgbench`.

use std::process::Command;
use std::time::{Duration, Instant};

use sqlswitch_tests::client::{code, connect, connect_str, in_recovery, refused};
use sqlswitch_tests::pg::{client_bin, pgbench_failed, Topology, ANON, APP, DATABASE, MD5_USER, TRUST_USER};
use sqlswitch_tests::proxy::{self, conn_str};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_and_bad_passwords() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();

    let client = connect(port, APP).await.expect("the right password logs in");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    let err = refused(connect(port, (APP.0, "wrong")).await, "a wrong password is refused");
    assert_eq!(code(&err), Some(&SqlState::INVALID_PASSWORD), "{err}");
    let err = refused(connect(port, ("nobody", "x")).await, "an unknown user is refused");
    assert_eq!(code(&err), Some(&SqlState::INVALID_PASSWORD), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_auth_methods_md5_and_trust() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    for who in [MD5_USER, TRUST_USER, APP] {
        let client = connect(port, who).await.unwrap_or_else(|e| panic!("{}: {e}", who.0));
        let user: String = client.query_one("SELECT current_user::text", &[]).await.unwrap().get(0);
        assert_eq!(user, who.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_refusal_is_relayed() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let s = format!("host=127.0.0.1 port={port} user={} password={} dbname=no_such_db", APP.0, APP.1);
    let err = refused(connect_str(&s).await, "a missing database is refused");
    assert_eq!(code(&err), Some(&SqlState::INVALID_CATALOG_NAME), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_user_writes_land_on_the_primary() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let client = connect(port, APP).await.unwrap();
    let row = client
        .query_one("INSERT INTO items (note) VALUES ('from app') RETURNING pg_is_in_recovery()", &[])
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    client.batch_execute("BEGIN").await.unwrap();
    assert!(!in_recovery(&client).await, "a transaction runs on the primary");
    client.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_user_reads_a_replica_and_cannot_write() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let client = connect(port, ANON).await.unwrap();
    assert!(in_recovery(&client).await, "the read-only user's session runs on a replica");
    let _ = client.query("SELECT count(*) FROM items", &[]).await.unwrap();

    for sql in [
        "INSERT INTO items (note) VALUES ('anon')",
        "SET default_transaction_read_only = off",
        "BEGIN READ WRITE",
        "SELECT 1; DELETE FROM items",
    ] {
        let err = client.batch_execute(sql).await.err().unwrap_or_else(|| panic!("{sql} must be refused"));
        assert_eq!(code(&err), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{sql}: {err}");
        let message = err.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default();
        assert!(message.contains("sqlswitch"), "refused by the proxy, not a server: {message}");
    }
    // Extended protocol: the Parse is refused, and the session carries on.
    let err = refused(client.prepare("UPDATE items SET note = 'x'").await, "prepared write refused");
    assert_eq!(code(&err), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{err}");
    let err = refused(client.execute("DELETE FROM items WHERE id = $1", &[&1i64]).await, "write refused");
    assert_eq!(code(&err), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{err}");
    let one: i64 = client.query_one("SELECT $1::bigint", &[&1i64]).await.unwrap().get(0);
    assert_eq!(one, 1, "the session still works after refusals");
    // A write the lexer does not see is still refused by the server: the backend connection
    // itself is read-only.
    let err = refused(client.batch_execute("SELECT nextval('items_id_seq')").await, "refused by the server");
    assert_eq!(code(&err), Some(&SqlState::READ_ONLY_SQL_TRANSACTION), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_refusal_keeps_answers_in_order() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let client = connect(port, ANON).await.unwrap();
    // tokio-postgres pipelines concurrent queries on one connection.
    let (a, b, c) = tokio::join!(
        client.query_one("SELECT 1::int", &[]),
        client.execute("INSERT INTO items (note) VALUES ('x')", &[]),
        client.query_one("SELECT 3::int", &[]),
    );
    assert_eq!(a.unwrap().get::<_, i32>(0), 1);
    assert_eq!(code(&b.unwrap_err()), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
    assert_eq!(c.unwrap().get::<_, i32>(0), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_listener_and_declared_read_only_sessions() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let ro_port = daemon.addr("app", true).unwrap().port();
    let client = connect(ro_port, APP).await.unwrap();
    assert!(in_recovery(&client).await, "every session on the read-only listener is read-only");
    let err = client.batch_execute("INSERT INTO items (note) VALUES ('x')").await.unwrap_err();
    assert_eq!(code(&err), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));

    let port = daemon.addr("app", false).unwrap().port();
    let s = format!("{} options='-c default_transaction_read_only=on'", conn_str(port, APP));
    let client = connect_str(&s).await.unwrap();
    assert!(in_recovery(&client).await, "a client that declares read-only gets a replica");
    let err = client.batch_execute("DELETE FROM items").await.unwrap_err();
    assert_eq!(code(&err), Some(&SqlState::READ_ONLY_SQL_TRANSACTION));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_backend() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let client = connect(port, APP).await.unwrap();
    let token = client.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        token.cancel_query(NoTls).await
    });
    let err = client.batch_execute("SELECT pg_sleep(30)").await.unwrap_err();
    canceller.await.unwrap().unwrap();
    assert_eq!(code(&err), Some(&SqlState::QUERY_CANCELED), "{err}");
    assert!(started.elapsed() < Duration::from_millis(1200), "cancel took {:?}", started.elapsed());
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the session survives its cancelled query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_sessions() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let who = if i % 2 == 0 { APP } else { ANON };
        tasks.push(tokio::spawn(async move {
            let client = connect(port, who).await?;
            let row = client.query_one("SELECT $1::int + 1", &[&i]).await?;
            // Hold every session open together for a moment.
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<i32, tokio_postgres::Error>(row.get(0))
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let got = t.await.unwrap().unwrap_or_else(|e| panic!("session {i}: {e:?}"));
        assert_eq!(got, i32::try_from(i).unwrap() + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_mid_query_releases_the_backend() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let s = format!("{} application_name=leaver", conn_str(port, APP));
    let (client, conn) = tokio_postgres::connect(&s, NoTls).await.unwrap();
    let conn_task = tokio::spawn(conn);
    let query = tokio::spawn(async move { client.batch_execute("SELECT pg_sleep(30)").await });
    // The query may run on any server (it is a read): watch them all.
    let mut watchers = Vec::new();
    for node in &topo.nodes {
        let w = connect_str(&format!("host=127.0.0.1 port={} user=postgres dbname=postgres", node.port)).await.unwrap();
        watchers.push(w);
    }
    let busy = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'leaver' AND state = 'active'";
    let running = || async {
        let mut n = 0;
        for w in &watchers {
            n += w.query_one(busy, &[]).await.unwrap().get::<_, i64>(0);
        }
        n
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while running().await == 0 {
        assert!(Instant::now() < deadline, "the query never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The client vanishes: its socket closes with the query still running.
    conn_task.abort();
    query.abort();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if running().await == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the backend is still running the abandoned query");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_are_reset_between_sessions() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    // Idle pooled connections of every backend.
    let idle = || daemon.status().iter().flat_map(|c| c.backends.iter()).map(|b| b.idle_connections).sum::<usize>();
    // A session's connection returns to the pool (reset) after the session ends: wait for it,
    // so the next session takes it rather than opening another.
    let released = |before: usize| async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while idle() <= before {
            assert!(Instant::now() < deadline, "a connection never went back to the pool");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let client = connect(port, APP).await.unwrap();
    let pid: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    client.batch_execute("SET search_path = nowhere; PREPARE p AS SELECT 1").await.unwrap();
    let before = idle();
    drop(client);
    released(before).await;
    // Reads go to either replica: a few sessions find the one holding that connection.
    for _ in 0..40 {
        let client = connect(port, APP).await.unwrap();
        let again: i32 = client.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
        if again == pid {
            let path: String = client.query_one("SHOW search_path", &[]).await.unwrap().get(0);
            assert_ne!(path, "nowhere", "session state does not leak to the next session");
            let err = client.batch_execute("EXECUTE p").await.unwrap_err();
            assert_eq!(code(&err), Some(&SqlState::INVALID_SQL_STATEMENT_NAME));
            return;
        }
        let before = idle();
        drop(client);
        released(before).await;
    }
    panic!("the backend connection was never reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_one_client_does_not_hurt_others() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let addr = daemon.addr("app", false).unwrap();
    let client = connect(addr.port(), APP).await.unwrap();
    // An SSLRequest with bytes smuggled after it, HTTP, a 2 GiB length, protocol 2.0.
    for junk in [
        &b"\x00\x00\x00\x08\x04\xd2\x16\x2fjunk"[..],
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x7f\xff\xff\xff",
        b"\x00\x00\x00\x09\x00\x02\x00\x00\x00",
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(junk).await.unwrap();
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply))
            .await
            .expect("the proxy closes the connection");
    }
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    let fresh = connect(addr.port(), APP).await.unwrap();
    let two: i32 = fresh.query_one("SELECT 2", &[]).await.unwrap().get(0);
    assert_eq!(two, 2);
}

/// Runs `psql -c sql` as `who` through the proxy on `port`.
async fn psql(port: u16, (user, password): (&'static str, &'static str), sql: &'static str) -> std::process::Output {
    let psql = client_bin(Topology::shared(), "psql");
    let url = format!("postgresql://{user}:{password}@127.0.0.1:{port}/{DATABASE}");
    tokio::task::spawn_blocking(move || {
        Command::new(psql).args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", &url, "-c", sql]).output().unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_through_sqlswitch() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let out = psql(port, ANON, "SELECT pg_is_in_recovery()").await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
    let out = psql(port, ANON, "INSERT INTO items (note) VALUES ('psql')").await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("read-only session"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = psql(port, APP, "INSERT INTO items (note) VALUES ('psql') RETURNING note").await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "psql");
}

fn pgbench(topo: &Topology, port: u16, args: &[&str]) -> String {
    sqlswitch_tests::pg::pgbench(topo, port, args).unwrap_or_else(|e| panic!("{e:#}"))
}

fn processed(report: &str) -> u64 {
    let line = report.lines().find(|l| l.starts_with("number of transactions actually processed")).expect(report);
    line.split(':').nth(1).and_then(|v| v.split('/').next()).and_then(|v| v.trim().parse().ok()).expect(line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_select_only_and_tpcb_through_sqlswitch() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let primary = topo.primary().port;
    tokio::task::spawn_blocking(move || {
        let topo = Topology::shared();
        pgbench(topo, primary, &["-i", "-q", "-s", "1"]);
        for args in [
            &["-S", "-c", "4", "-j", "2", "-T", "3"][..],
            &["-S", "-M", "extended", "-c", "4", "-j", "2", "-T", "2"],
            &["-S", "-M", "prepared", "-c", "4", "-j", "2", "-T", "2"],
            &["-c", "4", "-j", "2", "-T", "3"],
        ] {
            let report = pgbench(topo, port, args);
            assert_eq!(pgbench_failed(&report), 0, "{args:?}:\n{report}");
            assert!(processed(&report) > 100, "{args:?}:\n{report}");
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_reports_sessions_statements_and_connections() {
    let topo = Topology::shared();
    let metrics_port = sqlswitch_tests::pg::free_ports(1).unwrap()[0];
    let text = proxy::config_text(
        topo,
        "metered",
        "127.0.0.1:0",
        "127.0.0.1:0",
        Some(&format!("127.0.0.1:{metrics_port}")),
        "",
    );
    let config = sqlswitch_config::Config::parse(&text, std::path::Path::new("<test>"), |_| None).unwrap();
    let daemon = sqlswitch::Daemon::start(config).await.unwrap();
    let port = daemon.addr("metered", false).unwrap().port();
    let client = connect(port, APP).await.unwrap();
    client.batch_execute("SELECT 1").await.unwrap();
    let anon = connect(port, ANON).await.unwrap();
    anon.batch_execute("SELECT 1").await.unwrap();

    let mut body = String::new();
    for _ in 0..50 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", metrics_port)).await {
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").await.unwrap();
            s.read_to_string(&mut body).await.unwrap();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for needle in [
        "sqlswitch_client_sessions{cluster=\"metered\"} 2",
        "sqlswitch_statements_total{cluster=\"metered\",target=\"primary\",reason=\"write\"}",
        "sqlswitch_statements_total{cluster=\"metered\",target=\"replica\",reason=\"read_only_session\"}",
        "sqlswitch_backend_connections{cluster=\"metered\",backend=\"primary\",state=\"open\"}",
    ] {
        assert!(body.contains(needle), "missing {needle} in:\n{body}");
    }
}

/// Open backend connections of `cluster`'s primary, from the daemon's metrics.
fn open_on_primary(daemon: &sqlswitch::Daemon) -> u64 {
    let body = daemon.metrics.render();
    body.lines()
        .find(|l| l.starts_with("sqlswitch_backend_connections{") && l.contains("backend=\"primary\",state=\"open\""))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_hold_no_backend_connection() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let base = open_on_primary(&daemon); // the monitor's
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(connect(port, APP).await.unwrap());
    }
    // Each login proved itself on a connection that went back to the pool: one serves them all.
    let idle = open_on_primary(&daemon) - base;
    assert!(idle <= 1, "20 idle sessions hold {idle} connections");
    for c in &clients {
        c.batch_execute("CREATE TEMP TABLE t (x int)").await.unwrap();
    }
    // Sessions that ran something keep their connection (session pooling): 20 now.
    assert_eq!(open_on_primary(&daemon) - base, 20);
    drop(clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_over_unix_sockets() {
    let topo = Topology::shared();
    // backend_tls does not apply to a Unix socket (as libpq): `require` still connects.
    let daemon = proxy::start_unix(topo, "backend_tls = { mode = \"require\" }").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let client = connect(port, APP).await.unwrap();
    // A Unix-socket connection has no server address.
    let over_unix = "SELECT inet_server_addr() IS NULL";
    let row = client.query_one(over_unix, &[]).await.unwrap();
    assert!(row.get::<_, bool>(0), "the read went over a Unix socket");
    assert!(in_recovery(&client).await, "reads still go to a replica");
    client.batch_execute("BEGIN").await.unwrap();
    assert!(!in_recovery(&client).await, "a transaction runs on the primary");
    assert!(client.query_one(over_unix, &[]).await.unwrap().get::<_, bool>(0), "the primary over a Unix socket");
    client.batch_execute("COMMIT").await.unwrap();
    // A CancelRequest reaches a backend on a Unix socket.
    client.batch_execute("BEGIN").await.unwrap();
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        token.cancel_query(NoTls).await
    });
    let err = client.batch_execute("SELECT pg_sleep(30)").await.unwrap_err();
    canceller.await.unwrap().unwrap();
    assert_eq!(code(&err), Some(&SqlState::QUERY_CANCELED), "{err}");
    client.batch_execute("ROLLBACK").await.unwrap();
    // The monitor reaches them too: every backend is up.
    let status = daemon.status();
    assert!(status[0].backends.iter().all(|b| b.state == "up"), "{status:?}");
}

/// Runs the raw bytes `script` with psql as `who` through the proxy on `port`, the client
/// encoding `encoding`; stdout as bytes, or stderr.
async fn psql_encoded(port: u16, encoding: &'static str, script: &'static [u8]) -> Result<Vec<u8>, String> {
    use std::io::Write as _;
    let psql = client_bin(Topology::shared(), "psql");
    let url = format!("postgresql://{}:{}@127.0.0.1:{port}/{DATABASE}", APP.0, APP.1);
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(psql)
            .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", &url, "-f", "-"])
            .env("PGCLIENTENCODING", encoding)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(script).unwrap();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    })
    .await
    .unwrap()
}

/// Every client encoding PostgreSQL accepts works through sqlswitch: a LATIN9 session's
/// non-ASCII text is classified (a read goes to a replica, a write to the primary), never
/// refused; an SJIS text whose second byte looks like a backslash goes to the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_client_encodings_are_served() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    // LATIN9: é = 0xE9, € = 0xA4.
    let out = psql_encoded(port, "LATIN9", b"SELECT pg_is_in_recovery(), 'caf\xe9' = 'caf' || chr(233);\n").await;
    assert_eq!(out.unwrap(), b"t|t\n", "a LATIN9 read runs on a replica and means what it says");
    let out = psql_encoded(
        port,
        "LATIN9",
        b"INSERT INTO items (note) VALUES ('\xa4uro') RETURNING note, pg_is_in_recovery();\n",
    )
    .await;
    assert_eq!(out.unwrap(), b"\xa4uro|f\n", "a LATIN9 write runs on the primary");
    // SJIS: 0x95 0x5C is one character (U+8868); read as ASCII its second byte is a backslash.
    let out = psql_encoded(port, "SJIS", b"SELECT pg_is_in_recovery(), '\x95\\' = chr(34920);\n").await;
    assert_eq!(out.unwrap(), b"f|t\n", "an ambiguous text goes to the primary");
    // State set in LATIN9 text stays with the session's connection.
    let script = b"SET search_path = caf\xe9, public;\nSHOW search_path;\nSELECT count(*) > 0 FROM items;\n";
    let direct = psql_encoded(topo.primary().port, "LATIN9", script).await.unwrap();
    assert_eq!(psql_encoded(port, "LATIN9", script).await.unwrap(), direct);
}

/// A session that LISTENs and NOTIFYs itself is told its notification came from the process
/// id it was given (BackendKeyData), as directly: psycopg and others compare the two. A
/// notification from another session names that session's given pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_notifications_carry_the_pid_the_client_was_given() {
    use postgres_protocol::message::backend::Message;
    use tokio::io::AsyncWriteExt;
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    for port in [topo.primary().port, daemon.addr("app", false).unwrap().port()] {
        let (mut s, mut buf, pid) = sqlswitch_tests::pg_raw::raw_session_pid(port).await;
        let mut out = bytes::BytesMut::new();
        postgres_protocol::message::frontend::query("LISTEN own; NOTIFY own, 'x'", &mut out).unwrap();
        s.write_all(&out).await.unwrap();
        let got =
            sqlswitch_tests::pg_raw::read_until(&mut s, &mut buf, |m| matches!(m, Message::ReadyForQuery(_))).await;
        let from = sqlswitch_tests::pg_raw::notification_pid(&got);
        assert_eq!(from, Some(pid), "port {port}: the notification names the client's own pid");
        // Another session's notification names the pid that session's client was given
        // (psycopg2's notify tests compare it with the sender's `backend_pid`).
        let (mut sender, mut sender_buf, sender_pid) = sqlswitch_tests::pg_raw::raw_session_pid(port).await;
        out.clear();
        postgres_protocol::message::frontend::query("NOTIFY own, 'y'", &mut out).unwrap();
        sender.write_all(&out).await.unwrap();
        sqlswitch_tests::pg_raw::read_until(&mut sender, &mut sender_buf, |m| matches!(m, Message::ReadyForQuery(_)))
            .await;
        let got =
            sqlswitch_tests::pg_raw::read_until(&mut s, &mut buf, |m| matches!(m, Message::NotificationResponse(_)))
                .await;
        let from = sqlswitch_tests::pg_raw::notification_pid(&got);
        assert_eq!(from, Some(sender_pid), "port {port}: the notification names the sender's client pid");
        // Delivered after its sender quit (the listener was in a transaction): still the
        // sender's given pid (psycopg2's test_notifies_received_on_commit).
        out.clear();
        postgres_protocol::message::frontend::query("BEGIN; SELECT 1", &mut out).unwrap();
        s.write_all(&out).await.unwrap();
        sqlswitch_tests::pg_raw::read_until(&mut s, &mut buf, |m| matches!(m, Message::ReadyForQuery(_))).await;
        let (mut sender, mut sender_buf, sender_pid) = sqlswitch_tests::pg_raw::raw_session_pid(port).await;
        out.clear();
        // Terminate right behind the query, in one write: answered, then closed, as directly.
        postgres_protocol::message::frontend::query("NOTIFY own, 'z'", &mut out).unwrap();
        postgres_protocol::message::frontend::terminate(&mut out);
        sender.write_all(&out).await.unwrap();
        let gone = sqlswitch_tests::pg_raw::read_until(&mut sender, &mut sender_buf, |_| false).await;
        assert!(
            matches!(gone.last(), Some(Message::ReadyForQuery(_))),
            "port {port}: the NOTIFY answered before the close ({} messages)",
            gone.len()
        );
        out.clear();
        postgres_protocol::message::frontend::query("COMMIT", &mut out).unwrap();
        s.write_all(&out).await.unwrap();
        let got =
            sqlswitch_tests::pg_raw::read_until(&mut s, &mut buf, |m| matches!(m, Message::NotificationResponse(_)))
                .await;
        let from = sqlswitch_tests::pg_raw::notification_pid(&got);
        assert_eq!(from, Some(sender_pid), "port {port}: the quit sender's client pid");
    }
}

/// `current_setting($1)` with `transaction_read_only` bound, in autocommit, answers as the
/// primary would (a replica would say `on`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setting_named_by_a_parameter_is_read_where_writes_go() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let client = connect(daemon.addr("app", false).unwrap().port(), APP).await.unwrap();
    let row = client.query_one("SELECT current_setting($1)", &[&"transaction_read_only"]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "off");
    let row = client.query_one("SELECT current_setting('transaction_read_only')", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "off");
}

/// A pipeline sent with no Sync (libpq's pipeline mode, psycopg's
/// `test_pipeline_communicate_uniqviol`) is answered as the server runs it, up to its error,
/// which the server flushes; sqlswitch held such messages for a Sync that never came, and the
/// client waited forever. The Sync that follows ends the failed pipeline as directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_with_no_sync_is_answered_up_to_its_error() {
    use bytes::{BufMut, BytesMut};
    use postgres_protocol::message::backend::Message;
    use postgres_protocol::message::frontend;
    use sqlswitch_tests::pg_raw::{error_code, raw_session, read_until};
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let setup = connect(port, APP).await.unwrap();
    setup.batch_execute("DROP TABLE IF EXISTS no_sync; CREATE TABLE no_sync (id int PRIMARY KEY)").await.unwrap();
    let (mut s, mut buf) = raw_session(port).await;
    let mut out = BytesMut::new();
    frontend::query("BEGIN", &mut out).unwrap();
    frontend::parse("ins", "INSERT INTO no_sync VALUES ($1) RETURNING id", [23], &mut out).unwrap();
    frontend::sync(&mut out);
    s.write_all(&out).await.unwrap();
    for _ in 0..2 {
        read_until(&mut s, &mut buf, |m| matches!(m, Message::ReadyForQuery(_))).await;
    }
    out.clear();
    for id in ["1", "2", "1", "3"] {
        let text = |v: &str, b: &mut BytesMut| {
            b.put_slice(v.as_bytes());
            Ok(postgres_protocol::IsNull::No)
        };
        frontend::bind("", "ins", [0], [id], text, [0], &mut out).map_err(|_| "bind").unwrap();
        frontend::execute("", 0, &mut out).unwrap();
    }
    s.write_all(&out).await.unwrap();
    let got = read_until(&mut s, &mut buf, |m| matches!(m, Message::ErrorResponse(_))).await;
    assert_eq!(error_code(&got).as_deref(), Some("23505"), "answered up to the duplicate");
    assert_eq!(got.iter().filter(|m| matches!(m, Message::DataRow(_))).count(), 2);
    out.clear();
    frontend::sync(&mut out);
    frontend::query("ROLLBACK", &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    let got = read_until(&mut s, &mut buf, |m| matches!(m, Message::ReadyForQuery(_))).await;
    assert!(
        matches!(got.last(), Some(Message::ReadyForQuery(r)) if r.status() == b'E'),
        "the transaction failed, as directly"
    );
    let got = read_until(&mut s, &mut buf, |m| matches!(m, Message::ReadyForQuery(_))).await;
    assert!(matches!(got.last(), Some(Message::ReadyForQuery(r)) if r.status() == b'I'), "rolled back");
    let n: i64 = setup.query_one("SELECT count(*) FROM no_sync", &[]).await.unwrap().get(0);
    assert_eq!(n, 0);
}

/// The pid a client is given is the proxy's own, above any operating system's process ids:
/// `pg_terminate_backend` of it ends nobody's connection, where a small random number could
/// have named another client's pooled one (decision 0017).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pid_a_client_is_given_names_no_server_process() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let (_session, _buf, pid) = sqlswitch_tests::pg_raw::raw_session_pid(port).await;
    assert!(pid >= 1 << 30, "{pid}");
    let c = connect(port, APP).await.unwrap();
    let ended: bool = c.query_one("SELECT pg_terminate_backend($1)", &[&pid]).await.unwrap().get(0);
    assert!(!ended, "no server process has that pid");
    let own: bool = c.query_one("SELECT pg_terminate_backend(pg_backend_pid())", &[]).await.map_or(true, |r| r.get(0));
    assert!(own, "its own server connection it can end");
    c.query_one("SELECT 1", &[]).await.expect_err("and the client hears it, as directly");
}
