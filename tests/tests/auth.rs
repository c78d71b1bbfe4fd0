//! Logins with no password in the config, against real PostgreSQL servers: SCRAM passthrough.

use sqlswitch_tests::client::{connect, connect_str};
use sqlswitch_tests::pg::{Topology, DATABASE};
use sqlswitch_tests::proxy::{self, eventually, start_text};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

/// The `auth_query` function the README gives: the monitor role reads verifiers through it
/// without reading `pg_authid` itself.
const LOOKUP_FUNCTION: &str = "CREATE OR REPLACE FUNCTION public.sqlswitch_auth(name text) RETURNS text \
     LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS \
     $$ SELECT rolpassword FROM pg_authid WHERE rolname = name AND rolcanlogin $$; \
     REVOKE ALL ON FUNCTION public.sqlswitch_auth(text) FROM public; \
     GRANT EXECUTE ON FUNCTION public.sqlswitch_auth(text) TO monitor";

/// A role made for one test, with `password`, its `pg_authid` verifier read back once every
/// replica has it.
fn role_with_verifier(topo: &Topology, role: &str, password: &str) -> String {
    let admin = |node, sql: &str| topo.psql_admin(node, sql, "postgres").unwrap();
    admin(
        topo.primary(),
        &format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD '{password}'; \
             GRANT CONNECT ON DATABASE {DATABASE} TO {role}"
        ),
    );
    topo.psql_admin(
        topo.primary(),
        &format!("GRANT SELECT, INSERT ON items TO {role}; GRANT USAGE ON SEQUENCE items_id_seq TO {role}"),
        DATABASE,
    )
    .unwrap();
    let read = format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'");
    let verifier = admin(topo.primary(), &read).trim().to_owned();
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    verifier
}

/// A user whose config keeps the server's own SCRAM verifier (`pg_authid.rolpassword`), not a
/// password: the client logs in with its password; sqlswitch checks it against the verifier
/// and logs in to the primary and the replicas with the keys the client proved it holds. A
/// wrong password is refused; a server whose verifier changed since (a new password, a new
/// salt) refuses the passthrough, and the client is told why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scram_verifier_in_the_config_logs_in_by_passthrough() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::shared();
    let (role, password) = ("passthrough_user", "pass-through-not-stored");
    let verifier = role_with_verifier(topo, role, password);
    let has = format!("SELECT count(*) FROM pg_authid WHERE rolpassword = '{verifier}'");
    on_every_replica(topo, "the replicas have the role", &has).await;
    let text = proxy::config_text(topo, "app", "127.0.0.1:0", "127.0.0.1:0", None, "")
        + &format!("\n[[cluster.user]]\nname = \"{role}\"\npassword = \"{verifier}\"\n");
    assert!(!text.contains(password), "no password in the config");
    let daemon = start_text(&text).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();

    let client = connect(port, (role, password)).await.expect("the password, checked against the verifier");
    let on_replica: String =
        client.query_one("SELECT current_user || '@' || pg_is_in_recovery()", &[]).await.unwrap().get(0);
    assert_eq!(on_replica, format!("{role}@true"), "a read on a replica, logged in as the client");
    let written: String = client
        .query_one("INSERT INTO items (note) VALUES ('by passthrough') RETURNING current_user::text", &[])
        .await
        .expect("a write on the primary")
        .get(0);
    assert_eq!(written, role);
    drop(client);

    let wrong = connect(port, (role, "not-the-password")).await.expect_err("a wrong password");
    assert_eq!(wrong.code(), Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD), "{wrong:?}");

    // The server's verifier changes (the same password, a new salt): the config's is stale. A
    // daemon with fresh pools must log in anew, and cannot: the client is told why.
    topo.psql_admin(topo.primary(), &format!("ALTER ROLE {role} PASSWORD '{password}'"), "postgres").unwrap();
    drop(daemon);
    let daemon = start_text(&text).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let stale = connect_str(&proxy::conn_str(port, (role, password))).await.expect_err("a stale verifier");
    let db = stale.as_db_error().unwrap_or_else(|| panic!("the server's words: {stale:?}"));
    assert!(db.message().contains("another verifier"), "{}", db.message());
    assert!(db.message().contains("pg_authid"), "it says what to do: {}", db.message());
}

