//! MySQL/MariaDB clients: the handshake and login against the configured users
//! (`mysql_native_password`, or `caching_sha2_password` when the client answers with it, always
//! on its fast path; an auth switch to native for clients that start with another plugin), the
//! first backend connection, then the session relay ([`session`]).

pub mod session;
pub mod statements;
pub mod temp;
pub mod timeout;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use sqlswitch_protocol::mysql::handshake::{auth_switch_request, ClientResponse, ServerHandshake};
use sqlswitch_protocol::mysql::packet::{self, err_payload, ok_payload};
use sqlswitch_protocol::mysql::{caps, code, status};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::cluster::{Cluster, User};
use crate::session::Side;
use crate::tls::ClientStream;
use session::{MySession, MySlot};

/// What the proxy calls itself in the handshake (MariaDB style, so clients enable MariaDB
/// behaviour; the backends are asked nothing until login succeeds).
const SERVER_VERSION: &str = "5.5.5-10.11.0-MariaDB-sqlswitch";
pub(crate) const NATIVE: &str = "mysql_native_password";
const CACHING_SHA2: &str = "caching_sha2_password";
const UTF8MB4_GENERAL_CI: u8 = 45;

/// Sends an ERR packet with sequence id `seq`.
pub async fn send_err(stream: &mut ClientStream, seq: u8, code: u16, sqlstate: &str, text: &str) {
    let mut out = BytesMut::new();
    packet::encode(&mut out, seq, &err_payload(code, sqlstate, text));
    let _ = stream.send(&out).await;
}

/// Serves one accepted MySQL client connection to its end.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    cluster: crate::cluster::Admitted,
    read_only_listener: bool,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let mut stream = ClientStream::Plain(stream);
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let thread = cluster.mysql_threads.register();
    // The login states are boxed: a session's future is as large as its largest state, for
    // its whole life.
    let login = Box::pin(tokio::time::timeout(
        cluster.config.auth_timeout,
        handshake(&mut stream, &mut buf, &cluster, peer, thread.id),
    ))
    .await;
    let (hello, seq, scramble, account) = match login {
        Ok(Ok(v)) => *v,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "connection ended before its session began");
            return;
        }
        Err(_) => {
            send_err(&mut stream, 0, code::HANDSHAKE, "08S01", "timed out waiting for the handshake").await;
            return;
        }
    };
    let mut id = session::Identity::new(
        &cluster,
        &hello.user,
        &account,
        hello.database.as_deref(),
        hello.caps,
        hello.ext,
        hello.charset,
        read_only_listener,
    );
    id.native_key = native_key(Some(&account), &scramble, &hello.auth).map(Box::new);
    // Not kept for the session's life: the future would carry it.
    drop(account);
    id.scramble = scramble;
    thread.set_user(&hello.user);
    let read_only = id.read_only;
    let (index, conn) = match Box::pin(session::first_connection(&id)).await {
        Ok(v) => v,
        Err(e) => {
            let mut out = BytesMut::new();
            packet::encode(&mut out, seq, &session::first_connection_error(&cluster, e));
            let _ = stream.send(&out).await;
            return;
        }
    };
    let mut out = BytesMut::new();
    packet::encode(&mut out, seq, &ok_payload(conn.status));
    if stream.send(&out).await.is_err() {
        return;
    }
    let backend = &cluster.backends[index];
    info!(cluster = %cluster.config.name, %peer, user = %hello.user, backend = %backend.name, read_only, "session started");
    cluster.metrics.sessions_total.increment(1);
    cluster.metrics.sessions.increment(1.0);
    let side = if cluster.table.load().is_primary(index) { Side::Primary } else { Side::Replica };
    let slot = MySlot::new(&cluster, index, conn);
    let mut session = MySession::new(stream, buf, id, slot, side, thread, peer);
    let end = session.run(&shutdown).await;
    cluster.metrics.sessions.decrement(1.0);
    debug!(%peer, ?end, "session ended");
    // Boxed: a reset per connection would size the session's future for its whole life.
    Box::pin(session.release()).await;
}

