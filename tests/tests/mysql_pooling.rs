//! Transaction pooling for MySQL/MariaDB clusters, against real MariaDB servers: sessions share
//! few server connections and keep what they see.

use mysql_async::prelude::*;
use mysql_async::{Conn, Opts};
use sqlswitch_tests::mysql::Topology;
use sqlswitch_tests::pg::{APP, DATABASE};
use sqlswitch_tests::proxy::{mysql_url, start_mysql};

async fn connect(port: u16) -> Conn {
    Conn::new(Opts::from_url(&mysql_url(port, APP)).expect("url")).await.expect("a session")
}

/// Twelve sessions over `pool_size = 2` (each transaction on another connection whenever the
/// pool can give one, `pool_shuffle`) keep their settings, user variables and prepared
/// statements across 20 transactions while the others churn the pool; `LAST_INSERT_ID()` in
/// the statement after an insert answers the session's own id; the pool never holds more
/// than its size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_keeps_each_mysql_sessions_state() {
    let topo = Topology::shared();
    let extra = "pool_mode = \"transaction\"\npool_size = 2\npool_shuffle = true\nconnect_timeout = \"10s\"";
    let daemon = start_mysql(topo, extra).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let mut sessions = Vec::new();
    for i in 0..12i64 {
        let mut c = connect(port).await;
        c.query_drop(format!("SET time_zone = '+0{}:00'", i % 10)).await.unwrap();
        c.query_drop(format!("SET @mine = {i}")).await.unwrap();
        sessions.push((i, c));
    }
    let work = sessions.iter_mut().map(|(i, c)| async move {
        let i = *i;
        for round in 0..20 {
            let zone: String = c.query_first("SELECT @@time_zone").await?.unwrap_or_default();
            assert_eq!(zone, format!("+0{}:00", i % 10), "session {i} round {round}: its setting");
            let mine: Option<i64> = c.exec_first("SELECT @mine + ?", (0i64,)).await?;
            assert_eq!(mine, Some(i), "session {i} round {round}: its variable, by a prepared statement");
            c.query_drop(format!("INSERT INTO items (note) VALUES ('mysql pooled {i} {round}')")).await?;
            let id: Option<u64> = c.query_first("SELECT LAST_INSERT_ID()").await?;
            let note: Option<String> = c.exec_first("SELECT note FROM items WHERE id = ?", (id,)).await?;
            assert_eq!(note, Some(format!("mysql pooled {i} {round}")), "session {i}: its own insert id");
        }
        Ok::<_, mysql_async::Error>(())
    });
    for done in futures::future::join_all(work).await {
        done.expect("every session's transactions ran");
    }
    let status = daemon.control.status();
    for backend in status["clusters"][0]["backends"].as_array().unwrap() {
        // The key's two, and the monitor's.
        assert!(backend["open_connections"].as_u64().unwrap_or(99) <= 3, "{backend}");
    }
    for (_, c) in sessions {
        c.disconnect().await.unwrap();
    }
}

/// Whether the pool (`pool_size = 2`) has a connection for one more transaction while another
/// client keeps one in an open transaction: only if no pinned session holds the other.
async fn room_for_one_more(port: u16) -> bool {
    let mut holder = connect(port).await;
    let mut probe = connect(port).await;
    holder.query_drop("BEGIN").await.unwrap();
    holder.query_drop("INSERT INTO items (note) VALUES ('holds')").await.unwrap();
    let got = probe.query_drop("INSERT INTO items (note) VALUES ('probe')").await;
    holder.query_drop("ROLLBACK").await.unwrap();
    match got {
        Ok(()) => true,
        Err(mysql_async::Error::Server(e)) if e.code == 1040 => false,
        Err(e) => panic!("not a pool refusal: {e}"),
    }
}

