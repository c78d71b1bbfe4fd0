//! The client's side of a connection before it becomes a session: the startup packet (answering
//! SSLRequest and GSSENCRequest with `N` while TLS is not configured; direct TLS, where the
//! first bytes are a TLS ClientHello, as protocol 3.2 clients send it), protocol version
//! negotiation, and SCRAM-SHA-256 authentication against the configured users. The SCRAM
//! arithmetic is pgwire's sans-I/O state machine; the proxy owns the socket and the framing.

use bytes::BytesMut;
use pgwire::api::auth::sasl::scram::ScramServerAuth;
use pgwire::error::PgWireError;
use sqlswitch_protocol::pg::backend::{self as msg, Severity};
use sqlswitch_protocol::pg::frame;
use sqlswitch_protocol::pg::frontend;
use sqlswitch_protocol::pg::sqlstate;
use sqlswitch_protocol::pg::startup::{self, Startup, StartupRequest};
use sqlswitch_protocol::ProtocolError;
use tokio::io::AsyncReadExt;

use crate::tls::ClientStream;

use std::sync::Arc;

use crate::cluster::{Cluster, User};

/// What a new connection asked for.
pub enum Opening {
    /// A session, authenticated, of the user; with the client's SCRAM keys when its user logs
    /// in to the backends by passthrough.
    Session(Startup, Arc<User>, Option<Box<crate::conn::scram::Keys>>),
    /// Cancel another session's query.
    Cancel {
        /// Process id.
        pid: i32,
        /// Secret key.
        secret: i32,
    },
}

/// Why a connection ended before its session began. The client has already been told.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The socket failed or closed.
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtocolError),
    /// Authentication failed.
    #[error("authentication failed for user {0:?}")]
    Auth(String),
    /// The client asked for something the proxy does not offer.
    #[error("{0}")]
    Unsupported(String),
    /// No server could check the login (an `auth_user` lookup nobody answered).
    #[error("{0}")]
    Unavailable(String),
}

/// Sends a FATAL ErrorResponse; the caller closes the connection after.
pub async fn send_fatal(stream: &mut ClientStream, code: &str, text: &str) {
    let mut out = BytesMut::new();
    msg::error_response(&mut out, Severity::Fatal, code, text);
    let _ = stream.send(&out).await;
}

