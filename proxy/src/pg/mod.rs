//! PostgreSQL clients: from a freshly accepted socket to a running session and back to the
//! pool. [`client`] does the startup and authentication, [`backend`] the connections to the
//! servers, [`session`] the relaying.

pub mod batch;
pub mod client;
mod dispatch;
mod rerun;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use sqlswitch_protocol::pg::backend::{self as msg, Severity};
use sqlswitch_protocol::pg::sqlstate;
use sqlswitch_protocol::pg::startup::{options_set, parse_bool, Startup};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backend::BackendError;
use crate::cancel::{self, CancelKey};
use crate::cluster::Cluster;
use crate::conn::pg::{BackendConn, Login};
use crate::pool::PoolKey;
use crate::session::core::Held;
use crate::tls::ClientStream;
use client::{send_fatal, Opening};
use session::{End, Identity, Session};

const READ_ONLY_GUC: &str = "default_transaction_read_only";

/// A client connection accepted on a PostgreSQL listener, for its session thread.
pub struct Accepted {
    /// The connection, not yet registered with any reactor.
    pub stream: std::net::TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener's cluster, with the connection's place under `max_client_connections`.
    pub cluster: crate::cluster::Admitted,
    /// Whether the listener is the cluster's read-only one.
    pub read_only_listener: bool,
    /// The cancel keys of the daemon's PostgreSQL sessions.
    pub cancels: Arc<cancel::Registry>,
    /// Fires when the daemon shuts down.
    pub shutdown: CancellationToken,
}

/// Serves one accepted client connection to its end.
///
/// The connection comes boxed: an `async fn` keeps its arguments for its whole life, beside
/// the copies its body works with, and a session's future is what an idle client costs.
pub async fn serve(accepted: Box<Accepted>) {
    let Accepted { stream, peer, cluster, read_only_listener, cancels, shutdown } = *accepted;
    let Ok(stream) = TcpStream::from_std(stream) else { return };
    // The login is boxed: its states (startup, SCRAM, a backend login) are the largest of a
    // session, and an idle session would carry their size for its whole life.
    let Some(Opened { stream, buf, account, key, read_only, cancel_key, settings, keys }) =
        Box::pin(open(stream, peer, &cluster, read_only_listener, cancels)).await
    else {
        return;
    };
    let id = Identity {
        cluster: &cluster,
        password: &account.password,
        keys: keys.as_deref(),
        key: &key,
        read_only,
        cancel: &cancel_key,
    };
    let mut session = Session::new(stream, buf, id);
    session.core.starts_with(settings);
    let end = session.run(&shutdown).await;
    cluster.metrics.sessions.decrement(1.0);
    let goodbye = match end {
        End::Shutdown => Some((sqlstate::ADMIN_SHUTDOWN, "terminating connection because sqlswitch is shutting down")),
        End::IdleTimeout => {
            Some((sqlstate::IDLE_SESSION_TIMEOUT, "terminating connection due to idle-session timeout"))
        }
        _ => None,
    };
    if let Some((code, text)) = goodbye {
        let mut out = BytesMut::new();
        msg::error_response(&mut out, Severity::Fatal, code, text);
        let _ = session.client().send(&out).await;
    }
    // The client's address is in the session's span (a debug one, as this event); the
    // future does not keep a copy of it for this line.
    debug!(?end, "session ended");
    let busy = (!session.is_idle()).then_some(session.active_side()).flatten();
    let slots = session.core.take_all();
    let reusable = !session.core.state().custom_settings();
    drop(session);
    // Boxed, as the login: the session's future stays the size of what it waits on most.
    Box::pin(async {
        for (at, slot) in slots {
            let Some(slot) = slot else { continue };
            if matches!(end, End::Shutdown | End::BackendGone) || !reusable {
                slot.conn.terminate().await;
            } else if busy == Some(at) {
                // The client left mid-query: stop the query rather than let it run for nobody,
                // and close the connection, whose state is unknown.
                cancel::send_cancel(slot.conn.cancel.clone()).await;
                slot.conn.terminate().await;
            } else {
                release(&cluster, slot.backend, &key, slot.conn, true).await;
            }
        }
    })
    .await;
}

