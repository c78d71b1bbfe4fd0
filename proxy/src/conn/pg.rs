//! A connection to a PostgreSQL backend: connect, log in as the session's user (SCRAM-SHA-256,
//! md5, cleartext or trust), collect ParameterStatus and BackendKeyData, and reset it for reuse.

use crate::backend::{BackendError, Dialing};

use bytes::{Buf, BytesMut};
use sqlswitch_protocol::pg::backend::{self as msg, TxStatus};
use sqlswitch_protocol::pg::frame::{self, Frame};
use tokio::io::AsyncReadExt;

use crate::cancel::CancelTarget;
use crate::metrics::{BackendMetrics, OpenGuard};
use crate::tls::{BackendStream, BackendTls};

/// Backend messages are trusted up to PostgreSQL's own 1 GiB limit.
pub const MAX_BACKEND_MESSAGE: usize = 1 << 30;

/// Parameters and credentials for a login.
pub struct Login<'a> {
    /// User name.
    pub user: &'a str,
    /// Password.
    pub password: &'a str,
    /// SCRAM passthrough: the client's keys, when the config keeps the server's verifier for
    /// this user instead of a password (`password` is then empty).
    pub keys: Option<&'a super::scram::Keys>,
    /// Startup parameters (database, GUCs), user excluded.
    pub params: crate::pool::Params<'a>,
    /// TLS to the server, when configured.
    pub tls: Option<&'a BackendTls>,
}

/// An open, logged-in backend connection.
pub struct BackendConn {
    /// The socket (TLS when `[cluster.backend_tls]` asks for it).
    pub stream: BackendStream,
    /// Bytes read from the backend and not yet forwarded.
    pub buf: BytesMut,
    /// ParameterStatus values as last reported.
    pub params: Vec<(String, String)>,
    /// Key to cancel this connection's queries.
    pub cancel: CancelTarget,
    /// Transaction status from the last ReadyForQuery.
    pub tx: TxStatus,
    /// Transaction pooling: the session state and named statements it kept from the session
    /// that gave it back, so that a session with the same state takes it as it is; empty: as
    /// its login or last reset left it.
    pub held: super::Held,
    /// Counted as open while it lives.
    open: OpenGuard,
}

impl crate::pool::Rehome for BackendConn {
    fn rehome(mut self) -> std::io::Result<Self> {
        self.stream.rehome()?;
        Ok(self)
    }
}

impl BackendConn {
    /// Connects and logs in as `login`, within `to`'s deadline.
    ///
    /// # Errors
    /// See [`BackendError`]; a refusal carries the backend's ErrorResponse.
    pub async fn connect(to: &Dialing<'_>, login: &Login<'_>) -> Result<Self, BackendError> {
        to.run(Self::dial_login(to.addr, login, to.metrics)).await
    }

