//! A connection to a MySQL/MariaDB backend: connect, log in as the session's user
//! (`mysql_native_password`, or `caching_sha2_password`), over TLS when `[cluster.backend_tls]`
//! asks for it, control-path queries (replay, monitoring, fencing), and reset for reuse.

use bytes::{Bytes, BytesMut};
use sqlswitch_protocol::mysql::command::{self, Answer};
use sqlswitch_protocol::mysql::handshake::{parse_auth_switch, ClientResponse, ServerHandshake};
use sqlswitch_protocol::mysql::packet::{self, Packet};
use sqlswitch_protocol::mysql::response::{lenenc, ok_status, Step, Tracker};
use sqlswitch_protocol::mysql::{caps, status};
use tokio::io::AsyncReadExt;

use crate::backend::{BackendError, Dialing};
use crate::metrics::{BackendMetrics, OpenGuard};
use crate::tls::{BackendStream, BackendTls};

/// What makes a read-only session's connection read-only.
const READ_ONLY_SQL: &str = "SET SESSION TRANSACTION READ ONLY";

/// Largest answer packet buffered whole on the control path.
const MAX_CONTROL_PACKET: usize = 64 << 20;

/// What a login needs.
pub struct Login<'a> {
    /// User name.
    pub user: &'a str,
    /// Password.
    pub password: &'a str,
    /// Passthrough: SHA1(password), which the client's scramble proved, when the config keeps
    /// MariaDB's stored hash for this user instead of a password (`password` is then empty).
    pub native_key: Option<[u8; 20]>,
    /// Initial database.
    pub database: Option<&'a str>,
    /// Capabilities to ask for (the client's, within what the proxy relays).
    pub caps: u32,
    /// MariaDB extended capabilities to ask for (the client's, within what the proxy offers).
    pub ext: u32,
    /// Collation id.
    pub charset: u8,
    /// Open the connection `SET SESSION TRANSACTION READ ONLY`.
    pub read_only: bool,
    /// TLS to the backend (`[cluster.backend_tls]`), if any.
    pub tls: Option<&'a BackendTls>,
}

impl<'a> Login<'a> {
    /// A control-path login (monitor, switchover): no database, the proxy's own capabilities.
    pub fn control(user: &'a str, password: &'a str, tls: Option<&'a BackendTls>) -> Self {
        Login {
            user,
            password,
            native_key: None,
            database: None,
            caps: caps::CONTROL,
            ext: 0,
            charset: 45,
            read_only: false,
            tls,
        }
    }
}

/// An open, logged-in backend connection.
pub struct MyConn {
    /// The socket (TLS when `[cluster.backend_tls]` asks for it).
    pub stream: BackendStream,
    /// Bytes read and not yet forwarded.
    pub buf: BytesMut,
    /// Status flags of the last answer.
    pub status: u16,
    /// Negotiated capabilities.
    pub caps: u32,
    /// Negotiated MariaDB extended capabilities.
    pub ext: u32,
    /// The MariaDB extended capabilities the server offered (0 from MySQL).
    pub server_ext: u32,
    /// Server version string.
    pub version: String,
    /// The server's id for this connection (what `KILL QUERY` names).
    pub thread_id: u32,
    read_only: bool,
    /// The database the login selected: a reset leaves the current database as it is, so the
    /// next client is put back here.
    database: Option<String>,
    /// Counted as open while it lives.
    open: OpenGuard,
    /// Transaction pooling: what it kept from the session that gave it back without a reset
    /// (one that only read on it), cleared by a reset.
    pub kept: Kept,
}

/// What a MySQL connection given back without a reset keeps: the session state it was given,
/// and statements prepared on it (by text), for the next session that prepares the same text
/// there.
#[derive(Debug, Default)]
pub struct Kept {
    /// The session's state statements (the first `.1` of `.0`).
    pub replay: Option<(std::sync::Arc<Vec<String>>, usize)>,
    /// Prepared statements by text, with the connection's ids; at most [`MAX_KEPT_STATEMENTS`].
    pub statements: Vec<(Vec<u8>, u32)>,
    /// A last insert id was set on it (an insert, or one carried there): what
    /// `LAST_INSERT_ID()` answers must not reach another session, so it is reset.
    pub insert_id: bool,
}

/// Most prepared statements a connection keeps between sessions.
pub const MAX_KEPT_STATEMENTS: usize = 64;