/// What a session starts with once its client is logged in.
struct Opened {
    stream: ClientStream,
    buf: BytesMut,
    account: Arc<crate::cluster::User>,
    key: PoolKey,
    read_only: bool,
    cancel_key: cancel::CancelKey,
    /// The login's settings that are not part of the pool key ([`session_settings`]).
    settings: Vec<String>,
    /// The client's SCRAM keys, for a passthrough user's backend logins.
    keys: Option<Box<crate::conn::scram::Keys>>,
}

/// Startup, the client's login and a backend login that proves the user and database good;
/// `None` when the connection ended there (refused, a cancel request, or gone).
async fn open(
    stream: TcpStream,
    peer: SocketAddr,
    cluster: &Cluster,
    read_only_listener: bool,
    cancels: Arc<cancel::Registry>,
) -> Option<Opened> {
    let _ = stream.set_nodelay(true);
    let mut stream = ClientStream::Plain(stream);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let opening =
        tokio::time::timeout(cluster.config.auth_timeout, client::handshake(&mut stream, &mut buf, cluster)).await;
    let (startup, account, keys) = match opening {
        Ok(Ok(Opening::Session(s, account, keys))) => (s, account, keys),
        Ok(Ok(Opening::Cancel { pid, secret })) => {
            cancels.cancel(pid, secret).await;
            return None;
        }
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "connection ended before its session began");
            return None;
        }
        Err(_) => {
            send_fatal(&mut stream, sqlstate::PROTOCOL_VIOLATION, "timed out waiting for startup and authentication")
                .await;
            return None;
        }
    };
    let user = startup.param("user").unwrap_or_default().to_owned();
    let read_only = read_only_listener || account.read_only || declared_read_only(&startup);
    let key = pool_key(&startup, &user, read_only);
    let app_name = application_name(&startup);
    let backend_tls = cluster.backend_tls.load_full();
    let login = Login {
        user: &user,
        password: &account.password,
        keys: keys.as_deref(),
        params: key.params(),
        tls: backend_tls.as_deref(),
    };

    // In maintenance (no usable primary), every session logs in on a replica.
    let on_replicas = read_only || cluster.maintenance().is_some();
    let (index, conn) = match acquire(cluster, on_replicas, &key, &login).await {
        Ok(found) => found,
        Err(e) => {
            refuse_session(&mut stream, cluster, e).await;
            return None;
        }
    };
    let backend = &cluster.backends[index];
    let cancel_key = cancels.register();
    if let Err(e) = welcome(&mut stream, &conn, &cancel_key, app_name).await {
        debug!(%peer, error = %e, "client left during startup");
        release(cluster, index, &key, conn, false).await;
        return None;
    }
    info!(cluster = %cluster.config.name, %peer, user = %user, backend = %backend.name, read_only, "session started");
    cluster.metrics.sessions_total.increment(1);
    cluster.metrics.sessions.increment(1.0);
    // The login proved the user and database good; the connection goes back to the pool and
    // the session takes one when it first sends something, so an idle client holds none.
    release(cluster, index, &key, conn, false).await;

    let settings = session_settings(app_name);
    Some(Opened { stream, buf, account, key, read_only, cancel_key, settings, keys })
}

/// A session is read-only when the client declares `default_transaction_read_only=on`, as a
/// startup parameter or in `options`.
fn declared_read_only(startup: &Startup) -> bool {
    let direct = startup.param(READ_ONLY_GUC).and_then(parse_bool);
    let in_options = startup.param("options").and_then(|o| options_set(o, READ_ONLY_GUC));
    direct.or(in_options).unwrap_or(false)
}

