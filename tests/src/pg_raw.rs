//! A PostgreSQL client over a raw socket, message by message: for what drivers hide (the
//! process id a session was given, malformed input).

use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pg::{APP, DATABASE};

/// Reads backend messages until one satisfies `stop`; returns them all (tags and bodies).
pub async fn read_until(s: &mut TcpStream, buf: &mut BytesMut, stop: impl Fn(&Message) -> bool) -> Vec<Message> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(m) = Message::parse(buf).unwrap() {
            let done = stop(&m);
            seen.push(m);
            if done {
                return seen;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return seen, // closed or timed out: the caller checks what it got
        }
    }
}

/// A raw protocol session, logged in with SCRAM like any client, at ReadyForQuery.
pub async fn raw_session(port: u16) -> (TcpStream, BytesMut) {
    let (s, buf, _) = raw_session_pid(port).await;
    (s, buf)
}

/// [`raw_session`], and the process id its BackendKeyData gave.
pub async fn raw_session_pid(port: u16) -> (TcpStream, BytesMut, i32) {
    let (s, buf, welcome) = raw_session_with(port, &[]).await;
    let pid = welcome.iter().find_map(|m| match m {
        Message::BackendKeyData(k) => Some(k.process_id()),
        _ => None,
    });
    (s, buf, pid.expect("a BackendKeyData"))
}

/// The ParameterStatus values among `msgs`, as (name, value).
pub fn parameter_statuses(msgs: &[Message]) -> Vec<(String, String)> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::ParameterStatus(p) => Some((p.name().unwrap().to_owned(), p.value().unwrap().to_owned())),
            _ => None,
        })
        .collect()
}

/// [`raw_session`] with `extra` startup parameters; returns what the login answered after
/// the authentication (ParameterStatus, BackendKeyData, ReadyForQuery).
pub async fn raw_session_with(port: u16, extra: &[(&str, &str)]) -> (TcpStream, BytesMut, Vec<Message>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut out = BytesMut::new();
    let params = [("user", APP.0), ("database", DATABASE)].into_iter().chain(extra.iter().copied());
    frontend::startup_message(params, &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let mut scram = ScramSha256::new(APP.1.as_bytes(), ChannelBinding::unsupported());
    read_until(&mut s, &mut buf, |m| matches!(m, Message::AuthenticationSasl(_))).await;
    out.clear();
    frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    let got = read_until(&mut s, &mut buf, |m| matches!(m, Message::AuthenticationSaslContinue(_))).await;
    let Some(Message::AuthenticationSaslContinue(c)) = got.last() else { panic!("no SASL continue") };
    scram.update(c.data()).unwrap();
    out.clear();
    frontend::sasl_response(scram.message(), &mut out).unwrap();
    s.write_all(&out).await.unwrap();
    let got = read_until(&mut s, &mut buf, |m| matches!(m, Message::ReadyForQuery(_))).await;
    assert!(matches!(got.last(), Some(Message::ReadyForQuery(_))), "login did not finish");
    (s, buf, got)
}

/// The SQLSTATE of the first ErrorResponse among `msgs`.
pub fn error_code(msgs: &[Message]) -> Option<String> {
    msgs.iter().find_map(|m| match m {
        Message::ErrorResponse(e) => {
            use fallible_iterator::FallibleIterator;
            let mut fields = e.fields();
            while let Ok(Some(f)) = fields.next() {
                if f.type_() == b'C' {
                    return Some(String::from_utf8_lossy(f.value_bytes()).into_owned());
                }
            }
            None
        }
        _ => None,
    })
}

/// The process id of the first NotificationResponse among `msgs`.
pub fn notification_pid(msgs: &[Message]) -> Option<i32> {
    msgs.iter().find_map(|m| match m {
        Message::NotificationResponse(n) => Some(n.process_id()),
        _ => None,
    })
}