/// Reads the client's handshake response and checks its password. Returns it and the next
/// sequence id; errors have been sent to the client.
async fn handshake(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    cluster: &Cluster,
    peer: SocketAddr,
    connection_id: u32,
) -> anyhow::Result<Box<Handshaken>> {
    let nonce = new_nonce();
    let acceptor = cluster.tls.load_full();
    let hello = ServerHandshake {
        version: SERVER_VERSION.to_owned(),
        connection_id,
        nonce: nonce.clone(),
        caps: caps::OFFERED | if acceptor.is_some() { caps::SSL } else { 0 },
        ext: cluster.servers_ext(),
        charset: UTF8MB4_GENERAL_CI,
        status: status::AUTOCOMMIT,
        plugin: NATIVE.to_owned(),
    };
    let mut out = BytesMut::new();
    packet::encode(&mut out, 0, &hello.encode());
    stream.send(&out).await?;
    let mut first = read_packet(stream, buf).await?;
    // An SSLRequest: the first 32 bytes of a handshake response, with CLIENT_SSL. TLS starts,
    // and the whole response follows over it.
    let ssl_request = first.payload.len() == 32
        && first
            .payload
            .get(..4)
            .and_then(|c| <[u8; 4]>::try_from(c).ok())
            .is_some_and(|c| u32::from_le_bytes(c) & caps::SSL != 0);
    if ssl_request {
        let Some(acceptor) = acceptor else {
            send_err(stream, first.last_seq.wrapping_add(1), code::HANDSHAKE, "08S01", "TLS is not configured").await;
            anyhow::bail!("TLS requested but not configured");
        };
        // The client's ClientHello follows the SSLRequest at once: what of it was read with the
        // request goes to the TLS handshake.
        stream.upgrade(&acceptor, buf).await?;
        first = read_packet(stream, buf).await?;
    }
    if cluster.tls_required() && !stream.is_tls() {
        let text = "Connections using insecure transport are prohibited (sqlswitch requires TLS on this cluster)";
        send_err(stream, first.last_seq.wrapping_add(1), code::SECURE_TRANSPORT_REQUIRED, "HY000", text).await;
        anyhow::bail!("plaintext refused");
    }
    let mut response = match ClientResponse::parse(&first.payload) {
        // Within what this handshake offered: what servers offer may have changed since.
        Ok(r) => ClientResponse { ext: r.ext & hello.ext, ..r },
        Err(e) => {
            send_err(stream, first.last_seq.wrapping_add(1), code::HANDSHAKE, "08S01", &e.to_string()).await;
            anyhow::bail!("bad handshake response: {e}");
        }
    };
    let mut seq = first.last_seq.wrapping_add(1);
    let account = match cluster.account(&response.user).await {
        Ok(account) => account,
        Err(e) => {
            send_err(stream, seq, code::UNKNOWN, "08S01", &e.text(&response.user)).await;
            anyhow::bail!("{}", e.text(&response.user));
        }
    };
    // A user whose config keeps a mysql_native_password hash can only be checked that way.
    let hashed = account.as_ref().is_some_and(|u| u.native_hash.is_some());
    let sha2 = response.plugin.as_deref() == Some(CACHING_SHA2) && !hashed;
    if !sha2 && response.plugin.as_deref().is_some_and(|p| p != NATIVE) {
        let mut out = BytesMut::new();
        packet::encode(&mut out, seq, &auth_switch_request(NATIVE, &nonce));
        stream.send(&out).await?;
        let answer = read_packet(stream, buf).await?;
        response.auth = answer.payload.to_vec();
        seq = answer.last_seq.wrapping_add(1);
    }
    let verified = password_ok(cluster, account.as_deref(), &nonce, sha2, &response.auth);
    let account = match account.filter(|_| verified) {
        Some(account) => account,
        None => {
            let text = access_denied(&response.user, peer, &response.auth);
            send_err(stream, seq, code::ACCESS_DENIED, "28000", &text).await;
            anyhow::bail!("authentication failed for user {:?}", response.user);
        }
    };
    if sha2 && !response.auth.is_empty() {
        // caching_sha2_password: the proxy knows every password, so its "cache" always holds
        // the user and the scramble is checked on the fast path; full authentication (RSA or
        // TLS) is never asked for. AuthMoreData 0x03 is "fast auth succeeded; OK follows".
        let mut out = BytesMut::new();
        packet::encode(&mut out, seq, &[0x01, 0x03]);
        stream.send(&out).await?;
        seq = seq.wrapping_add(1);
    }
    Ok(Box::new((response, seq, nonce, account)))
}