impl Kept {
    /// The connection's id of a statement prepared there with `sql`, taken (the session that
    /// takes it owns it until it gives the connection back).
    pub fn take_statement(&mut self, sql: &[u8]) -> Option<u32> {
        let at = self.statements.iter().position(|(s, _)| s == sql)?;
        Some(self.statements.swap_remove(at).1)
    }
}

impl crate::pool::Rehome for MyConn {
    fn rehome(mut self) -> std::io::Result<Self> {
        self.stream.rehome()?;
        Ok(self)
    }
}

impl MyConn {
    /// Connects and logs in as `login`, within `to`'s deadline.
    ///
    /// # Errors
    /// See [`BackendError`]; a refusal carries the server's ERR payload.
    pub async fn connect(to: &Dialing<'_>, login: &Login<'_>) -> Result<Self, BackendError> {
        to.run(Self::dial_login(to.addr, login, to.metrics)).await
    }

    async fn dial_login(addr: &str, login: &Login<'_>, metrics: &BackendMetrics) -> Result<Self, BackendError> {
        let mut conn = MyConn {
            stream: BackendStream::connect(addr).await?,
            buf: BytesMut::with_capacity(16 * 1024),
            status: status::AUTOCOMMIT,
            caps: 0,
            ext: 0,
            server_ext: 0,
            version: String::new(),
            thread_id: 0,
            read_only: login.read_only,
            database: login.database.map(str::to_owned),
            open: OpenGuard::new(metrics),
            kept: Kept::default(),
        };
        let hello = conn.read_packet().await?;
        if hello.payload.first() == Some(&0xFF) {
            return Err(refused(hello.payload.freeze()));
        }
        let server = ServerHandshake::parse(&hello.payload).map_err(|e| BackendError::Protocol(e.to_string()))?;
        let required = caps::PROTOCOL_41 | caps::SECURE_CONNECTION | caps::PLUGIN_AUTH;
        if server.caps & required != required {
            return Err(BackendError::Protocol("the server lacks protocol 4.1 authentication".into()));
        }
        conn.caps =
            (login.caps & caps::OFFERED & server.caps) | required | (server.caps & caps::CONNECT_WITH_DB & login.caps);
        if login.database.is_some() {
            conn.caps |= caps::CONNECT_WITH_DB & server.caps;
        }
        conn.server_ext = server.ext;
        conn.ext = login.ext & caps::ext::OFFERED & server.ext;
        conn.version = server.version.clone();
        conn.thread_id = server.connection_id;
        let mut seq = hello.last_seq.wrapping_add(1);
        // No TLS over a Unix socket, whatever the mode (as the mysql client).
        if let Some(tls) = login.tls.filter(|_| !conn.stream.is_unix()) {
            if server.caps & caps::SSL != 0 {
                conn.caps |= caps::SSL;
            } else if tls.required {
                return Err(BackendError::Protocol(format!("{addr} does not offer TLS, and backend_tls requires it")));
            }
        }
        // A passthrough login can only answer as mysql_native_password (what MariaDB asks for).
        let first_plugin =
            if login.native_key.is_some() { "mysql_native_password".to_owned() } else { server.plugin.clone() };
        let response = ClientResponse {
            caps: conn.caps,
            ext: conn.ext,
            max_packet: 1 << 30,
            charset: login.charset,
            user: login.user.to_owned(),
            auth: scramble(&first_plugin, &server.nonce, login)?,
            database: login.database.map(str::to_owned),
            plugin: Some(first_plugin),
            attrs: Vec::new(),
        };
        if let (Some(tls), true) = (login.tls, conn.caps & caps::SSL != 0) {
            seq = conn.send(seq, &response.ssl_request()).await?;
            let name = BackendTls::server_name(addr).map_err(BackendError::Protocol)?;
            conn.stream.start_tls(&tls.connector, name).await?;
        }
        conn.send(seq, &response.encode()).await?;
        loop {
            let p = conn.read_packet().await?;
            let seq = p.last_seq.wrapping_add(1);
            match p.payload.first() {
                Some(0x00) => {
                    conn.status = ok_status(&p.payload).unwrap_or(status::AUTOCOMMIT);
                    break;
                }
                Some(0xFF) => return Err(refused(p.payload.freeze())),
                Some(0xFE) => {
                    let (plugin, nonce) =
                        parse_auth_switch(&p.payload).map_err(|e| BackendError::Protocol(e.to_string()))?;
                    conn.send(seq, &scramble(&plugin, &nonce, login)?).await?;
                }
                // caching_sha2_password: 0x01 0x03 is "fast auth succeeded, OK follows";
                // 0x01 0x04 asks for the password in full, which is only sent over TLS or a
                // Unix socket (what MySQL counts as secure transport).
                Some(0x01) if p.payload.get(1) == Some(&0x03) => {}
                Some(0x01) if p.payload.get(1) == Some(&0x04) && (conn.stream.is_tls() || conn.stream.is_unix()) => {
                    let mut clear = login.password.as_bytes().to_vec();
                    clear.push(0);
                    conn.send(seq, &clear).await?;
                }
                Some(0x01) => {
                    return Err(BackendError::Protocol(
                        "the server wants caching_sha2_password full authentication, which needs backend_tls or a Unix socket"
                            .into(),
                    ))
                }
                _ => return Err(BackendError::Protocol("unexpected packet during login".into())),
            }
        }
        if login.read_only {
            conn.simple_query(READ_ONLY_SQL).await?;
        }
        Ok(conn)
    }