async fn read_more(stream: &mut ClientStream, buf: &mut BytesMut) -> Result<(), HandshakeError> {
    buf.reserve(1024);
    if stream.read_buf(buf).await? == 0 {
        return Err(HandshakeError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(())
}

/// Reads startup packets until a StartupMessage or a CancelRequest; for a StartupMessage,
/// authenticates the user. Errors have already been sent to the client.
///
/// # Errors
/// See [`HandshakeError`].
pub async fn handshake(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    cluster: &Cluster,
) -> Result<Opening, HandshakeError> {
    let startup = loop {
        if buf.first() == Some(&TLS_HANDSHAKE_RECORD) && !stream.is_tls() {
            direct_tls(stream, buf, cluster).await?;
            continue;
        }
        let request = match startup::decode(buf) {
            Ok(Some(r)) => r,
            Ok(None) => {
                read_more(stream, buf).await?;
                continue;
            }
            Err(e) => {
                let code = match e {
                    ProtocolError::UnsupportedVersion { .. } => sqlstate::FEATURE_NOT_SUPPORTED,
                    _ => sqlstate::PROTOCOL_VIOLATION,
                };
                send_fatal(stream, code, &e.to_string()).await;
                return Err(e.into());
            }
        };
        match request {
            StartupRequest::Ssl | StartupRequest::GssEnc => {
                if !buf.is_empty() {
                    // Bytes after the request would be plaintext smuggled past a TLS handshake.
                    send_fatal(stream, sqlstate::PROTOCOL_VIOLATION, "unexpected data after encryption request").await;
                    return Err(ProtocolError::Malformed { what: "encryption request" }.into());
                }
                let acceptor = cluster.tls.load_full();
                match acceptor {
                    Some(acceptor) if matches!(request, StartupRequest::Ssl) && !stream.is_tls() => {
                        stream.send(b"S").await?;
                        // Nothing was read past the SSLRequest (checked above).
                        stream.upgrade(&acceptor, buf).await?;
                    }
                    // No TLS configured (or GSSAPI asked, or TLS already on): say so and wait
                    // for the next packet.
                    _ => stream.send(b"N").await?,
                }
            }
            StartupRequest::Cancel { pid, secret } => return Ok(Opening::Cancel { pid, secret }),
            StartupRequest::Startup(s) => break s,
        }
    };
    if cluster.tls_required() && !stream.is_tls() {
        let text = "this sqlswitch cluster accepts TLS connections only (connect with sslmode=require or stricter)";
        send_fatal(stream, sqlstate::INVALID_AUTHORIZATION, text).await;
        return Err(HandshakeError::Unsupported(text.into()));
    }
    if startup.param("replication").is_some_and(|v| v != "false" && v != "off" && v != "0") {
        let text = "replication connections are not supported through sqlswitch";
        send_fatal(stream, sqlstate::FEATURE_NOT_SUPPORTED, text).await;
        return Err(HandshakeError::Unsupported(text.into()));
    }
    let Some(user) = startup.param("user").filter(|u| !u.is_empty()).map(str::to_owned) else {
        let text = "no PostgreSQL user name specified in startup packet";
        send_fatal(stream, sqlstate::INVALID_AUTHORIZATION, text).await;
        return Err(HandshakeError::Unsupported(text.into()));
    };
    let mut out = BytesMut::new();
    if startup.minor > 0 || startup.protocol_options().next().is_some() {
        msg::negotiate_protocol_version(&mut out, 0, startup.protocol_options());
    }
    let (account, keys) = authenticate(stream, buf, &mut out, cluster, &user).await?;
    Ok(Opening::Session(startup, account, keys))
}

/// The first byte of a TLS handshake record. A startup packet cannot start with it: its length
/// would be over 369 MB.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Direct TLS (`sslnegotiation=direct`): the client starts TLS without an SSLRequest, and must
/// negotiate the `postgresql` ALPN protocol, as PostgreSQL 17 requires. Without TLS configured
/// there is no way to answer a ClientHello but to close.
async fn direct_tls(stream: &mut ClientStream, buf: &mut BytesMut, cluster: &Cluster) -> Result<(), HandshakeError> {
    let Some(acceptor) = cluster.tls.load_full() else {
        return Err(HandshakeError::Unsupported("direct TLS from a client, and TLS is not configured".into()));
    };
    stream.upgrade(&acceptor, buf).await?;
    if stream.alpn() != Some(crate::tls::ALPN_POSTGRESQL) {
        let text = "direct TLS connections must negotiate the \"postgresql\" ALPN protocol";
        send_fatal(stream, sqlstate::PROTOCOL_VIOLATION, text).await;
        return Err(HandshakeError::Unsupported(text.into()));
    }
    Ok(())
}

/// SCRAM-SHA-256 against the user's verifier (or a decoy for unknown users, so that both fail
/// alike). Sends AuthenticationOk on success; returns the user and, for a passthrough user,
/// the client's keys.
async fn authenticate(
    stream: &mut ClientStream,
    buf: &mut BytesMut,
    out: &mut BytesMut,
    cluster: &Cluster,
    user: &str,
) -> Result<(Arc<User>, Option<Box<crate::conn::scram::Keys>>), HandshakeError> {
    let account = match cluster.account(user).await {
        Ok(account) => account,
        Err(e) => {
            send_fatal(stream, sqlstate::CONNECTION_FAILURE, &e.text(user)).await;
            return Err(HandshakeError::Unavailable(e.text(user)));
        }
    };
    let verifier = account.as_ref().map_or(&cluster.decoy, |u| &u.verifier);
    msg::authentication_sasl(out, &["SCRAM-SHA-256"]);
    stream.send(out).await?;
    out.clear();

    let first = read_password_message(stream, buf).await?;
    let (mechanism, data) = match frontend::sasl_initial_response(first.body()) {
        Ok(v) => v,
        Err(e) => {
            send_fatal(stream, sqlstate::PROTOCOL_VIOLATION, "malformed SASLInitialResponse").await;
            return Err(e.into());
        }
    };
    if mechanism != "SCRAM-SHA-256" {
        let text = format!("SASL mechanism {mechanism:?} is not supported; use SCRAM-SHA-256");
        send_fatal(stream, sqlstate::INVALID_AUTHORIZATION, &text).await;
        return Err(HandshakeError::Unsupported(text));
    }
    let scram = ScramServerAuth::new();
    let (server_first, waiting) = match scram.on_client_first_message_with_secret(data, verifier.secret()) {
        Ok(v) => v,
        Err(e) => {
            send_fatal(stream, sqlstate::PROTOCOL_VIOLATION, &format!("invalid SCRAM message: {}", scram_reason(&e)))
                .await;
            return Err(HandshakeError::Auth(user.to_owned()));
        }
    };
    msg::authentication_sasl_continue(out, server_first.as_bytes());
    stream.send(out).await?;
    out.clear();

    let last = read_password_message(stream, buf).await?;
    match waiting.on_client_final_message(last.body()) {
        Ok(server_final) if account.is_some() => {
            let keys = match account.as_ref().filter(|u| u.passthrough) {
                Some(u) => {
                    let v = &u.verifier;
                    let key = crate::conn::scram::recover_client_key(
                        &v.stored_key,
                        data,
                        server_first.as_bytes(),
                        last.body(),
                    );
                    let Some(client_key) = key else {
                        send_fatal(stream, sqlstate::PROTOCOL_VIOLATION, "invalid SCRAM client-final message").await;
                        return Err(HandshakeError::Auth(user.to_owned()));
                    };
                    let (server_key, salt, iterations) = (v.server_key.clone(), v.salt.clone(), v.iterations);
                    Some(Box::new(crate::conn::scram::Keys { client_key, server_key, salt, iterations }))
                }
                None => None,
            };
            msg::authentication_sasl_final(out, server_final.as_bytes());
            msg::authentication_ok(out);
            stream.send(out).await?;
            out.clear();
            match account {
                Some(account) => Ok((account, keys)),
                None => Err(HandshakeError::Auth(user.to_owned())),
            }
        }
        _ => {
            let text = format!("password authentication failed for user \"{user}\"");
            cluster.metrics.auth_failures.increment(1);
            send_fatal(stream, sqlstate::INVALID_PASSWORD, &text).await;
            Err(HandshakeError::Auth(user.to_owned()))
        }
    }
}

fn scram_reason(e: &PgWireError) -> String {
    match e {
        PgWireError::InvalidScramMessage(m) => m.clone(),
        other => other.to_string(),
    }
}

async fn read_password_message(stream: &mut ClientStream, buf: &mut BytesMut) -> Result<frame::Frame, HandshakeError> {
    loop {
        match frame::decode(buf, startup::MAX_STARTUP_LEN) {
            Ok(Some(f)) if f.tag == frontend::PASSWORD => return Ok(f),
            Ok(Some(f)) if f.tag == frontend::TERMINATE => {
                return Err(HandshakeError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(Some(f)) => {
                let text = format!("expected SASL response, got message type {:?}", char::from(f.tag));
                send_fatal(stream, sqlstate::PROTOCOL_VIOLATION, &text).await;
                return Err(ProtocolError::Malformed { what: "authentication message" }.into());
            }
            Ok(None) => read_more(stream, buf).await?,
            Err(e) => {
                send_fatal(stream, sqlstate::PROTOCOL_VIOLATION, &e.to_string()).await;
                return Err(e.into());
            }
        }
    }
}
