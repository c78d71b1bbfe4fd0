//! Client helpers shared by the end-to-end tests (tokio-postgres as the application).

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

use crate::proxy::conn_str;

/// Connects as `who` to `port` (database `app`).
///
/// # Errors
/// The connection or login failed.
pub async fn connect(port: u16, who: (&str, &str)) -> Result<Client, tokio_postgres::Error> {
    connect_str(&conn_str(port, who)).await
}

/// Connects with a libpq-style string; the connection task runs in the background.
///
/// # Errors
/// The connection or login failed.
pub async fn connect_str(s: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(s, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// The superuser, straight to a server (no proxy).
///
/// # Panics
/// The server is not reachable.
pub async fn direct(port: u16, database: &str) -> Client {
    connect_str(&format!("host=127.0.0.1 port={port} user=postgres dbname={database}"))
        .await
        .expect("direct connection")
}

/// The error of an operation that must fail.
///
/// # Panics
/// The operation succeeded.
pub fn refused<T>(result: Result<T, tokio_postgres::Error>, what: &str) -> tokio_postgres::Error {
    match result {
        Ok(_) => panic!("expected an error: {what}"),
        Err(e) => e,
    }
}

/// The SQLSTATE of an error.
pub fn code(e: &tokio_postgres::Error) -> Option<&SqlState> {
    e.code()
}

/// Which server ran the statement (`primary`, `replica1`, ...: the harness's `cluster_name`).
///
/// # Panics
/// The query failed.
pub async fn server_name(client: &Client) -> String {
    client.query_one("SELECT current_setting('cluster_name')", &[]).await.expect("cluster_name").get(0)
}

/// Whether the session's statement ran on a standby.
///
/// # Panics
/// The query failed.
pub async fn in_recovery(client: &Client) -> bool {
    client.query_one("SELECT pg_is_in_recovery()", &[]).await.expect("pg_is_in_recovery").get(0)
}