    async fn send(&mut self, seq: u8, payload: &[u8]) -> Result<u8, BackendError> {
        let mut out = BytesMut::with_capacity(payload.len() + 4);
        let next = packet::encode(&mut out, seq, payload);
        self.stream.send(&out).await?;
        Ok(next)
    }

    /// Reads one whole logical packet.
    ///
    /// # Errors
    /// I/O failure, end of stream, or an oversized packet.
    pub async fn read_packet(&mut self) -> Result<Packet, BackendError> {
        loop {
            match packet::decode(&mut self.buf, MAX_CONTROL_PACKET) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(BackendError::Protocol(e.to_string())),
            }
            self.buf.reserve(8 * 1024);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(BackendError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Runs control-path SQL and returns the text values of every row. Not for the hot path.
    ///
    /// # Errors
    /// I/O failure, or the server's error.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        let mut payload = Vec::with_capacity(sql.len() + 1);
        payload.push(command::QUERY);
        payload.extend_from_slice(sql.as_bytes());
        self.send(0, &payload).await?;
        self.read_rows().await
    }

    /// Reads the answer to a text query already sent: the text values of every row.
    async fn read_rows(&mut self) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        let mut tracker = Tracker::new(Answer::ResultSet, self.caps & caps::DEPRECATE_EOF != 0);
        let mut rows = Vec::new();
        let mut columns_left: Option<u64> = None;
        loop {
            let p = self.read_packet().await?;
            if p.payload.first() == Some(&0xFF) {
                // Drain nothing more: an ERR ends the answer.
                return Err(refused(p.payload.freeze()));
            }
            let before_rows = columns_left.is_none();
            match tracker.feed(p.payload.len(), &p.payload).map_err(|e| BackendError::Protocol(e.to_string()))? {
                Step::Done(flags) => {
                    if let Some(f) = flags {
                        self.status = f;
                    }
                    return Ok(rows);
                }
                Step::More => {}
            }
            if before_rows {
                if p.payload.first() != Some(&0x00) {
                    columns_left = lenenc(&p.payload).map(|(n, _)| n);
                }
                continue;
            }
            match columns_left {
                Some(n) if n > 0 => columns_left = Some(n - 1),
                Some(_) if p.payload.first() == Some(&0xFE) && p.payload.len() < 9 => {}
                _ => rows.push(text_row(&p.payload)),
            }
        }
    }

    /// Whether the socket is still open with no unread bytes.
    pub fn is_reusable(&self) -> bool {
        self.buf.is_empty() && self.stream.is_quiet()
    }