    async fn dial_login(addr: &str, login: &Login<'_>, metrics: &BackendMetrics) -> Result<Self, BackendError> {
        let mut stream = BackendStream::connect(addr).await?;
        // No TLS over a Unix socket, whatever the mode (as libpq).
        if let Some(tls) = login.tls.filter(|_| !stream.is_unix()) {
            // SSLRequest; `S` starts TLS, `N` means the server has none.
            let mut request = BytesMut::with_capacity(8);
            postgres_protocol::message::frontend::ssl_request(&mut request);
            stream.send(&request).await?;
            let mut answer = [0u8; 1];
            stream.read_exact(&mut answer).await?;
            match answer[0] {
                b'S' => {
                    let name = BackendTls::server_name(addr).map_err(BackendError::Protocol)?;
                    stream.start_tls(&tls.connector, name).await?;
                }
                b'N' if !tls.required => {}
                b'N' => {
                    return Err(BackendError::Protocol(format!(
                        "{addr} does not offer TLS, and backend_tls requires it"
                    )))
                }
                _ => return Err(BackendError::Protocol("unexpected answer to SSLRequest".into())),
            }
        }
        let cancel_to = stream.cancel_address(addr);
        let mut conn = BackendConn {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            params: Vec::new(),
            cancel: CancelTarget { addr: cancel_to, pid: 0, secret: 0 },
            tx: TxStatus::Idle,
            held: super::Held::default(),
            open: OpenGuard::new(metrics),
        };
        let mut out = BytesMut::new();
        let params = std::iter::once(("user", login.user)).chain(login.params.clone());
        postgres_protocol::message::frontend::startup_message(params, &mut out)?;
        conn.stream.send(&out).await?;
        conn.authenticate(login).await?;
        loop {
            let f = conn.read_frame().await?;
            match f.tag {
                msg::PARAMETER_STATUS => conn.note_parameter(f.body()),
                msg::BACKEND_KEY_DATA => {
                    let mut b = f.body();
                    if b.len() < 8 {
                        return Err(BackendError::Protocol("short BackendKeyData".into()));
                    }
                    conn.cancel.pid = b.get_i32();
                    conn.cancel.secret = b.get_i32();
                }
                msg::READY_FOR_QUERY => {
                    conn.tx = TxStatus::from_byte(f.body().first().copied().unwrap_or(b'I'));
                    return Ok(conn);
                }
                msg::ERROR_RESPONSE => return Err(refused(f)),
                _ => {} // NoticeResponse and friends during startup are not relayed.
            }
        }
    }