/// `auth_user`: a role not in the config logs in with its own password; sqlswitch looks its
/// verifier up on the primary (here through a `SECURITY DEFINER` function the monitor may call,
/// as the README shows) and logs in by passthrough, on the replicas and the primary. A wrong
/// password and an unknown role are refused as the server refuses them (28P01).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_user_looks_up_users_not_in_the_config() {
    let _serial = SERIAL.lock().await;
    let topo = Topology::shared();
    let (role, password) = ("looked_up_user", "looked-up-not-stored");
    let verifier = role_with_verifier(topo, role, password);
    topo.psql_admin(topo.primary(), LOOKUP_FUNCTION, "postgres").unwrap();
    let has = format!("SELECT count(*) FROM pg_authid WHERE rolpassword = '{verifier}'");
    on_every_replica(topo, "the replicas have the role", &has).await;
    let extra = "auth_user = { user = \"monitor\", password = \"monitor\" }\n\
                 auth_query = \"SELECT public.sqlswitch_auth($1)\"";
    let text = proxy::config_text(topo, "app", "127.0.0.1:0", "127.0.0.1:0", None, extra);
    assert!(!text.contains(role) && !text.contains(password), "the user is not in the config");
    let daemon = start_text(&text).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();

    let client = connect(port, (role, password)).await.expect("a user looked up on the primary");
    let on_replica: String =
        client.query_one("SELECT current_user || '@' || pg_is_in_recovery()", &[]).await.unwrap().get(0);
    assert_eq!(on_replica, format!("{role}@true"), "a read on a replica, logged in by passthrough");
    let written: String = client
        .query_one("INSERT INTO items (note) VALUES ('looked up') RETURNING current_user::text", &[])
        .await
        .expect("a write on the primary")
        .get(0);
    assert_eq!(written, role);
    let wrong = connect(port, (role, "not-the-password")).await.expect_err("a wrong password");
    assert_eq!(wrong.code(), Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD), "{wrong:?}");
    let unknown = connect(port, ("nobody_at_all", "x")).await.expect_err("no such role");
    assert_eq!(unknown.code(), Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD), "{unknown:?}");
    // The configured users still log in with their own passwords.
    let app = connect(port, sqlswitch_tests::pg::APP).await.expect("a configured user");
    let one: i32 = app.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// A MariaDB user whose config keeps the server's stored `mysql_native_password` hash
/// (`*` and 40 hex digits), not a password: the client's scramble is checked against it, and
/// sqlswitch logs in to the primary and the replicas with the key the scramble proved. A wrong
/// password is refused with 1045.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_native_hash_in_the_config_logs_in_by_passthrough() {
    use mysql_async::prelude::Queryable;
    let _serial = SERIAL.lock().await;
    let topo = sqlswitch_tests::mysql::Topology::shared();
    let (user, password) = ("hashed_user", "hash-pass-word");
    topo.sql(
        topo.primary(),
        &format!(
            "DROP USER IF EXISTS '{user}'@'%'; CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'; \
             GRANT SELECT, INSERT ON {DATABASE}.* TO '{user}'@'%'"
        ),
    )
    .unwrap();
    let hash = topo.sql(topo.primary(), &format!("SELECT PASSWORD('{password}')")).unwrap().trim().to_owned();
    assert!(hash.starts_with('*') && hash.len() == 41, "{hash}");
    for replica in topo.replicas() {
        let has = format!("SELECT count(*) FROM mysql.user WHERE user = '{user}'");
        eventually(10, "the replicas have the user", || topo.sql(replica, &has).is_ok_and(|n| n.trim() == "1")).await;
    }
    let text = proxy::mysql_config_text(topo, "app", "")
        + &format!("\n[[cluster.user]]\nname = \"{user}\"\npassword = \"{hash}\"\n");
    assert!(!text.contains(password), "no password in the config");
    let daemon = start_text(&text).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let opts = mysql_async::Opts::from_url(&proxy::mysql_url(port, (user, password))).unwrap();
    let mut conn = mysql_async::Conn::new(opts).await.expect("the password, checked against the hash");
    let read: Option<(u32, String)> = conn.query_first("SELECT @@server_id, CURRENT_USER()").await.unwrap();
    let (server, who) = read.unwrap();
    assert!(server == 2 || server == 3, "a read on a replica (server {server})");
    assert!(who.starts_with(user), "{who}");
    conn.query_drop("INSERT INTO items (note) VALUES ('by passthrough')").await.expect("a write on the primary");
    let wrote: Option<u32> = conn.query_first("SELECT @@server_id FOR UPDATE").await.unwrap();
    assert_eq!(wrote, Some(1));
    conn.disconnect().await.unwrap();
    let wrong = mysql_async::Opts::from_url(&proxy::mysql_url(port, (user, "not-the-password"))).unwrap();
    let err = mysql_async::Conn::new(wrong).await.expect_err("a wrong password");
    assert!(matches!(err, mysql_async::Error::Server(ref e) if e.code == 1045), "{err:?}");
}