    /// Resets the session for the next client, to what a fresh login with the same user,
    /// database and options gives: `COM_RESET_CONNECTION` (variables, temporary tables,
    /// prepared statements, locks, autocommit, isolation, character set), then the login's
    /// database again, which a reset keeps as the last client left it (`USE`), and a read-only
    /// connection made read-only again. The commands go out together and cost one round trip.
    /// A connection that logged in with no database cannot be given "no database" back: it is
    /// reusable only if no database was selected. `Ok(false)` means it must not be reused.
    ///
    /// # Errors
    /// I/O failure.
    pub async fn reset(&mut self) -> Result<bool, BackendError> {
        // The server forgets the session state and every prepared statement.
        self.kept = Kept::default();
        let mut out = BytesMut::with_capacity(128);
        packet::encode(&mut out, 0, &[command::RESET_CONNECTION]);
        let mut init_db = Vec::with_capacity(64);
        match &self.database {
            Some(db) => {
                init_db.push(command::INIT_DB);
                init_db.extend_from_slice(db.as_bytes());
            }
            None => {
                init_db.push(command::QUERY);
                init_db.extend_from_slice(b"SELECT DATABASE() IS NULL");
            }
        }
        packet::encode(&mut out, 0, &init_db);
        if self.read_only {
            let mut payload = vec![command::QUERY];
            payload.extend_from_slice(READ_ONLY_SQL.as_bytes());
            packet::encode(&mut out, 0, &payload);
        }
        self.stream.send(&out).await?;
        // Every answer is read, whatever the first says, so the stream stays in step.
        let reset = self.read_packet().await?;
        let reset_ok = reset.payload.first() == Some(&0x00);
        let database_ok = match &self.database {
            Some(_) => {
                let p = self.read_packet().await?;
                if p.payload.first() == Some(&0x00) {
                    self.status = ok_status(&p.payload).unwrap_or(status::AUTOCOMMIT);
                }
                p.payload.first() == Some(&0x00)
            }
            None => self.read_rows().await.is_ok_and(|rows| rows == [vec![Some("1".to_owned())]]),
        };
        let read_only_ok = !self.read_only || self.read_rows().await.is_ok();
        Ok(reset_ok && database_ok && read_only_ok && self.status & status::IN_TRANS == 0)
    }
    /// Says goodbye.
    pub async fn quit(mut self) {
        let _ = self.stream.send(&[1, 0, 0, 0, command::QUIT]).await;
    }
}

impl crate::pool::Pooled for MyConn {
    fn is_reusable(&self) -> bool {
        MyConn::is_reusable(self)
    }

    async fn close(self) {
        self.quit().await;
    }

    fn hold(&mut self, place: crate::metrics::Place) {
        self.open.hold(place);
    }
}

/// The auth response for `plugin`.
///
/// # Errors
/// A passthrough login ([`Login::native_key`]) asked for another plugin than
/// `mysql_native_password`.
fn scramble(plugin: &str, nonce: &[u8], login: &Login<'_>) -> Result<Vec<u8>, BackendError> {
    let nonce = nonce.get(..nonce.len().min(20)).unwrap_or_default();
    if let Some(key) = &login.native_key {
        if plugin != "mysql_native_password" {
            return Err(BackendError::Protocol(format!(
                "the server asks for {plugin} for user {:?}, whose config keeps a mysql_native_password hash: \
                 passthrough needs mysql_native_password on the server",
                login.user
            )));
        }
        return Ok(super::scramble::native_from_key(nonce, key).to_vec());
    }
    let password = login.password;
    if password.is_empty() {
        return Ok(Vec::new());
    }
    Ok(match plugin {
        "caching_sha2_password" => {
            super::scramble::sha256(nonce, password.as_bytes()).map(|s| s.to_vec()).unwrap_or_default()
        }
        _ => super::scramble::native(nonce, password.as_bytes()).map(|s| s.to_vec()).unwrap_or_default(),
    })
}

/// The values of a text-protocol row: length-encoded strings, `0xFB` for NULL.
fn text_row(mut p: &[u8]) -> Vec<Option<String>> {
    let mut values = Vec::new();
    while let Some(&first) = p.first() {
        if first == 0xFB {
            values.push(None);
            p = p.get(1..).unwrap_or_default();
            continue;
        }
        let Some((len, n)) = lenenc(p) else { break };
        let end = n + usize::try_from(len).unwrap_or(usize::MAX);
        let Some(bytes) = p.get(n..end) else { break };
        values.push(Some(String::from_utf8_lossy(bytes).into_owned()));
        p = p.get(end..).unwrap_or_default();
    }
    values
}

/// A refusal carrying the server's ERR payload and its message.
pub fn refused(payload: Bytes) -> BackendError {
    let message = String::from_utf8_lossy(payload.get(9..).unwrap_or_default()).into_owned();
    BackendError::Refused { error: payload, message }
}