/// The startup parameters that are not part of the pool key: the session sets them on each
/// connection it takes. An application name differs from one client to the next (a test
/// runner names each test, a worker its process), and nothing in the server's answers but
/// the name itself depends on it; keyed by it, the pools held a connection per name.
const SESSION_PARAMS: [&str; 2] = ["application_name", "fallback_application_name"];

/// The application name the client gave (`application_name`, or else its fallback).
fn application_name(startup: &Startup) -> Option<&str> {
    startup.param("application_name").or_else(|| startup.param("fallback_application_name"))
}

/// The session's own settings, replayed on every connection it takes (before its first
/// statement there) and kept across `DISCARD ALL`.
fn session_settings(app_name: Option<&str>) -> Vec<String> {
    app_name.map(|name| format!("SET application_name = {}", crate::replication::literal(name))).into_iter().collect()
}

/// The startup parameters the backend login carries: the client's, minus `user` and the
/// session's own settings ([`SESSION_PARAMS`]), plus the read-only setting for read-only
/// sessions (last, so it wins over anything in `options`).
fn pool_key(startup: &Startup, user: &str, read_only: bool) -> PoolKey {
    let given = startup
        .params
        .iter()
        .filter(|(k, _)| k != "user" && k != READ_ONLY_GUC && !k.starts_with("_pq_."))
        .filter(|(k, _)| !SESSION_PARAMS.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()));
    let database = (!startup.params.iter().any(|(k, _)| k == "database")).then_some(("database", user));
    let read_only = read_only.then_some((READ_ONLY_GUC, "on"));
    PoolKey::new(user, given.chain(database).chain(read_only))
}

/// A pooled or new connection to the first backend that takes the session.
async fn acquire(
    cluster: &Cluster,
    read_only: bool,
    key: &PoolKey,
    login: &Login<'_>,
) -> Result<(usize, BackendConn), BackendError> {
    let mut last = BackendError::Protocol("the cluster has no backend for this session".into());
    for index in cluster.candidates(read_only) {
        let backend = &cluster.backends[index];
        let timeout = cluster.config.connect_timeout;
        let to = backend.dialing(timeout);
        let open = || BackendConn::connect(&to, login);
        match backend.checkout(key, cluster.limits(key.user()), open).await {
            Ok(conn) => return Ok((index, conn)),
            // The server itself said no (bad database, no such role): every backend of the
            // cluster would say the same, so relay it now.
            Err(e @ BackendError::Refused { .. }) => return Err(e),
            Err(e) => {
                warn!(cluster = %cluster.config.name, backend = %backend.name, error = %e, fault = ?e.fault(), "backend unavailable");
                last = e;
            }
        }
    }
    Err(last)
}

async fn refuse_session(stream: &mut ClientStream, cluster: &Cluster, e: BackendError) {
    let text = cluster.no_session(&e);
    match e {
        BackendError::Refused { error, .. } => {
            let _ = stream.send(&error).await;
        }
        BackendError::Full { .. } => send_fatal(stream, sqlstate::TOO_MANY_CONNECTIONS, &text).await,
        _ => send_fatal(stream, sqlstate::CONNECTION_FAILURE, &text).await,
    }
}

/// ParameterStatus from the backend (the application name the client's own), the proxy's
/// own cancel key, and ReadyForQuery.
async fn welcome(
    stream: &mut ClientStream,
    conn: &BackendConn,
    key: &CancelKey,
    app_name: Option<&str>,
) -> std::io::Result<()> {
    let mut out = BytesMut::with_capacity(512);
    for (name, value) in &conn.params {
        let value = if name == "application_name" { app_name.unwrap_or(value) } else { value };
        msg::parameter_status(&mut out, name, value);
    }
    msg::backend_key_data(&mut out, key.pid, key.secret);
    msg::ready_for_query(&mut out, conn.tx);
    stream.send(&out).await
}