/// A `GET_LOCK()` lock and `LOCK TABLES` keep the session on its connection across its
/// transactions while another client churns the pool; `RELEASE_ALL_LOCKS()` and
/// `UNLOCK TABLES` give it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_locks_keep_their_connection_until_released() {
    let topo = Topology::shared();
    let extra = "pool_mode = \"transaction\"\npool_size = 2\nconnect_timeout = \"1s\"";
    let daemon = start_mysql(topo, extra).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let mut a = connect(port).await;
    let mut b = connect(port).await;
    assert!(room_for_one_more(port).await, "nothing pinned yet");
    let got: Option<i64> = a.query_first("SELECT GET_LOCK('sqlswitch_pins', 5)").await.unwrap();
    assert_eq!(got, Some(1));
    for round in 0..20 {
        b.query_drop(format!("INSERT INTO items (note) VALUES ('lock churn {round}')")).await.unwrap();
        let mine: Option<i64> = a.query_first("SELECT IS_USED_LOCK('sqlswitch_pins') = CONNECTION_ID()").await.unwrap();
        assert_eq!(mine, Some(1), "round {round}: the lock is on the session's connection");
        let free: Option<i64> = b.query_first("SELECT IS_FREE_LOCK('sqlswitch_pins')").await.unwrap();
        assert_eq!(free, Some(0), "round {round}");
    }
    assert!(!room_for_one_more(port).await, "the locking session holds its connection");
    a.query_drop("SELECT RELEASE_LOCK('nothing held')").await.unwrap();
    assert!(!room_for_one_more(port).await, "releasing one name says nothing of the others");
    a.query_drop("SELECT RELEASE_ALL_LOCKS()").await.unwrap();
    assert!(room_for_one_more(port).await, "released: the connection went back");

    // A table of its own: the probe's writes to `items` must not wait for the lock.
    a.query_drop("CREATE TABLE IF NOT EXISTS pins_locked (n int)").await.unwrap();
    a.query_drop("LOCK TABLES pins_locked READ").await.unwrap();
    let n: Option<i64> = a.query_first("SELECT count(*) FROM pins_locked").await.unwrap();
    assert_eq!(n, Some(0));
    assert!(!room_for_one_more(port).await, "LOCK TABLES holds the connection");
    a.query_drop("UNLOCK TABLES").await.unwrap();
    assert!(room_for_one_more(port).await, "UNLOCK TABLES gave it back");
    a.disconnect().await.unwrap();
    b.disconnect().await.unwrap();
}

/// Read-only transactions give their connection back as it is, with the statements prepared
/// on it (all on the primary here: reads in a transaction run there). A session with state of
/// its own (another database) never executes a statement another session left there (its
/// text names another table), and what else the last session left does not reach the next:
/// its last insert id (carried to the connection for its own read), its user variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transactions_keep_statements_and_nothing_else() {
    let topo = Topology::shared();
    let setup = format!(
        "CREATE DATABASE IF NOT EXISTS pooling_other; CREATE TABLE IF NOT EXISTS pooling_other.kept (n int); \
         TRUNCATE pooling_other.kept; INSERT INTO pooling_other.kept VALUES (1), (2); \
         GRANT ALL ON pooling_other.* TO '{}'@'%'; CREATE TABLE IF NOT EXISTS {DATABASE}.kept (n int); \
         TRUNCATE {DATABASE}.kept; INSERT INTO {DATABASE}.kept VALUES (1)",
        APP.0
    );
    topo.sql(topo.primary(), &setup).unwrap();
    let extra = "pool_mode = \"transaction\"\npool_size = 1\nconnect_timeout = \"10s\"";
    let daemon = start_mysql(topo, extra).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let (mut a, mut b) = (connect(port).await, connect(port).await);
    b.query_drop("USE pooling_other").await.unwrap();
    let count = "SELECT count(*) FROM kept";
    for round in 0..5 {
        for (c, expected, whose) in [(&mut a, 1, "the login's database"), (&mut b, 2, "its own database")] {
            c.query_drop("BEGIN").await.unwrap();
            let n: Option<i64> = c.exec_first(count, ()).await.unwrap();
            c.query_drop("COMMIT").await.unwrap();
            assert_eq!(n, Some(expected), "round {round}: {whose}");
        }
    }
    a.query_drop("INSERT INTO items (note) VALUES ('kept insert')").await.unwrap();
    a.query_drop("BEGIN").await.unwrap();
    let own: Option<u64> = a.query_first("SELECT LAST_INSERT_ID()").await.unwrap();
    a.query_drop("COMMIT").await.unwrap();
    assert!(own.unwrap_or(0) > 0, "the session's own insert id");
    b.query_drop("SET @leak = 1").await.unwrap();
    let mut c = connect(port).await;
    c.query_drop("BEGIN").await.unwrap();
    let (id, var): (u64, Option<i64>) = c.query_first("SELECT LAST_INSERT_ID(), @leak").await.unwrap().unwrap();
    let db: Option<String> = c.query_first("SELECT DATABASE()").await.unwrap();
    assert_eq!(db.as_deref(), Some(DATABASE), "its login's database");
    c.query_drop("COMMIT").await.unwrap();
    assert_eq!((id, var), (0, None), "nothing of another session's");
    for conn in [a, b, c] {
        conn.disconnect().await.unwrap();
    }
}
