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

/// sqlswitch in front of the shared servers, with `extra` cluster keys, and its read-write port.
async fn start_with(extra: &str) -> (sqlswitch::Daemon, u16) {
    let text = proxy::config_text(Topology::shared(), "app", "127.0.0.1:0", "127.0.0.1:0", None, extra);
    let daemon = start_text(&text).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    (daemon, port)
}

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
    let (daemon, port) = start_with("").await;
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
    let extra = "max_backend_connections = 3\nconnect_timeout = \"2s\"";
    let (daemon, port) = start_with(extra).await;
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

/// The first value of a simple query's first row (the simple protocol: no named statement, so
/// the session does not keep a connection for one).
async fn value(client: &tokio_postgres::Client, sql: &str) -> String {
    let messages = client.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or_default().to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// Transaction pooling: twelve sessions, all open at once, each writing and reading ten
/// times, over three primary connections (`max_backend_connections = 4`, the monitor's one
/// among them): each gives its connection back between transactions. In session pooling the
/// fourth session would wait for a connection none gives back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_serves_more_sessions_than_connections() {
    let _serial = SERIAL.lock().await;
    let extra = "pool_mode = \"transaction\"\nmax_backend_connections = 4\nconnect_timeout = \"5s\"";
    let (daemon, port) = start_with(extra).await;
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(connect_str(&proxy::conn_str(port, APP)).await.expect("a session while others are open"));
    }
    let work = clients.iter().enumerate().map(|(i, c)| async move {
        for round in 0..10 {
            c.batch_execute(&format!("INSERT INTO items (note) VALUES ('pooled {i} {round}')")).await?;
            c.simple_query("SELECT count(*) FROM items").await?;
        }
        Ok::<_, tokio_postgres::Error>(())
    });
    for result in futures::future::join_all(work).await {
        result.expect("every session's transactions ran");
    }
    let status = daemon.control.status();
    let primary = &status["clusters"][0]["backends"][0];
    assert!(primary["open_connections"].as_u64().unwrap_or(99) <= 4, "{primary}");
    let written = value(&clients[0], "SELECT count(*) FROM items WHERE note LIKE 'pooled %'").await;
    assert!(written.parse::<u32>().unwrap() >= 120, "every write landed: {written}");
}

/// Transaction pooling keeps what a session sees: its settings and SQL prepared statements on
/// whatever connection runs its next transaction, never another session's; `currval` right
/// after its own insert; a temporary table, which keeps the session on its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_keeps_each_sessions_state() {
    let _serial = SERIAL.lock().await;
    let extra = "pool_mode = \"transaction\"\nmax_backend_connections = 3\nconnect_timeout = \"5s\"";
    let (_daemon, port) = start_with(extra).await;
    let a = connect_str(&proxy::conn_str(port, APP)).await.unwrap();
    let b = connect_str(&proxy::conn_str(port, APP)).await.unwrap();
    let default_zone = value(&b, "SHOW TimeZone").await;
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'; PREPARE answer AS SELECT 42").await.unwrap();
    for round in 0..20 {
        // The other session churns the pool between each of the first one's transactions.
        b.batch_execute(&format!("INSERT INTO items (note) VALUES ('churn {round}')")).await.unwrap();
        assert_eq!(value(&b, "SHOW TimeZone").await, default_zone, "round {round}: another's setting leaked");
        assert_eq!(value(&a, "SHOW TimeZone").await, "Asia/Tokyo", "round {round}: the setting was lost");
        assert_eq!(value(&a, "EXECUTE answer").await, "42", "round {round}: the prepared statement was lost");
        let mine = value(&a, &format!("INSERT INTO items (note) VALUES ('mine {round}') RETURNING id")).await;
        b.batch_execute("INSERT INTO items (note) VALUES ('between')").await.unwrap();
        assert_eq!(
            value(&a, "SELECT currval('items_id_seq')").await,
            mine,
            "round {round}: currval answered another's"
        );
    }
    // A temporary table keeps the session on its connection.
    a.batch_execute("CREATE TEMP TABLE scratch (n int); INSERT INTO scratch VALUES (1)").await.unwrap();
    for round in 0..5 {
        b.batch_execute("SELECT 1").await.unwrap();
        assert_eq!(value(&a, "SELECT count(*) FROM scratch").await, "1", "round {round}");
    }
    // DISCARD ALL drops it, and the session pools again, its next statements on any connection.
    a.batch_execute("DISCARD ALL").await.unwrap();
    let gone = a.simple_query("SELECT count(*) FROM scratch").await.unwrap_err();
    assert_eq!(gone.code().map(|c| c.code()), Some("42P01"), "{gone:?}");
    for round in 0..5 {
        b.batch_execute("INSERT INTO items (note) VALUES ('churn again')").await.unwrap();
        assert_eq!(value(&a, "SHOW TimeZone").await, default_zone, "round {round}: back to the login's");
    }
}

