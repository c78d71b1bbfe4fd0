//! Pooled server connections, against real PostgreSQL servers: what tells pools apart (the
//! pool key) and what a session sets on each connection it takes instead.

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use sqlswitch_tests::client::connect_str;
use sqlswitch_tests::pg::{Topology, APP};
use sqlswitch_tests::pg_raw::{parameter_statuses, raw_session_with, read_until};
use sqlswitch_tests::proxy::{self, start_text};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

/// What the server says of the session's own connection: its application name, as the
/// setting and as `pg_stat_activity` shows it to the server's operator.
const SEEN: &str = "SELECT current_setting('application_name') || '|' || application_name \
                    FROM pg_stat_activity WHERE pid = pg_backend_pid()";

/// Idle connections the daemon's pools hold, over every backend of its first cluster.
fn idle(daemon: &sqlswitch::Daemon) -> u64 {
    let status = daemon.control.status();
    let backends = status["clusters"][0]["backends"].as_array().cloned().unwrap_or_default();
    backends.iter().filter_map(|b| b["idle_connections"].as_u64()).sum()
}

/// Clients that differ only in their application name share pooled connections (the name is
/// not part of the pool key): each session sets its own name on every connection it takes,
/// sees it (the setting, and `pg_stat_activity` for the server's operator), is welcomed with
/// it, and a `DISCARD ALL` returns to it, as directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_names_are_session_state_not_pools() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::shared();
    let text = proxy::config_text(topo, "app", "127.0.0.1:0", "127.0.0.1:0", None, "");
    let daemon = start_text(&text).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    for i in 0..12 {
        let name = format!("worker {i}'s");
        let client =
            connect_str(&format!("{} application_name='worker {i}\\'s'", proxy::conn_str(port, APP))).await.unwrap();
        let on_replica: String = client.query_one(SEEN, &[]).await.unwrap().get(0);
        assert_eq!(on_replica, format!("{name}|{name}"), "a read, on a replica's pooled connection");
        client.batch_execute("BEGIN").await.unwrap();
        let on_primary: String = client.query_one(SEEN, &[]).await.unwrap().get(0);
        client.batch_execute("COMMIT").await.unwrap();
        assert_eq!(on_primary, format!("{name}|{name}"), "in a transaction, on the primary's");
        drop(client);
        proxy::released(&daemon).await;
        // One pool per backend and user: not one per client.
        assert!(idle(&daemon) <= 3, "{} idle connections after {} clients of other names", idle(&daemon), i + 1);
    }

    // Welcomed with its own name; SET changes it; DISCARD ALL returns to it.
    let (mut s, mut buf, welcome) = raw_session_with(port, &[("application_name", "raw one")]).await;
    let given = parameter_statuses(&welcome);
    assert!(given.contains(&("application_name".into(), "raw one".into())), "welcomed with {given:?}");
    let ask = |sql: &str| {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).unwrap();
        out
    };
    for (sql, expected) in [
        ("SET application_name = 'changed'", None),
        (SEEN, Some("changed|changed")),
        ("DISCARD ALL", None),
        (SEEN, Some("raw one|raw one")),
        ("RESET ALL", None),
        (SEEN, Some("raw one|raw one")),
    ] {
        s.write_all(&ask(sql)).await.unwrap();
        let got = read_until(&mut s, &mut buf, |m| matches!(m, Message::ReadyForQuery(_))).await;
        assert!(!got.iter().any(|m| matches!(m, Message::ErrorResponse(_))), "{sql}: an error");
        let row = got.iter().find_map(|m| match m {
            Message::DataRow(r) => {
                let range = r.ranges().next().ok().flatten().flatten()?;
                Some(String::from_utf8_lossy(&r.buffer()[range]).into_owned())
            }
            _ => None,
        });
        assert_eq!(row.as_deref(), expected, "{sql}");
    }
}

/// Under `max_backend_connections`, a session that finds every connection to the primary in
/// use waits for one (counted in `status` and in the metrics) and goes on when one is given
/// back; one that waits `connect_timeout` in vain is refused with 53300, naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backend_makes_sessions_wait_then_refuses_with_53300() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::shared();
    let extra = "max_backend_connections = 3\nconnect_timeout = \"2s\"";
    let text = proxy::config_text(topo, "app", "127.0.0.1:0", "127.0.0.1:0", None, extra);
    let daemon = start_text(&text).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let primary = |key: &str| daemon.control.status()["clusters"][0]["backends"][0][key].as_u64().unwrap_or(0);
    proxy::eventually(10, "the monitor holds its connection to the primary", || primary("open_connections") >= 1).await;
    let monitor = primary("open_connections");
    // Sessions in a transaction hold a primary connection each, up to the limit.
    let mut holders = Vec::new();
    for _ in monitor..3 {
        let c = connect_str(&proxy::conn_str(port, APP)).await.unwrap();
        c.batch_execute("BEGIN; SELECT 1").await.unwrap();
        holders.push(c);
    }
    assert_eq!(primary("open_connections"), 3);
    // The next one waits for room (its login needs a primary connection).
    let waiter = tokio::spawn(async move {
        let c = connect_str(&proxy::conn_str(port, APP)).await?;
        c.query_one("SELECT 1", &[]).await.map(|_| c)
    });
    proxy::eventually(5, "a session waits for room", || primary("waiting_clients") == 1).await;
    let metrics = daemon.metrics.render();
    assert!(metrics.contains("sqlswitch_backend_waiting_clients{cluster=\"app\",backend=\"primary\"} 1"), "{metrics}");
    drop(holders.pop());
    let served = waiter.await.unwrap().expect("served once a session gave its connection back");
    assert_eq!(primary("waiting_clients"), 0);
    let metrics = daemon.metrics.render();
    assert!(
        metrics.contains("sqlswitch_backend_wait_seconds_count{cluster=\"app\",backend=\"primary\"} 1"),
        "{metrics}"
    );

    // Every connection stays in use: refused after connect_timeout, with 53300.
    served.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let started = std::time::Instant::now();
    let err = connect_str(&proxy::conn_str(port, APP)).await.expect_err("no room within connect_timeout");
    let db = err.as_db_error().unwrap_or_else(|| panic!("a server error: {err:?}"));
    assert_eq!(db.code(), &tokio_postgres::error::SqlState::TOO_MANY_CONNECTIONS, "{db:?}");
    assert!(db.message().contains("max_backend_connections"), "{}", db.message());
    assert!(started.elapsed() >= std::time::Duration::from_secs(2), "it waited connect_timeout");
    let metrics = daemon.metrics.render();
    assert!(
        metrics.contains("sqlswitch_backend_wait_timeouts_total{cluster=\"app\",backend=\"primary\"} 1"),
        "{metrics}"
    );
    assert_eq!(primary("waiting_clients"), 0);
}
