//! Hostile input and faults against a running sqlswitch in front of real servers: every bad
//! client gets an error or a close, the daemon keeps serving everyone else, and its memory stays
//! bounded (the daemon runs in this process: the tests read this process's RSS).

use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use sqlswitch_tests::client::connect;
use sqlswitch_tests::pg::{Topology, APP, DATABASE};
use sqlswitch_tests::pg_raw::{error_code, raw_session, read_until};
use sqlswitch_tests::proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// RSS checks need the other tests of this file out of the way.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

async fn still_serves(port: u16) {
    let c = connect(port, APP).await.unwrap();
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the daemon serves others");
}

/// A daemon over the shared topology, proven to serve, and this process's RSS after that.
async fn serving_with_baseline() -> (sqlswitch::Daemon, u16, u64) {
    let daemon = proxy::start(Topology::shared(), "").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    still_serves(port).await;
    (daemon, port, rss())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_in_a_session_get_an_error_and_a_close() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "max_message_size = 1048576").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let bystander = connect(port, APP).await.unwrap();

    // A length of 2^31-1: refused before any buffer that size exists.
    let (mut s, mut buf) = raw_session(port).await;
    s.write_all(b"Q\x7f\xff\xff\xff").await.unwrap();
    let got = read_until(&mut s, &mut buf, |m| matches!(m, Message::ErrorResponse(_))).await;
    assert_eq!(error_code(&got).as_deref(), Some("54000"), "too large");

    // A negative length.
    let (mut s, mut buf) = raw_session(port).await;
    s.write_all(b"Q\xff\xff\xff\xf0").await.unwrap();
    let got = read_until(&mut s, &mut buf, |m| matches!(m, Message::ErrorResponse(_))).await;
    assert_eq!(error_code(&got).as_deref(), Some("08P01"), "negative length");

    // An unknown message type: the server's own protocol error reaches the client.
    let (mut s, mut buf) = raw_session(port).await;
    s.write_all(b"z\x00\x00\x00\x04").await.unwrap();
    let got = read_until(&mut s, &mut buf, |m| matches!(m, Message::ErrorResponse(_))).await;
    assert_eq!(error_code(&got).as_deref(), Some("08P01"), "unknown type");

    // Wrong order: Execute of a portal that was never bound, then Sync.
    let (mut s, mut buf) = raw_session(port).await;
    let mut out = BytesMut::new();
    frontend::execute("nope", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    s.write_all(&out).await.unwrap();
    let got = read_until(&mut s, &mut buf, |m| matches!(m, Message::ReadyForQuery(_))).await;
    assert_eq!(error_code(&got).as_deref(), Some("34000"), "no such portal");

    // Random bytes after login.
    let (mut s, mut buf) = raw_session(port).await;
    let noise: Vec<u8> = (0..4096).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let _ = s.write_all(&noise).await;
    let _ = read_until(&mut s, &mut buf, |_| false).await; // an error and a close, or a close
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the proxy closes a client that sends noise");

    // Half a message, then gone.
    let (mut s, _) = raw_session(port).await;
    s.write_all(b"Q\x00\x00\x01\x00SELECT").await.unwrap();
    drop(s);

    let one: i32 = bystander.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    still_serves(port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_that_never_finishes_is_dropped() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "auth_timeout = \"1s\"").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let started = Instant::now();
    let mut silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = BytesMut::new();
    let got = read_until(&mut silent, &mut buf, |m| matches!(m, Message::ErrorResponse(_))).await;
    assert_eq!(error_code(&got).as_deref(), Some("08P01"), "told why");
    assert!(started.elapsed() < Duration::from_secs(5), "dropped after auth_timeout");
    // Half a startup packet, then silence: the same.
    let mut half = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    half.write_all(b"\x00\x00\x00\x30\x00\x03").await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), half.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a half startup is dropped too");
    still_serves(port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_at_once_leave_nothing_behind() {
    let _serial = SERIAL.lock().await;
    let (_daemon, port, before) = serving_with_baseline().await;
    for _ in 0..3 {
        let opens = (0..1000).map(|i| async move {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await {
                if i % 2 == 0 {
                    let mut out = BytesMut::new();
                    frontend::startup_message([("user", APP.0)], &mut out).unwrap();
                    let _ = s.write_all(&out).await;
                }
            }
        });
        futures::future::join_all(opens).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss().saturating_sub(before);
    assert!(grown < 64 << 20, "3,000 abandoned connections left {grown} bytes behind");
    still_serves(port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_costs_bounded_memory() {
    let _serial = SERIAL.lock().await;
    let (daemon, port, before) = serving_with_baseline().await;
    // 200 MB of answer that the client never reads.
    let (mut s, _buf) = raw_session(port).await;
    let mut out = BytesMut::new();
    frontend::query("SELECT repeat('x', 100000) FROM generate_series(1, 2000)", &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = rss().saturating_sub(before);
    assert!(grown < 32 << 20, "a stalled reader made the proxy hold {grown} bytes");
    still_serves(port).await;
    drop(s);
    // The stalled session ends with its client, and gives its connection back.
    proxy::released(&daemon).await;
    still_serves(port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_mid_result_errors_that_client_and_comes_back() {
    let topo = Topology::start(0).unwrap();
    let daemon = proxy::start(&topo, "connect_timeout = \"2s\"").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let (mut s, mut buf) = raw_session(port).await;
    let mut out = BytesMut::new();
    frontend::query("SELECT repeat('x', 1000) FROM generate_series(1, 10000000)", &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    // Some of the answer arrives...
    let got = read_until(&mut s, &mut buf, |m| matches!(m, Message::DataRow(_))).await;
    assert!(got.iter().any(|m| matches!(m, Message::DataRow(_))), "rows flow");
    // ...then the server dies.
    topo.kill_node(topo.primary()).unwrap();
    let mut tail = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut tail)).await;
    assert!(closed.is_ok(), "the client is not left hanging");
    // What was left of a half-read message, then the rest.
    buf.extend_from_slice(&tail);
    let mut tail = buf;
    let mut last_error = None;
    while tail.has_remaining() {
        match Message::parse(&mut tail) {
            Ok(Some(Message::ErrorResponse(e))) => last_error = Some(error_code(&[Message::ErrorResponse(e)])),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    // Told: an ErrorResponse at a message boundary, or — when the server died mid-message — the
    // connection closed inside that message, exactly what a direct client sees.
    let cut_mid_message = !tail.is_empty();
    assert!(last_error.is_some() || cut_mid_message, "the client is told");
    // While it is down, new sessions get a clear error, not a hang.
    let started = Instant::now();
    assert!(connect(port, APP).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(10));
    // It comes back: the daemon uses it again.
    topo.restart_node(topo.primary()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(c) = connect(port, APP).await {
            if c.query_one("SELECT 1", &[]).await.is_ok() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the restarted primary is never used again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(daemon);
    topo.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_answers_is_timed_out() {
    // Accepts TCP and then says nothing.
    let mute = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute_addr = mute.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = mute.accept().await {
            held.push(s);
        }
    });
    let text = format!(
        "[admin]\nsocket = \"/tmp/unused.sock\"\n\n[[cluster]]\nname = \"mute\"\nprotocol = \"postgres\"\n\
         listen = \"127.0.0.1:0\"\nconnect_timeout = \"1s\"\n\n[[cluster.user]]\nname = \"{}\"\npassword = \"{}\"\n\n\
         [[cluster.backend]]\nname = \"mute\"\naddress = \"{mute_addr}\"\nrole = \"primary\"\n",
        APP.0, APP.1
    );
    let config = sqlswitch_config::Config::parse(&text, std::path::Path::new("<test>"), |_| None).unwrap();
    let daemon = sqlswitch::Daemon::start_with(config, false).await.unwrap();
    let port = daemon.addr("mute", false).unwrap().port();
    let started = Instant::now();
    let err = connect(port, APP).await.expect_err("no session on a mute backend");
    assert!(started.elapsed() < Duration::from_secs(8), "timed out promptly ({:?})", started.elapsed());
    assert_eq!(sqlswitch_tests::client::code(&err).map(|c| c.code()), Some("08006"), "{err:?}");
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_closed_after_idle_timeout_but_not_in_a_transaction() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "idle_timeout = \"500ms\"").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let (mut idle, mut idle_buf) = raw_session(port).await;
    let (mut busy, mut busy_buf) = raw_session(port).await;
    let mut out = BytesMut::new();
    frontend::query("BEGIN", &mut out).unwrap();
    busy.write_all(&out).await.unwrap();
    read_until(&mut busy, &mut busy_buf, |m| matches!(m, Message::ReadyForQuery(_))).await;
    let started = Instant::now();
    let got = read_until(&mut idle, &mut idle_buf, |m| matches!(m, Message::ErrorResponse(_))).await;
    assert_eq!(error_code(&got).as_deref(), Some("57P05"), "the idle session is told why");
    assert!(started.elapsed() < Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(700)).await;
    out.clear();
    frontend::query("SELECT 1", &mut out).unwrap();
    busy.write_all(&out).await.unwrap();
    let got = read_until(&mut busy, &mut busy_buf, |m| matches!(m, Message::ReadyForQuery(_))).await;
    assert!(got.iter().any(|m| matches!(m, Message::DataRow(_))), "a session in a transaction is not idle");
}

/// Past `max_client_connections` a PostgreSQL client gets 53300 and the daemon serves on; a
/// client that leaves gives its place back, whether it dropped its connection mid-session,
/// was refused at login, or quit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_client_connections_clients_get_53300_and_places_come_back() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "max_client_connections = 2").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let code = |r: Result<tokio_postgres::Client, tokio_postgres::Error>| r.err().and_then(|e| e.code().cloned());
    let first = connect(port, APP).await.unwrap();
    let (raw, _) = raw_session(port).await;
    let refused = code(connect(port, APP).await);
    assert_eq!(refused.as_ref().map(|c| c.code()), Some("53300"), "a third client is over the limit");
    let one: i32 = first.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the first is served on");
    // The dropped socket's place comes back (once its session has seen it go): a login with a
    // wrong password then gets its own error, not 53300.
    drop(raw);
    let mut wrong = None;
    for _ in 0..50 {
        wrong = code(connect(port, ("app", "wrong")).await);
        if wrong.as_ref().is_some_and(|c| c.code() != "53300") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(wrong.as_ref().map(|c| c.code()), Some("28P01"), "the dropped socket gave its place back");
    // The refused login gave its place back too (once its session has ended, which may be just
    // after the client read its error): one more client fits beside the first, and then no other.
    let second = poll_connect(port).await.expect("the refused login gave its place back");
    let refused = code(connect(port, APP).await);
    assert_eq!(refused.as_ref().map(|c| c.code()), Some("53300"), "still two at most");
    drop((first, second));
    let c = poll_connect(port).await.expect("a client fits once the others quit");
    let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// Connects as `app`, polling for up to five seconds while the daemon answers 53300.
async fn poll_connect(port: u16) -> Option<tokio_postgres::Client> {
    for _ in 0..50 {
        match connect(port, APP).await {
            Ok(c) => return Some(c),
            Err(e) if e.code().is_some_and(|c| c.code() == "53300") => {}
            Err(e) => panic!("only 53300 is expected while places come back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_at_most_max_held_statements() {
    let topo = Topology::shared();
    let daemon = proxy::start(topo, "max_held = 2").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(port, APP).await.unwrap());
    }
    daemon.control.pause("app", Duration::from_secs(30)).unwrap();
    let [a, b, c] = <[_; 3]>::try_from(clients).unwrap_or_else(|_| unreachable!());
    let held_a = tokio::spawn(async move { a.query_one("SELECT 1", &[]).await.map(|r| r.get::<_, i32>(0)) });
    let held_b = tokio::spawn(async move { b.query_one("SELECT 2", &[]).await.map(|r| r.get::<_, i32>(0)) });
    // Both are held before the third comes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.control.status()["clusters"][0]["held_now"] != 2 {
        assert!(Instant::now() < deadline, "the two statements were never held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = c.query_one("SELECT 3", &[]).await.unwrap_err();
    assert_eq!(sqlswitch_tests::client::code(&err).map(|c| c.code()), Some("53400"), "{err:?}");
    daemon.control.resume("app").unwrap();
    assert_eq!(held_a.await.unwrap().unwrap(), 1);
    assert_eq!(held_b.await.unwrap().unwrap(), 2);
    let three: i32 = c.query_one("SELECT 3", &[]).await.unwrap().get(0);
    assert_eq!(three, 3, "after the pause the refused client goes on");
}

/// Reads one MySQL packet's payload (or `None` when the proxy closed the connection).
async fn mysql_packet(s: &mut TcpStream, buf: &mut BytesMut) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(p)) = sqlswitch_protocol::mysql::packet::decode(buf, 1 << 24) {
            return Some(p.payload.to_vec());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// The MySQL error code of an ERR payload.
fn mysql_error(p: &[u8]) -> Option<u16> {
    (p.first() == Some(&0xFF) && p.len() >= 3).then(|| u16::from_le_bytes([p[1], p[2]]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_clients_sending_garbage_get_an_error_or_a_close() {
    let topo = sqlswitch_tests::mysql::Topology::shared();
    let daemon = proxy::start_mysql(topo, "max_message_size = 1048576").await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    // A packet header announcing 16 MiB, continued, past max_message_size: refused from the
    // header, before any of it is buffered.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = BytesMut::new();
    assert!(mysql_packet(&mut s, &mut buf).await.is_some(), "the handshake");
    s.write_all(&[0xff, 0xff, 0xff, 1]).await.unwrap();
    s.write_all(&[0u8; 4096]).await.unwrap();
    let answer = mysql_packet(&mut s, &mut buf).await;
    assert_eq!(answer.as_deref().and_then(mysql_error), Some(1153), "{answer:?}");
    // Random bytes instead of a handshake response.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = BytesMut::new();
    mysql_packet(&mut s, &mut buf).await;
    let noise: Vec<u8> = (0..512u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    s.write_all(&noise).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "noise ends with a close");
    let mut rest = BytesMut::from(&rest[..]);
    let err = sqlswitch_protocol::mysql::packet::decode(&mut rest, 1 << 24).ok().flatten();
    let code = err.as_ref().and_then(|p| mysql_error(&p.payload));
    assert!(matches!(code, Some(1153 | 1043)), "noise gets an ERR first: {err:?}");
    // A client that connects and leaves at once.
    drop(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    // The daemon serves on.
    let mut conn =
        mysql_async::Conn::new(mysql_async::Opts::from_url(&sqlswitch_tests::proxy::mysql_url(port, APP)).unwrap())
            .await
            .unwrap();
    use mysql_async::prelude::Queryable;
    let one: Option<i64> = conn.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1), "the daemon serves on");
    conn.disconnect().await.unwrap();
}

/// Every log line of this test binary, from here on.
fn captured_logs() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    std::sync::Arc::clone(LOGS.get_or_init(|| {
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&logs);
        let _ = tracing_subscriber::fmt()
            .with_env_filter("sqlswitch=trace")
            .with_ansi(false)
            .with_writer(move || Sink(std::sync::Arc::clone(&sink)))
            .try_init();
        logs
    }))
}

struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_stay_out_of_logs_status_metrics_and_errors() {
    let logs = captured_logs();
    let topo = Topology::shared();
    let (user, secret) = ("vault", "V4ult-s3cret-9f2e");
    let (ghost, ghost_secret) = ("ghost", "Gh0st-s3cret-71ab");
    let monitor_secret = "M0n-s3cret-c0ffee";
    topo.psql_admin(
        topo.primary(),
        &format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') THEN \
             CREATE ROLE {user} LOGIN PASSWORD '{secret}'; END IF; END $$; GRANT ALL ON DATABASE {DATABASE} TO {user}"
        ),
        "postgres",
    )
    .unwrap();
    topo.wait_replicas_caught_up().unwrap();
    // `ghost` is unknown to PostgreSQL; the monitor's password is wrong: both fail on the
    // backends, and those failures are logged.
    let extra = format!(
        "[[cluster.user]]\nname = \"{user}\"\npassword = \"{secret}\"\n\n\
         [[cluster.user]]\nname = \"{ghost}\"\npassword = \"{ghost_secret}\"\n"
    );
    let text = proxy::config_text(topo, "app", "127.0.0.1:0", "127.0.0.1:0", None, "")
        .replace("password = \"monitor\"", &format!("password = \"{monitor_secret}\""))
        + &extra;
    let config = sqlswitch_config::Config::parse(&text, std::path::Path::new("<test>"), |_| None).unwrap();
    let daemon = sqlswitch::Daemon::start_with(config, false).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();

    let client = connect(port, (user, secret)).await.expect("a login with the right password");
    client.query_one("SELECT 1", &[]).await.unwrap();
    // A monitor that cannot log in sees nothing, but the servers are there: writes go on (the
    // primary is not "away", the cluster is not in maintenance).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client
        .batch_execute("CREATE TEMP TABLE scratch (a int); INSERT INTO scratch VALUES (1)")
        .await
        .expect("a write with the monitor locked out");
    let mut errors = Vec::new();
    for who in [(user, "not-the-password"), (ghost, ghost_secret), ("nobody", secret)] {
        let err = connect(port, who).await.expect_err("refused");
        errors.push(format!("{err:?} {:?}", err.as_db_error().map(|e| (e.message(), e.detail(), e.hint()))));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let status = daemon.control.status().to_string();
    let metrics = daemon.metrics.render();
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    // Each failure was logged, without its password: the client's, the backend's refusal of
    // `ghost` and of the monitor.
    for (what, line) in [
        ("a wrong password", "authentication failed for user \"vault\""),
        ("the backend's refusal", "no session: the backend login failed"),
        ("the monitor's failed login", "backend is down"),
    ] {
        assert!(logged.contains(line), "{what} is logged: {logged}");
    }
    for password in [secret, ghost_secret, monitor_secret, "not-the-password"] {
        assert!(!status.contains(password), "ctl status shows a password");
        assert!(!metrics.contains(password), "metrics show a password");
        assert!(!logged.contains(password), "the log shows a password");
        assert!(errors.iter().all(|e| !e.contains(password)), "an error shows a password: {errors:?}");
    }
}

/// A second SIGTERM (or a SIGINT) during the shutdown grace period stops sqlswitch at once: an
/// operator who asked twice is not held for the whole grace by a client's open transaction
/// (the second signal was swallowed before). Its log, written to a file, has no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_during_the_grace_period_stops_at_once() {
    let topo = Topology::shared();
    let dir = std::env::temp_dir().join(format!("sqlswitch-sigterm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = sqlswitch_tests::pg::free_ports(1).unwrap()[0];
    let text = proxy::config_text(topo, "app", &format!("127.0.0.1:{port}"), "127.0.0.1:0", None, "")
        .replace("/tmp/sqlswitch-test.sock", &dir.join("admin.sock").display().to_string());
    let config = dir.join("sqlswitch.toml");
    std::fs::write(&config, format!("shutdown_grace = \"60s\"\n{text}")).unwrap();
    let mut daemon = std::process::Command::new(proxy::sqlswitch_bin().unwrap())
        .args(["run", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(dir.join("log")).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = daemon.id().to_string();
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = connect(port, APP).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = client.expect("sqlswitch serves");
    client.batch_execute("BEGIN; SELECT 1").await.unwrap();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    // The first SIGTERM: no new connections, the open transaction may finish.
    let deadline = Instant::now() + Duration::from_secs(10);
    while connect(port, APP).await.is_ok() {
        assert!(Instant::now() < deadline, "new connections are refused after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(daemon.try_wait().unwrap().is_none(), "the grace period holds for the open transaction");
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "a second SIGTERM stops it at once");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its log, written to a file, is plain text: no terminal colour codes.
    let log = std::fs::read_to_string(dir.join("log")).unwrap();
    assert!(log.contains("session started"), "{log}");
    assert!(log.contains("open-files limit"), "the open-files limit is logged at start: {log}");
    assert!(!log.contains('\u{1b}'), "colour codes in a log file: {log}");
    let _ = std::fs::remove_dir_all(&dir);
}