/// `auth_user` on MariaDB: a user absent from the config logs in with its password; sqlswitch
/// reads its `mysql_native_password` hash from `mysql.user` on the primary (the auth user may
/// only read that table) and logs in by passthrough. A wrong password and an unknown user get
/// 1045.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_user_looks_up_mariadb_users_not_in_the_config() {
    use mysql_async::prelude::Queryable;
    let _serial = SERIAL.lock().await;
    let topo = sqlswitch_tests::mysql::Topology::shared();
    let (user, password) = ("looked_up_my", "looked-up-my-pass");
    topo.sql(
        topo.primary(),
        &format!(
            "DROP USER IF EXISTS '{user}'@'%'; CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'; \
             GRANT SELECT, INSERT ON {DATABASE}.* TO '{user}'@'%'; \
             DROP USER IF EXISTS 'auth_reader'@'%'; CREATE USER 'auth_reader'@'%' IDENTIFIED BY 'auth-reader'; \
             GRANT SELECT ON mysql.user TO 'auth_reader'@'%'"
        ),
    )
    .unwrap();
    for replica in topo.replicas() {
        let has = format!("SELECT count(*) FROM mysql.user WHERE user = '{user}'");
        eventually(10, "the replicas have the user", || topo.sql(replica, &has).is_ok_and(|n| n.trim() == "1")).await;
    }
    let extra = "auth_user = { user = \"auth_reader\", password = \"auth-reader\" }";
    let text = proxy::mysql_config_text(topo, "app", extra);
    assert!(!text.contains(user) && !text.contains(password), "the user is not in the config");
    let daemon = start_text(&text).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    let opts = mysql_async::Opts::from_url(&proxy::mysql_url(port, (user, password))).unwrap();
    let mut conn = mysql_async::Conn::new(opts).await.expect("a user looked up on the primary");
    let read: Option<(u32, String)> = conn.query_first("SELECT @@server_id, CURRENT_USER()").await.unwrap();
    let (server, who) = read.unwrap();
    assert!(server == 2 || server == 3, "a read on a replica (server {server})");
    assert!(who.starts_with(user), "{who}");
    conn.query_drop("INSERT INTO items (note) VALUES ('looked up')").await.expect("a write on the primary");
    conn.disconnect().await.unwrap();
    for (who, pw) in [(user, "not-the-password"), ("nobody_at_all", "x")] {
        let wrong = mysql_async::Opts::from_url(&proxy::mysql_url(port, (who, pw))).unwrap();
        let err = mysql_async::Conn::new(wrong).await.expect_err("refused");
        assert!(matches!(err, mysql_async::Error::Server(ref e) if e.code == 1045), "{who}: {err:?}");
    }
}

/// `auth_user` while the primary cannot be reached (every backend behind a relay, the
/// primary's blackholed): a user the config does not list is looked up on a replica, logs in
/// and reads there. With no server reachable, the login fails as unavailability (08006, the
/// reason named), not as a wrong password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_user_looks_up_on_a_replica_while_the_primary_is_away() {
    use sqlswitch_tests::relay::Relay;
    let _serial = SERIAL.lock().await;
    let topo = Topology::shared();
    let (role, password) = ("looked_up_away", "looked-up-away-pass");
    let verifier = role_with_verifier(topo, role, password);
    topo.psql_admin(topo.primary(), LOOKUP_FUNCTION, "postgres").unwrap();
    let has = format!(
        "SELECT count(*) FROM pg_authid WHERE rolpassword = '{verifier}' \
         AND to_regprocedure('public.sqlswitch_auth(text)') IS NOT NULL"
    );
    on_every_replica(topo, "the replicas have the role and the lookup function", &has).await;
    let mut relays = Vec::new();
    let extra = "auth_user = { user = \"monitor\", password = \"monitor\" }\n\
                 auth_query = \"SELECT public.sqlswitch_auth($1)\"\n\
                 connect_timeout = \"1s\"";
    let mut text = proxy::config_text(topo, "app", "127.0.0.1:0", "127.0.0.1:0", None, extra);
    for node in std::iter::once(topo.primary()).chain(topo.replicas()) {
        let relay = Relay::start(node.port).await.unwrap();
        text = text.replace(&format!("127.0.0.1:{}\"", node.port), &format!("127.0.0.1:{}\"", relay.port));
        relays.push(relay);
    }
    let daemon = start_text(&text).await.unwrap();
    let port = daemon.addr("app", false).unwrap().port();
    relays[0].blackhole();
    relays[0].cut();
    eventually(10, "the cluster knows its primary is away", || {
        daemon.control.status()["clusters"][0]["maintenance"].as_str().is_some()
    })
    .await;
    // Once the monitor sees the primary gone (a second), sessions log in and read on replicas.
    let read = || async {
        let client = connect(port, (role, password)).await.ok()?;
        let row = client.query_one("SELECT current_user || '@' || pg_is_in_recovery()", &[]).await.ok()?;
        Some(row.get::<_, String>(0))
    };
    assert_eq!(loop_until(read).await, format!("{role}@true"), "looked up and read on a replica");

    for relay in &relays {
        relay.blackhole();
        relay.cut();
    }
    let nobody = connect(port, ("looked_up_nowhere", "x")).await.expect_err("no server to look the user up");
    assert_eq!(nobody.code(), Some(&tokio_postgres::error::SqlState::CONNECTION_FAILURE), "{nobody:?}");
    let text = nobody.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default();
    assert!(text.contains("auth_user") && text.contains("looked_up_nowhere"), "{text}");
}

/// Polls `attempt` (every 200 ms, up to 30 s) until it yields something.
async fn loop_until<T, F, Fut>(attempt: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(found) = attempt().await {
            return found;
        }
        assert!(std::time::Instant::now() < deadline, "gave up waiting");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Waits until `count` (a `SELECT count(*)` in `postgres`) answers 1 on every replica.
async fn on_every_replica(topo: &Topology, what: &str, count: &str) {
    for replica in topo.replicas() {
        eventually(10, what, || topo.psql_admin(replica, count, "postgres").is_ok_and(|n| n.trim() == "1")).await;
    }
}