/// Resets a connection and returns it to its backend's pool, or closes it.
pub(crate) async fn release(cluster: &Cluster, index: usize, key: &PoolKey, mut conn: BackendConn, reset: bool) {
    let clean = !reset || matches!(conn.reset().await, Ok(true));
    if clean && conn.is_reusable() {
        if let Some(extra) = cluster.backends[index].put(key, conn) {
            extra.terminate().await;
        }
    } else {
        conn.terminate().await;
    }
}

/// Whether the connection holds what keeps a session on it: a session-level advisory lock, a
/// `LISTEN`, a cursor `WITH HOLD`, a relation in its temporary schema.
const HOLDS_UNMOVABLE: &str = "SELECT EXISTS (SELECT FROM pg_catalog.pg_locks \
     WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()) \
     OR EXISTS (SELECT FROM pg_catalog.pg_listening_channels()) \
     OR EXISTS (SELECT FROM pg_catalog.pg_cursors WHERE is_holdable) \
     OR EXISTS (SELECT FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema())";

impl crate::session::core::Link for BackendConn {
    const WATCHED: bool = true;
    const CHECKED: u8 = crate::session::state::Held::PG_CHECKED;

    async fn holds_unmovable(&mut self, aside: &mut BytesMut) -> Result<bool, BackendError> {
        let rows = self.query_passing(HOLDS_UNMOVABLE, Some(aside)).await?;
        Ok(rows.first().and_then(|r| r.first()).is_none_or(|v| v.as_deref() != Some("f")))
    }

    async fn replay(&mut self, sql: &[String]) -> Result<(), BackendError> {
        self.simple_queries(sql).await
    }

    async fn set_read_only(&mut self, on: bool) -> Result<(), BackendError> {
        let sql = if on { "SET default_transaction_read_only = on" } else { "RESET default_transaction_read_only" };
        self.simple_query(sql).await.map(drop)
    }

    async fn release(
        self,
        cluster: &Cluster,
        backend: usize,
        key: &PoolKey,
        state: &crate::session::state::SessionState,
    ) {
        if state.custom_settings() {
            // A custom parameter's placeholder survives every reset: not for another session.
            self.terminate().await;
        } else {
            release(cluster, backend, key, self, true).await;
        }
    }

    fn holds(&self, replay: &[String]) -> Option<usize> {
        crate::conn::holds_prefix(self.held.replay.as_ref(), replay)
    }

    fn take_statements(&mut self) -> Vec<(String, bytes::Bytes)> {
        std::mem::take(&mut self.held.statements)
    }

    async fn clear(&mut self) -> Result<(), BackendError> {
        match self.reset().await? {
            true => Ok(()),
            false => Err(BackendError::Protocol("a pooled connection could not be reset".into())),
        }
    }

    async fn give_back(mut self, cluster: &Cluster, backend: usize, key: &PoolKey, held: Held, reset: bool) {
        if reset {
            if !matches!(self.reset_keeping(held.statements).await, Ok(true)) {
                self.terminate().await;
                return;
            }
        } else {
            self.held = held;
        }
        release(cluster, backend, key, self, false).await;
    }

    const GIVES_BACK_NOW: bool = true;

    fn give_back_now(mut self, cluster: &Cluster, backend: usize, key: &PoolKey, held: Held) {
        self.held = held;
        let closing = if self.is_reusable() { cluster.backends[backend].put(key, self) } else { Some(self) };
        if let Some(conn) = closing {
            tokio::spawn(conn.terminate());
        }
    }
}

#[cfg(test)]
mod tests {
    /// The size of the future an `async fn` taking one argument returns.
    fn future_size<A, F: std::future::Future>(_: fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle client holds its session's future for its whole life: its size is most of
    /// an idle session's memory (benches/NOTES.md, "Idle memory": 1,040 bytes when measured).
    /// A change that makes it grow past the bound must box what it added on a rare path.
    #[test]
    fn the_session_future_stays_within_its_measured_size() {
        let size = future_size(super::serve);
        assert!(size <= 1_100, "a PostgreSQL session's future is {size} bytes (measured: 1,040)");
    }
}