/// Runs the named statement `name` on a raw session, parsing it first from `sql` when given:
/// the text of its first value, or the error's SQLSTATE.
async fn run_named(s: &mut tokio::net::TcpStream, buf: &mut BytesMut, name: &str, sql: Option<&str>) -> String {
    let mut out = BytesMut::new();
    if let Some(sql) = sql {
        frontend::parse(name, sql, [], &mut out).unwrap();
    }
    let none = |_: (), _: &mut BytesMut| Ok(postgres_protocol::IsNull::Yes);
    frontend::bind("", name, [], [], none, [], &mut out).map_err(|_| "bind").unwrap();
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    s.write_all(&out).await.unwrap();
    let got = read_until(s, buf, |m| matches!(m, Message::ReadyForQuery(_))).await;
    if let Some(code) = sqlswitch_tests::pg_raw::error_code(&got) {
        return code;
    }
    let row = got.iter().find_map(|m| match m {
        Message::DataRow(row) => row.ranges().next().ok().flatten().flatten().map(|r| row.buffer()[r].to_vec()),
        _ => None,
    });
    String::from_utf8(row.expect("a row")).unwrap()
}

/// Transaction pooling with named (protocol) statements: a session's statements follow it to
/// whatever connection runs its next transaction, and two sessions that give one name to
/// different texts, sharing a single connection (`pool_size = 1`), each run their own, 20
/// times over, while tokio-postgres clients (a statement name per statement, the same text)
/// churn the same pool. None of them holds a connection between transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_follow_their_session_and_never_collide() {
    let _serial = SERIAL.lock().await;
    let extra = "pool_mode = \"transaction\"\npool_size = 1\nconnect_timeout = \"5s\"";
    let (daemon, port) = start_with(extra).await;
    let (mut a, mut abuf) = sqlswitch_tests::pg_raw::raw_session(port).await;
    let (mut b, mut bbuf) = sqlswitch_tests::pg_raw::raw_session(port).await;
    let url = proxy::conn_str(port, APP);
    let churn: Vec<_> =
        futures::future::join_all((0..4).map(|_| connect_str(&url))).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(run_named(&mut a, &mut abuf, "dup", Some("SELECT 'a'")).await, "a");
    assert_eq!(run_named(&mut b, &mut bbuf, "dup", Some("SELECT 'b'")).await, "b");
    for round in 0..20 {
        let churned = churn.iter().map(|c| async move {
            let stmt = c.prepare("SELECT count(*) FROM items WHERE id > $1").await?;
            c.query_one(&stmt, &[&i64::from(round)]).await.map(drop)
        });
        for done in futures::future::join_all(churned).await {
            done.expect("a churning client's prepared statement ran");
        }
        assert_eq!(run_named(&mut a, &mut abuf, "dup", None).await, "a", "round {round}");
        assert_eq!(run_named(&mut b, &mut bbuf, "dup", None).await, "b", "round {round}");
    }
    let status = daemon.control.status();
    for backend in status["clusters"][0]["backends"].as_array().unwrap() {
        // One for each of the two keys (the raw sessions', tokio-postgres's startup
        // parameters), and the monitor's.
        assert!(backend["open_connections"].as_u64().unwrap_or(99) <= 3, "{backend}");
    }
}

/// `pool_size` bounds a key's server connections: sixteen writers, each keeping its
/// connection after a write only while nobody waits, take turns on two; a session that holds
/// a transaction open makes the next one wait, then refuses it with 53300 naming the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_makes_writers_take_turns_and_bounds_the_wait() {
    let _serial = SERIAL.lock().await;
    let extra = "pool_mode = \"transaction\"\npool_size = 2\nconnect_timeout = \"1s\"";
    let (daemon, port) = start_with(extra).await;
    let url = proxy::conn_str(port, APP);
    let clients: Vec<_> =
        futures::future::join_all((0..16).map(|_| connect_str(&url))).await.into_iter().map(Result::unwrap).collect();
    let work = clients.iter().enumerate().map(|(i, c)| async move {
        for round in 0..10 {
            c.batch_execute(&format!("INSERT INTO items (note) VALUES ('turns {i} {round}')")).await?;
        }
        Ok::<_, tokio_postgres::Error>(())
    });
    for result in futures::future::join_all(work).await {
        result.expect("every writer's transactions ran");
    }
    let written = value(&clients[0], "SELECT count(*) FROM items WHERE note LIKE 'turns %'").await;
    assert!(written.parse::<u32>().unwrap() >= 160, "every write landed: {written}");
    let primary = &daemon.control.status()["clusters"][0]["backends"][0];
    assert!(primary["open_connections"].as_u64().unwrap_or(99) <= 3, "two and the monitor's: {primary}");

    clients[0].batch_execute("BEGIN; INSERT INTO items (note) VALUES ('held')").await.unwrap();
    clients[1].batch_execute("BEGIN; INSERT INTO items (note) VALUES ('held too')").await.unwrap();
    let refused = clients[2].batch_execute("INSERT INTO items (note) VALUES ('waits')").await.unwrap_err();
    let db = refused.as_db_error().expect("an error from the proxy");
    assert_eq!(db.code().code(), "53300", "{db}");
    assert!(db.message().contains("pool_size"), "{db}");
    clients[0].batch_execute("ROLLBACK").await.unwrap();
    clients[1].batch_execute("ROLLBACK").await.unwrap();
    clients[2].batch_execute("INSERT INTO items (note) VALUES ('after')").await.expect("room again");
}

