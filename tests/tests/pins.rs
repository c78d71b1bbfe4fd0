//! Transaction pooling and the state that keeps a session on its server connection, against
//! real PostgreSQL servers: an advisory lock and a `LISTEN` stay with their session across its
//! transactions while other clients churn the pool, and the connection goes back to the pool
//! once they are released.

use sqlswitch_tests::client::connect_str;
use sqlswitch_tests::pg::{Topology, APP};
use sqlswitch_tests::proxy::{self, start_text};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

/// Two server connections per key, and a one-second wait for one.
const POOLED: &str = "pool_mode = \"transaction\"\npool_size = 2\nconnect_timeout = \"1s\"";

async fn start() -> (sqlswitch::Daemon, String) {
    let text = proxy::config_text(Topology::shared(), "app", "127.0.0.1:0", "127.0.0.1:0", None, POOLED);
    let daemon = start_text(&text).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    (daemon, proxy::conn_str(port, APP))
}

async fn text(client: &tokio_postgres::Client, sql: &str) -> String {
    let rows = client.simple_query(sql).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default()
}

/// Whether the pool has a connection for one more transaction while another client keeps one
/// in an open transaction: with `pool_size = 2`, only if no pinned session holds the other.
/// (Logging in takes none for longer than the login.)
async fn room_for_one_more(url: &str) -> bool {
    let holder = connect_str(url).await.unwrap();
    let probe = connect_str(url).await.unwrap();
    holder.batch_execute("BEGIN; INSERT INTO items (note) VALUES ('holds')").await.unwrap();
    let got = probe.batch_execute("INSERT INTO items (note) VALUES ('probe')").await;
    holder.batch_execute("ROLLBACK").await.unwrap();
    match got {
        Ok(()) => true,
        Err(e) => {
            assert_eq!(e.code().map(|c| c.code()), Some("53300"), "{e:?}");
            false
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisory_lock_keeps_its_connection_until_unlocked() {
    let _serial = SERIAL.lock().await;
    let (_daemon, url) = start().await;
    let a = connect_str(&url).await.unwrap();
    let b = connect_str(&url).await.unwrap();
    assert!(room_for_one_more(&url).await, "nothing pinned yet");
    let pid = text(&a, "SELECT pg_advisory_lock(4242)::text || pg_backend_pid()").await;
    for round in 0..20 {
        b.batch_execute(&format!("INSERT INTO items (note) VALUES ('churn {round}')")).await.unwrap();
        let holder = text(&b, "SELECT pid::text FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242").await;
        assert_eq!(holder, pid, "round {round}: the lock is held by the session's connection");
        assert_eq!(text(&a, "SELECT pg_backend_pid()::text").await, pid, "round {round}: the session moved");
        let free: bool = b.query_one("SELECT pg_try_advisory_lock(4242)", &[]).await.unwrap().get(0);
        assert!(!free, "round {round}: another session took the lock");
    }
    assert!(!room_for_one_more(&url).await, "the locked session holds its connection");
    // A second lock and one unlock: still held.
    text(&a, "SELECT pg_advisory_lock(4243)").await;
    assert_eq!(text(&a, "SELECT pg_advisory_unlock(4242)::text").await, "true");
    assert!(!room_for_one_more(&url).await, "one lock left: still pinned");
    assert_eq!(text(&a, "SELECT pg_backend_pid()::text").await, pid);
    assert_eq!(text(&a, "SELECT pg_advisory_unlock_all()::text").await, "");
    assert!(room_for_one_more(&url).await, "released: the connection went back to the pool");
    let free: bool = b.query_one("SELECT pg_try_advisory_lock(4242)", &[]).await.unwrap().get(0);
    assert!(free, "no connection kept the lock");
    b.batch_execute("SELECT pg_advisory_unlock_all()").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listen_hears_every_notify_until_unlisten() {
    let _serial = SERIAL.lock().await;
    let (_daemon, url) = start().await;
    let (a, mut heard) = listening_client(&url).await;
    a.batch_execute("LISTEN pins_news").await.unwrap();
    let b = connect_str(&url).await.unwrap();
    for round in 0..20 {
        b.batch_execute(&format!("INSERT INTO items (note) VALUES ('news {round}'); NOTIFY pins_news, '{round}'"))
            .await
            .unwrap();
        a.batch_execute("SELECT 1").await.unwrap();
        let payload = tokio::time::timeout(std::time::Duration::from_secs(10), heard.recv()).await;
        assert_eq!(payload.ok().flatten(), Some(round.to_string()), "round {round}: the notification");
    }
    assert!(!room_for_one_more(&url).await, "the listening session holds its connection");
    a.batch_execute("UNLISTEN pins_news").await.unwrap();
    assert!(room_for_one_more(&url).await, "UNLISTEN gave the connection back");
    b.batch_execute("NOTIFY pins_news, 'late'").await.unwrap();
    a.batch_execute("SELECT 1").await.unwrap();
    assert!(heard.try_recv().is_err(), "nothing heard after UNLISTEN");
}

/// A tokio-postgres client whose notifications' payloads come out of the receiver.
async fn listening_client(url: &str) -> (tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use futures::StreamExt;
    let (client, mut conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    (client, rx)
}