    async fn authenticate(&mut self, login: &Login<'_>) -> Result<(), BackendError> {
        let mut scram: Option<super::scram::ScramClient> = None;
        loop {
            let f = self.read_frame().await?;
            if f.tag == msg::ERROR_RESPONSE {
                return Err(refused(f));
            }
            if f.tag != msg::AUTHENTICATION {
                return Err(BackendError::Protocol(format!("unexpected message {:?} during login", f.tag as char)));
            }
            let mut body = f.body();
            if body.len() < 4 {
                return Err(BackendError::Protocol("short authentication message".into()));
            }
            let code = body.get_i32();
            let mut out = BytesMut::new();
            match code {
                0 => return Ok(()),
                3 | 5 if login.keys.is_some() => {
                    return Err(BackendError::Protocol(format!(
                        "the server asks for {} authentication for user {:?}, whose config keeps a SCRAM-SHA-256 \
                         verifier: passthrough needs SCRAM-SHA-256 on the server (password_encryption, pg_hba.conf)",
                        if code == 3 { "cleartext password" } else { "md5" },
                        login.user
                    )));
                }
                3 => postgres_protocol::message::frontend::password_message(login.password.as_bytes(), &mut out)?,
                5 => {
                    let salt: [u8; 4] = body
                        .get(..4)
                        .and_then(|s| s.try_into().ok())
                        .ok_or_else(|| BackendError::Protocol("short md5 salt".into()))?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        login.user.as_bytes(),
                        login.password.as_bytes(),
                        salt,
                    );
                    postgres_protocol::message::frontend::password_message(hash.as_bytes(), &mut out)?;
                }
                10 => {
                    let offered = body.split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256");
                    if !offered {
                        return Err(BackendError::Protocol(
                            "backend offers no SASL mechanism the proxy supports".into(),
                        ));
                    }
                    let s = match login.keys {
                        Some(keys) => super::scram::ScramClient::with_keys(keys.clone()),
                        None => super::scram::ScramClient::new(login.password),
                    };
                    postgres_protocol::message::frontend::sasl_initial_response(
                        "SCRAM-SHA-256",
                        s.client_first().as_bytes(),
                        &mut out,
                    )?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram.as_mut().ok_or_else(|| BackendError::Protocol("SASLContinue before SASL".into()))?;
                    let answer = s.client_final(body).map_err(|e| BackendError::Protocol(e.to_string()))?;
                    postgres_protocol::message::frontend::sasl_response(answer.as_bytes(), &mut out)?;
                }
                12 => {
                    let s = scram.as_ref().ok_or_else(|| BackendError::Protocol("SASLFinal before SASL".into()))?;
                    s.verify(body).map_err(|e| BackendError::Protocol(e.to_string()))?;
                    continue;
                }
                other => return Err(BackendError::Protocol(format!("unsupported authentication method {other}"))),
            }
            self.stream.send(&out).await?;
        }
    }

    /// Reads one whole message.
    ///
    /// # Errors
    /// I/O failure, end of stream, or a malformed frame.
    pub async fn read_frame(&mut self) -> Result<Frame, BackendError> {
        loop {
            match frame::decode(&mut self.buf, MAX_BACKEND_MESSAGE) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err(BackendError::Protocol(e.to_string())),
            }
            self.buf.reserve(8 * 1024);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(BackendError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Records a ParameterStatus body.
    pub fn note_parameter(&mut self, body: &[u8]) {
        let mut fields = frame::Fields::new(body);
        if let (Ok(name), Ok(value)) = (fields.cstr("name"), fields.cstr("value")) {
            match self.params.iter_mut().find(|(k, _)| k == name) {
                Some(slot) => value.clone_into(&mut slot.1),
                None => self.params.push((name.to_owned(), value.to_owned())),
            }
        }
    }

    /// Whether the socket is still open and holds no unread bytes: a pooled connection that the
    /// server closed (restart, idle timeout) reads as end of stream here.
    pub fn is_reusable(&self) -> bool {
        self.buf.is_empty() && self.stream.is_quiet()
    }

    /// Returns the connection to a clean state for the next session: rolls back an open
    /// transaction and runs `DISCARD ALL`, in one round trip with a check that the backend
    /// never made a temporary schema. `Ok(false)` means it must not be reused.
    ///
    /// # Errors
    /// I/O failure.
    pub async fn reset(&mut self) -> Result<bool, BackendError> {
        self.reset_keeping(Vec::new()).await
    }

    /// As [`BackendConn::reset`], then prepares `statements` again (their Parse messages, in
    /// the same round trip): the ones the server accepts are held for the next session.
    ///
    /// # Errors
    /// I/O failure.
    pub async fn reset_keeping(&mut self, mut statements: Vec<(String, bytes::Bytes)>) -> Result<bool, BackendError> {
        self.held = super::Held::default();
        statements.retain(|(_, parse)| !parse.is_empty());
        let mut out = BytesMut::new();
        let mut expect = 0;
        if self.tx != TxStatus::Idle {
            postgres_protocol::message::frontend::query("ROLLBACK", &mut out)?;
            expect += 1;
        }
        postgres_protocol::message::frontend::query("DISCARD ALL", &mut out)?;
        // A backend keeps its temporary schema for life, through DISCARD ALL: one that made it
        // differs from a fresh login (a transaction touching pg_temp would not create it).
        postgres_protocol::message::frontend::query("SELECT pg_my_temp_schema() = 0", &mut out)?;
        expect += 2;
        for (_, parse) in &statements {
            out.extend_from_slice(parse);
        }
        if !statements.is_empty() {
            postgres_protocol::message::frontend::sync(&mut out);
            expect += 1;
        }
        self.stream.send(&out).await?;
        let (mut ok, mut parsed, mut refused) = (true, 0, false);
        while expect > 0 {
            let f = self.read_frame().await?;
            match f.tag {
                b'D' => ok &= data_row(f.body()).is_some_and(|row| row == [Some("t".to_owned())]),
                // A statement that no longer prepares (its table is gone) is not kept, nor are
                // the ones after it (the server skipped them).
                msg::ERROR_RESPONSE if expect == 1 && !statements.is_empty() => refused = true,
                msg::ERROR_RESPONSE => ok = false,
                msg::PARSE_COMPLETE if !refused => parsed += 1,
                msg::PARAMETER_STATUS => self.note_parameter(f.body()),
                msg::READY_FOR_QUERY => {
                    expect -= 1;
                    self.tx = TxStatus::from_byte(f.body().first().copied().unwrap_or(b'I'));
                }
                _ => {}
            }
        }
        statements.truncate(parsed);
        self.held.statements = statements;
        Ok(ok && self.tx == TxStatus::Idle)
    }

    /// Runs control-path SQL (monitoring, session-state replay) and returns the text values of
    /// every row. Not for the hot path: it decodes rows.
    ///
    /// # Errors
    /// I/O failure, or the server's error message.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        self.query_passing(sql, None).await
    }

    /// [`Self::simple_query`] on a session's own connection: the notifications and notices
    /// the server sends meanwhile (a `LISTEN`ing session's) are added to `aside`, whole, for
    /// the client.
    ///
    /// # Errors
    /// As [`Self::simple_query`].
    pub async fn query_passing(
        &mut self,
        sql: &str,
        mut aside: Option<&mut BytesMut>,
    ) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::query(sql, &mut out)?;
        self.stream.send(&out).await?;
        let mut rows = Vec::new();
        let mut failure = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'D' => {
                    rows.push(data_row(f.body()).ok_or_else(|| BackendError::Protocol("malformed DataRow".into()))?)
                }
                msg::ERROR_RESPONSE => failure = Some(refused(f)),
                msg::PARAMETER_STATUS => self.note_parameter(f.body()),
                msg::READY_FOR_QUERY => {
                    self.tx = TxStatus::from_byte(f.body().first().copied().unwrap_or(b'I'));
                    return failure.map_or(Ok(rows), Err);
                }
                msg::NOTIFICATION_RESPONSE | msg::NOTICE_RESPONSE => {
                    if let Some(aside) = aside.as_deref_mut() {
                        aside.extend_from_slice(&f.bytes);
                    }
                }
                _ => {}
            }
        }
    }

    /// Runs each of `statements` as its own simple query, all sent at once (one round trip):
    /// each keeps its own text where the server records it (`pg_prepared_statements`).
    ///
    /// # Errors
    /// The first statement the server refused (the ones after it still ran), or I/O.
    pub async fn simple_queries(&mut self, statements: &[String]) -> Result<(), BackendError> {
        let mut out = BytesMut::new();
        for sql in statements {
            postgres_protocol::message::frontend::query(sql, &mut out)?;
        }
        self.stream.send(&out).await?;
        let (mut owed, mut failure) = (statements.len(), None);
        while owed > 0 {
            let f = self.read_frame().await?;
            match f.tag {
                msg::ERROR_RESPONSE => {
                    failure.get_or_insert(refused(f));
                }
                msg::PARAMETER_STATUS => self.note_parameter(f.body()),
                msg::READY_FOR_QUERY => {
                    self.tx = TxStatus::from_byte(f.body().first().copied().unwrap_or(b'I'));
                    owed -= 1;
                }
                _ => {}
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// Says goodbye; errors are irrelevant, the connection is being dropped.
    pub async fn terminate(mut self) {
        let mut out = BytesMut::with_capacity(5);
        postgres_protocol::message::frontend::terminate(&mut out);
        let _ = self.stream.send(&out).await;
    }
}

impl crate::pool::Pooled for BackendConn {
    fn is_reusable(&self) -> bool {
        BackendConn::is_reusable(self)
    }

    async fn close(self) {
        self.terminate().await;
    }

    fn hold(&mut self, place: crate::metrics::Place) {
        self.open.hold(place);
    }
}

/// The text values of a DataRow body.
fn data_row(body: &[u8]) -> Option<Vec<Option<String>>> {
    let mut f = frame::Fields::new(body);
    let count = u16::from_be_bytes(f.bytes(2, "DataRow").ok()?.try_into().ok()?);
    let mut values = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = f.i32("DataRow").ok()?;
        if len < 0 {
            values.push(None);
        } else {
            let bytes = f.bytes(usize::try_from(len).ok()?, "DataRow").ok()?;
            values.push(Some(String::from_utf8_lossy(bytes).into_owned()));
        }
    }
    Some(values)
}

fn refused(f: Frame) -> BackendError {
    let (_, text) = msg::error_fields(f.body());
    let message = text.unwrap_or("unknown error").to_owned();
    BackendError::Refused { error: f.bytes, message }
}