/// What a client's handshake gave: its response, the next sequence number, the scramble it
/// answered and its user. Boxed: the serving future would otherwise hold its size in the
/// result it matches for the session's whole life.
type Handshaken = (ClientResponse, u8, Vec<u8>, Arc<User>);

/// A fresh 20-byte scramble of printable bytes.
pub(crate) fn new_nonce() -> Vec<u8> {
    (0..20).map(|_| rand::random::<u8>() % 94 + 33).collect()
}

/// Whether `auth` is `account`'s password scrambled with `nonce` (`mysql_native_password`, or
/// `caching_sha2_password` with `sha2`). Unknown users (`None`) never match; failures are
/// counted.
pub(crate) fn password_ok(cluster: &Cluster, account: Option<&User>, nonce: &[u8], sha2: bool, auth: &[u8]) -> bool {
    let ok = password_matches(account, nonce, sha2, auth);
    if !ok {
        cluster.metrics.auth_failures.increment(1);
    }
    ok
}

/// [`password_ok`] without counting a failure (a first try that may be followed by another).
pub(crate) fn password_matches(account: Option<&User>, nonce: &[u8], sha2: bool, auth: &[u8]) -> bool {
    if let Some(hash) = account.and_then(|u| u.native_hash) {
        return !sha2 && crate::conn::scramble::native_key(nonce, &hash, auth).is_some();
    }
    let expected = account.and_then(|u| {
        if u.password.is_empty() {
            Some(Vec::new())
        } else if sha2 {
            let nonce: &[u8; 20] = nonce.try_into().ok()?;
            crate::conn::scramble::sha256(nonce, u.password.as_bytes()).map(|s| s.to_vec())
        } else {
            crate::conn::scramble::native(nonce, u.password.as_bytes()).map(|s| s.to_vec())
        }
    });
    expected.as_deref() == Some(auth)
}

/// Passthrough: the key SHA1(password) that `auth` (the client's `mysql_native_password`
/// scramble for `nonce`) proves, for a user whose config keeps a stored hash; `None` for other
/// users or a scramble that does not match.
pub(crate) fn native_key(account: Option<&User>, nonce: &[u8], auth: &[u8]) -> Option<[u8; 20]> {
    let hash = account?.native_hash?;
    crate::conn::scramble::native_key(nonce, &hash, auth)
}

/// MySQL's error 1045 text.
pub(crate) fn access_denied(user: &str, peer: SocketAddr, auth: &[u8]) -> String {
    let using = if auth.is_empty() { "NO" } else { "YES" };
    format!("Access denied for user '{user}'@'{}' (using password: {using})", peer.ip())
}

/// Reads one handshake-phase packet (at most 64 KiB). An oversized or malformed one gets the
/// client an ERR (1153 / 1043) before the connection closes.
pub(crate) async fn read_packet(stream: &mut ClientStream, buf: &mut BytesMut) -> anyhow::Result<packet::Packet> {
    loop {
        match packet::decode(buf, 64 * 1024) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => {
                let seq = buf.get(3).map_or(0, |s| s.wrapping_add(1));
                let code = match e {
                    sqlswitch_protocol::ProtocolError::TooLarge { .. } => code::PACKET_TOO_LARGE,
                    _ => code::HANDSHAKE,
                };
                send_err(stream, seq, code, "08S01", &e.to_string()).await;
                return Err(e.into());
            }
        }
        buf.reserve(1024);
        if stream.read_buf(buf).await? == 0 {
            anyhow::bail!("client closed the connection");
        }
    }
}

#[cfg(test)]
mod tests {
    /// The size of the future an `async fn` taking five arguments returns.
    fn future_size<A, B, C, D, E, F: std::future::Future>(_: fn(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle client holds its session's future for its whole life: its size is most of
    /// an idle session's memory. Measured at 8,608 bytes in a test build before the rare paths
    /// that open a control connection or a login (`KILL`, a killed client's query, a change of
    /// user, the release) were boxed, 2,784 after. A change that grows it past the bound must
    /// box what it added on a rare path.
    #[test]
    fn the_session_future_stays_within_its_measured_size() {
        let size = future_size(super::serve);
        assert!(size <= 2_900, "a MySQL session's future is {size} bytes (measured: 2,784)");
    }
}