/// Transaction pooling, between transactions: a batch that only prepares (libpq's
/// `PQprepare`: Parse and Sync) is answered at once, the statement prepared where it is first
/// bound; a statement that does not parse gets the server's own error there (42601).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_alone_is_answered_and_prepared_where_first_bound() {
    let _serial = SERIAL.lock().await;
    let (_daemon, port) = start_with("pool_mode = \"transaction\"\npool_size = 1").await;
    let (mut s, mut buf) = sqlswitch_tests::pg_raw::raw_session(port).await;
    for (name, sql) in [("seven", "SELECT 7"), ("typo", "SELEC 7")] {
        let mut out = BytesMut::new();
        frontend::parse(name, sql, [], &mut out).unwrap();
        frontend::sync(&mut out);
        s.write_all(&out).await.unwrap();
        let got = read_until(&mut s, &mut buf, |m| matches!(m, Message::ReadyForQuery(_))).await;
        assert!(matches!(got.first(), Some(Message::ParseComplete)), "{name}: answered at once");
    }
    assert_eq!(run_named(&mut s, &mut buf, "seven", None).await, "7");
    assert_eq!(run_named(&mut s, &mut buf, "typo", None).await, "42601", "the server's error, at first use");
    assert_eq!(run_named(&mut s, &mut buf, "seven", None).await, "7", "the session goes on");
}

/// Transaction pooling and a schema change under a prepared statement (on the primary: `FOR
/// UPDATE`): a batch that describes its portal (libpq's `PQexecPrepared`) and meets 0A000
/// "cached plan must not change result type" is prepared again and run again, the client
/// seeing the new columns; one that does not describe (the client relies on the columns it
/// prepared) gets the server's 0A000, as directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_under_a_prepared_statement_prepares_it_again() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::shared();
    let admin = |sql: &str| topo.psql_admin(topo.primary(), sql, sqlswitch_tests::pg::DATABASE).unwrap();
    admin("DROP TABLE IF EXISTS replan_t; CREATE TABLE replan_t (a int); INSERT INTO replan_t VALUES (1); GRANT SELECT, UPDATE ON replan_t TO app");
    let (_daemon, port) = start_with("pool_mode = \"transaction\"\npool_size = 1").await;
    let (mut s, mut buf) = sqlswitch_tests::pg_raw::raw_session(port).await;
    let run = |describe: bool, parse: bool| {
        let mut out = BytesMut::new();
        if parse {
            frontend::parse("wide", "SELECT * FROM replan_t FOR UPDATE", [], &mut out).unwrap();
        }
        let none = |_: (), _: &mut BytesMut| Ok(postgres_protocol::IsNull::Yes);
        frontend::bind("", "wide", [], [], none, [], &mut out).map_err(|_| "bind").unwrap();
        if describe {
            frontend::describe(b'P', "", &mut out).unwrap();
        }
        frontend::execute("", 0, &mut out).unwrap();
        frontend::sync(&mut out);
        out
    };
    let columns = |got: &[Message]| {
        got.iter().find_map(|m| match m {
            Message::RowDescription(d) => Some(d.fields().count().unwrap()),
            _ => None,
        })
    };
    s.write_all(&run(true, true)).await.unwrap();
    let got = read_until(&mut s, &mut buf, |m| matches!(m, Message::ReadyForQuery(_))).await;
    assert_eq!(columns(&got), Some(1));
    admin("ALTER TABLE replan_t ADD COLUMN b int DEFAULT 2");
    s.write_all(&run(true, false)).await.unwrap();
    let got = read_until(&mut s, &mut buf, |m| matches!(m, Message::ReadyForQuery(_))).await;
    assert_eq!(sqlswitch_tests::pg_raw::error_code(&got), None, "prepared again and run again");
    assert_eq!(columns(&got), Some(2), "the client is told the new columns");
    admin("ALTER TABLE replan_t ADD COLUMN c int DEFAULT 3");
    s.write_all(&run(false, false)).await.unwrap();
    let got = read_until(&mut s, &mut buf, |m| matches!(m, Message::ReadyForQuery(_))).await;
    assert_eq!(sqlswitch_tests::pg_raw::error_code(&got).as_deref(), Some("0A000"), "as directly");
    admin("DROP TABLE replan_t");
}
