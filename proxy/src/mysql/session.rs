//! A MySQL client session. The protocol is one command, one answer, so the relay is a loop:
//! read a command, decide where it runs ([`crate::route`], the same rules as PostgreSQL with the
//! MySQL dialect of the classifier), make sure that connection has the session's state, send
//! the command, and stream the answer back while following it ([`Tracker`]) to its end and its
//! status flags. Rows are never decoded.
//!
//! Prepared statements (`COM_STMT_*`) run on the primary connection, so their ids are the
//! primary's and need no mapping.

use std::sync::atomic::Ordering::Relaxed;

use crate::tls::ClientStream;
use bytes::{Buf, BytesMut};
use sqlswitch_protocol::classify::{classify_mysql_with, Class, TxControl};
use sqlswitch_protocol::mysql::command::{self, Answer};
use sqlswitch_protocol::mysql::packet::{self, err_payload, ok_payload, HEADER_LEN};
use sqlswitch_protocol::mysql::response::{autocommit_off, in_transaction, needs_whole, Step, Tracker};
use sqlswitch_protocol::mysql::{caps, code, status};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::backend::{Login, MyConn};
use super::statements::{carries_statement, prepare_on, Statements};
use super::threads::{self, Found, ThreadId};
use crate::backend::BackendError;
use crate::cluster::{Cluster, Mode, PoolKey};
use crate::route::{self, Reason, SessionView, Target};
use crate::session::state::SessionState;
use crate::session::{Counted, Pair, PrimaryWork, Side};
use sqlswitch_protocol::mysql::handshake::{auth_switch_request, ChangeUser};

/// Who the session is (replaced whole by `COM_CHANGE_USER`).
pub struct Identity<'a> {
    /// The cluster.
    pub cluster: &'a Cluster,
    /// Login user.
    pub user: String,
    /// Its password, for more backend connections.
    pub password: String,
    /// Initial database.
    pub database: Option<String>,
    /// The client's capabilities, within what the proxy relays.
    pub caps: u32,
    /// The client's collation.
    pub charset: u8,
    /// What its connections are pooled by.
    pub key: PoolKey,
    /// Read-only session.
    pub read_only: bool,
    /// It came in on the read-only listener.
    pub listener_read_only: bool,
}

impl<'a> Identity<'a> {
    /// The identity of `user` (who must be configured) logging in with these settings.
    pub fn new(
        cluster: &'a Cluster,
        user: &str,
        database: Option<&str>,
        caps: u32,
        charset: u8,
        listener_read_only: bool,
    ) -> Option<Self> {
        let users = cluster.users.load();
        let account = users.get(user)?;
        let read_only = listener_read_only || account.read_only;
        let caps = caps & caps::OFFERED;
        let mut params = vec![("database".to_owned(), database.unwrap_or_default().to_owned())];
        params.push(("caps".to_owned(), caps.to_string()));
        params.push(("charset".to_owned(), charset.to_string()));
        if read_only {
            params.push(("read_only".to_owned(), "on".to_owned()));
        }
        Some(Self {
            cluster,
            user: user.to_owned(),
            password: account.password.clone(),
            database: database.map(str::to_owned),
            caps,
            charset,
            key: PoolKey { user: user.to_owned(), params },
            read_only,
            listener_read_only,
        })
    }
}

/// The session's first connection: the first candidate backend that takes the login. A
/// refusal by a server (no such database) is final: every backend would say the same.
///
/// # Errors
/// The last backend's error.
pub async fn first_connection(id: &Identity<'_>) -> Result<(usize, MyConn), BackendError> {
    let mut last_error = BackendError::Protocol("the cluster has no backend for this session".into());
    for index in id.cluster.candidates(id.read_only) {
        match acquire(id, index).await {
            Ok(conn) => {
                if conn.caps & caps::DEPRECATE_EOF != id.caps & caps::DEPRECATE_EOF {
                    return Err(BackendError::Protocol(
                        "the backend does not support the client's result format (CLIENT_DEPRECATE_EOF)".into(),
                    ));
                }
                return Ok((index, conn));
            }
            Err(e @ BackendError::Refused { .. }) => return Err(e),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

/// The error packet for a failed first connection.
pub fn first_connection_error(cluster: &Cluster, e: BackendError) -> Vec<u8> {
    let text = cluster.no_session(&e);
    match e {
        BackendError::Refused { error, .. } => error.to_vec(),
        _ => err_payload(code::UNKNOWN, "08S01", &text),
    }
}

/// A pooled or new connection to backend `index` for this session.
///
/// # Errors
/// The backend could not be reached or refused the login.
pub async fn acquire(id: &Identity<'_>, index: usize) -> Result<MyConn, BackendError> {
    let b = &id.cluster.backends[index];
    let tls = id.cluster.backend_tls.load_full();
    let login = Login {
        user: &id.user,
        password: &id.password,
        database: id.database.as_deref(),
        caps: id.caps,
        charset: id.charset,
        read_only: id.read_only,
        tls: tls.as_deref(),
    };
    let open = || MyConn::connect(&b.address, &login, id.cluster.config.connect_timeout, &b.metrics);
    b.checkout(&id.key, id.cluster.limits(), open).await
}

/// One backend connection of the session.
pub struct MySlot<'a> {
    /// The connection.
    pub conn: MyConn,
    /// Keys this connection's prepared statement ids.
    pub conn_id: u64,
    /// Which backend.
    pub backend: usize,
    /// How many of the session's state statements ran here.
    pub replayed: usize,
    /// Keeps the backend's session count.
    pub counted: Counted<'a>,
}

/// How a session ended.
#[derive(Debug)]
pub enum End {
    /// `COM_QUIT`.
    Quit,
    /// The client went away or broke the protocol.
    ClientGone,
    /// A backend failed mid-answer; the client has been told.
    BackendGone,
    /// Shutdown while idle.
    Shutdown,
    /// Another connection ran `KILL CONNECTION` on this one.
    Killed,
}

/// A running session.
pub struct MySession<'a> {
    client: ClientStream,
    cbuf: BytesMut,
    /// The command being sent to a backend, reused from command to command.
    wire: BytesMut,
    id: Identity<'a>,
    slots: Pair<MySlot<'a>>,
    active: Option<Side>,
    state: SessionState,
    read_only: bool,
    primary_work: PrimaryWork,
    statements: Statements,
    /// The client's connection id, for `KILL`.
    thread: ThreadId,
    peer: std::net::SocketAddr,
}

/// Why an answer could not be relayed whole.
#[derive(Debug, Clone, Copy)]
enum Fail {
    /// The backend failed; `forwarded` says whether any of the answer reached the client.
    Backend { forwarded: bool },
    /// The client went away.
    Client,
}

/// A command's route.
struct Plan {
    side: Side,
    backend: usize,
    reason: Reason,
    read: bool,
    record: Option<String>,
}

impl<'a> MySession<'a> {
    /// A session over a logged-in client and its first backend connection.
    pub fn new(
        client: ClientStream,
        cbuf: BytesMut,
        id: Identity<'a>,
        first: MySlot<'a>,
        side: Side,
        thread: ThreadId,
        peer: std::net::SocketAddr,
    ) -> Self {
        let read_only = id.read_only;
        let mut slots = Pair::default();
        slots[side] = Some(first);
        Self {
            client,
            cbuf,
            wire: BytesMut::new(),
            id,
            slots,
            active: Some(side),
            state: SessionState::default(),
            read_only,
            primary_work: PrimaryWork::default(),
            statements: Statements::default(),
            thread,
            peer,
        }
    }

    /// Whether a transaction is open, as the server said in its last answer: what the gate,
    /// the drain and shutdown count.
    fn in_tx(&self) -> bool {
        self.active.and_then(|s| self.slots[s].as_ref()).is_some_and(|s| in_transaction(s.conn.status))
    }

    /// Whether the session runs with autocommit off (PyMySQL's and mysqlclient's default): its
    /// next statement opens a transaction.
    fn autocommit_off(&self) -> bool {
        self.active.and_then(|s| self.slots[s].as_ref()).is_some_and(|s| autocommit_off(s.conn.status))
    }

    /// Relays commands until the client quits or `shutdown` fires between transactions.
    pub async fn run(&mut self, shutdown: &CancellationToken) -> End {
        loop {
            let packet = loop {
                match packet::decode(&mut self.cbuf, self.id.cluster.config.max_message_size) {
                    Ok(Some(p)) => break p,
                    Ok(None) => {}
                    Err(e) => {
                        self.err(1, code::PACKET_TOO_LARGE, "08S01", &e.to_string()).await;
                        return End::ClientGone;
                    }
                }
                self.cbuf.reserve(8 * 1024);
                let idle = !self.in_tx();
                let idle_timeout = self.id.cluster.config.idle_timeout.filter(|_| idle);
                tokio::select! {
                    () = shutdown.cancelled(), if idle => return End::Shutdown,
                    () = self.thread.end.cancelled() => return End::Killed,
                    () = sleep_or_never(idle_timeout) => {
                        let text = "The client was disconnected by the server because of inactivity (idle_timeout)";
                        self.err(0, code::CLIENT_INACTIVE, "HY000", text).await;
                        return End::ClientGone;
                    }
                    r = self.client.read_buf(&mut self.cbuf) => if !matches!(r, Ok(n) if n > 0) { return End::ClientGone },
                }
            };
            let Some(&cmd) = packet.payload.first() else { return End::ClientGone };
            let reply_seq = packet.last_seq.wrapping_add(1);
            if cmd == command::QUIT {
                return End::Quit;
            }
            if cmd == command::CHANGE_USER {
                if let Err(end) = self.change_user(&packet, reply_seq).await {
                    return end;
                }
                continue;
            }
            let Some(answer) = command::answer(cmd) else {
                let text = format!("command 0x{cmd:02x} is not supported by sqlswitch");
                self.err(reply_seq, code::UNKNOWN_COMMAND, "08S01", &text).await;
                continue;
            };
            match self.command(&packet, cmd, answer, reply_seq).await {
                Ok(()) => {}
                Err(end) => return end,
            }
        }
    }

    async fn err(&mut self, seq: u8, code: u16, state: &str, text: &str) {
        let mut out = BytesMut::new();
        packet::encode(&mut out, seq, &err_payload(code, state, text));
        let _ = self.client.send(&out).await;
    }

    async fn command(&mut self, packet: &packet::Packet, cmd: u8, answer: Answer, seq: u8) -> Result<(), End> {
        let cluster = self.id.cluster;
        let plan = match cmd {
            command::QUERY => {
                let sql = String::from_utf8_lossy(packet.payload.get(1..).unwrap_or_default());
                if let Some((target, connection)) = threads::parse_kill(&sql) {
                    return self.kill(target, connection, seq).await;
                }
                if sql.trim_start().get(..4).is_some_and(|w| w.eq_ignore_ascii_case("kill")) {
                    // Other forms (KILL USER, KILL QUERY ID) would name server-side things.
                    let text = "only KILL [QUERY | CONNECTION] <id> is supported through sqlswitch";
                    self.err(seq, code::NOT_SUPPORTED_YET, "42000", text).await;
                    return Ok(());
                }
                let v = classify_mysql_with(&sql, &cluster.config.read_only_functions);
                let maintenance = cluster.table.load().mode == Mode::ReadOnly && !self.in_tx();
                let may_write = v.may_write();
                // A session the client itself declared read-only may declare itself read-write
                // again, as directly; one made read-only by its user or listener may not.
                let undeclares = !self.id.read_only && v.session_read_only == Some(false);
                if (self.read_only && v.refused_read_only() && !undeclares) || (maintenance && may_write) {
                    cluster.metrics.refused.increment(1);
                    let why = if self.read_only {
                        "the session is read-only"
                    } else {
                        "the cluster is in read-only maintenance mode"
                    };
                    let text = format!("The MySQL server is running with the --read-only option so it cannot execute this statement ({why}; sqlswitch)");
                    self.err(seq, code::OPTION_PREVENTS_STATEMENT, "HY000", &text).await;
                    return Ok(());
                }
                if let Some(declared) = v.session_read_only.filter(|_| !self.id.read_only) {
                    self.read_only = declared;
                }
                let in_tx = self.in_tx();
                let mut record = None;
                if v.pin.is_some() || (v.session && (in_tx || v.statements > 1)) || v.serializable {
                    self.state.pinned = true;
                } else if v.class == Class::Session {
                    record = Some(sql.into_owned());
                }
                // `SHOW WARNINGS` and friends are about the last statement: the connection that
                // ran it answers.
                let last = self.active.and_then(|side| self.slots[side].as_ref().map(|s| (side, s.backend)));
                if let Some((side, backend)) = last.filter(|_| v.about_last_statement && record.is_none()) {
                    Plan { side, backend, reason: Reason::Transaction, read: true, record: None }
                } else {
                    let batch = route::Batch {
                        read: v.is_read(),
                        begins_read_only_tx: matches!(v.class, Class::Tx(TxControl::Begin(o)) if o.read_only == Some(true)),
                        session_state: record.is_some() || self.state.pinned,
                    };
                    self.plan(&batch, record)
                }
            }
            command::INIT_DB => {
                let db = String::from_utf8_lossy(packet.payload.get(1..).unwrap_or_default()).replace('`', "``");
                let batch = route::Batch { session_state: true, ..Default::default() };
                self.plan(&batch, Some(format!("USE `{db}`")))
            }
            // A prepared read may execute on a replica (prepared there lazily).
            command::STMT_EXECUTE if packet.payload.len() >= 6 => {
                let id = le_u32(&packet.payload, 1).unwrap_or(0);
                let read = self.statements.replica_ok(id, packet.payload.get(5).copied().unwrap_or(0));
                self.statements.set_long_data(id, false);
                let batch = route::Batch { read, ..Default::default() };
                self.plan(&batch, None)
            }
            // Long data, resets, cursors, field lists, options: the primary connection.
            _ => {
                if let Some(id) = le_u32(&packet.payload, 1).filter(|_| cmd == command::STMT_SEND_LONG_DATA) {
                    self.statements.set_long_data(id, true);
                }
                if matches!(cmd, command::SET_OPTION | command::RESET_CONNECTION) {
                    self.state.pinned = true;
                }
                let batch = route::Batch { session_state: true, ..Default::default() };
                self.plan(&batch, None)
            }
        };
        self.execute(packet, answer, plan, seq).await
    }

    fn plan(&self, batch: &route::Batch, record: Option<String>) -> Plan {
        let current_replica = self.slots[Side::Replica].as_ref().map(|s| s.backend);
        let in_tx_on = if self.in_tx() {
            Some(match self.active {
                Some(Side::Replica) => Target::Replica(current_replica.unwrap_or(0)),
                _ => Target::Primary,
            })
        } else if self.autocommit_off() && !self.read_only {
            // The statement opens a transaction that later writes may join: the primary.
            Some(Target::Primary)
        } else {
            None
        };
        let session = SessionView {
            read_only: self.read_only,
            pinned: self.state.pinned,
            in_tx_on,
            last_write: self.state.last_write,
            current_replica,
        };
        let (target, reason, primary) = self.id.cluster.route(batch, &session);
        let read = batch.read;
        match target {
            Target::Primary => Plan { side: Side::Primary, backend: primary, reason, read, record },
            Target::Replica(i) => Plan { side: Side::Replica, backend: i, reason, read, record },
        }
    }

    /// Sends the command where `plan` says (a replica that fails before answering hands it to
    /// the primary) and relays the answer.
    async fn execute(&mut self, packet: &packet::Packet, answer: Answer, mut plan: Plan, seq: u8) -> Result<(), End> {
        let cluster = self.id.cluster;
        if !self.in_tx() {
            loop {
                match self.primary_work.pass(cluster, plan.side == Side::Primary).await {
                    Ok(true) => break,
                    Ok(false) => plan = self.plan(&route::Batch { read: plan.read, ..Default::default() }, plan.record),
                    Err(text) => {
                        self.err(seq, code::UNKNOWN, "HY000", &text).await;
                        return Ok(());
                    }
                }
            }
        }
        // The command as it goes out, in a buffer the session keeps (no allocation per command).
        let mut wire = std::mem::take(&mut self.wire);
        wire.clear();
        packet::encode(&mut wire, packet.seq, &packet.payload);
        let result = self.execute_wire(packet, answer, plan, seq, &mut wire).await;
        // A large command's buffer is not kept for the rest of the session.
        if wire.capacity() <= 64 * 1024 {
            self.wire = wire;
        }
        result
    }

    async fn execute_wire(
        &mut self,
        packet: &packet::Packet,
        answer: Answer,
        mut plan: Plan,
        seq: u8,
        wire: &mut BytesMut,
    ) -> Result<(), End> {
        let cluster = self.id.cluster;
        loop {
            match self.send(&plan, wire).await {
                Ok(()) => {}
                Err(BackendError::Closed) => {
                    // What a direct client's library reports (CR_SERVER_GONE_ERROR); then the
                    // connection closes, as the server closed its own.
                    let text = "MySQL server has gone away (the server closed this session's connection and its open transaction)";
                    self.err(seq, code::SERVER_GONE, "HY000", text).await;
                    return Err(End::BackendGone);
                }
                Err(e) if plan.side == Side::Replica => {
                    if matches!(e, BackendError::Refused { .. }) {
                        // The replica refused the session's own state (a replayed statement,
                        // a prepare, the login): the session stays on the primary, and the
                        // replica serves everyone else.
                        warn!(error = %e, "a replica refused this session's state; the session stays on the primary");
                        self.state.pinned = true;
                        self.slots[Side::Replica] = None;
                        if self.active == Some(Side::Replica) {
                            self.active = None;
                        }
                    } else {
                        warn!(error = %e, "replica unavailable for this command; using the primary");
                        self.drop_slot(Side::Replica);
                    }
                    plan.side = Side::Primary;
                    plan.backend = cluster.table.load().primary;
                    continue;
                }
                Err(e) => {
                    self.leave_primary();
                    self.err(seq, code::UNKNOWN, "08S01", &format!("sqlswitch cannot reach the primary: {e}")).await;
                    return Ok(());
                }
            }
            cluster.metrics.count_routed(plan.side == Side::Replica, plan.reason, 1);
            cluster.backends[plan.backend].queries.fetch_add(1, Relaxed);
            let prepared_sql = (packet.payload.first() == Some(&command::STMT_PREPARE))
                .then(|| packet.payload.get(1..).unwrap_or_default());
            match self.relay(plan.side, answer, prepared_sql).await {
                Ok(failed) => {
                    if !failed {
                        if let Some(sql) = plan.record.take() {
                            self.state.record(sql);
                            if let Some(slot) = self.slots[plan.side].as_mut() {
                                slot.replayed = self.state.replay.len();
                            }
                        }
                    }
                    if plan.side == Side::Primary && !plan.read && plan.reason != Reason::SessionState {
                        self.state.last_write = Some(cluster.clock.now());
                    }
                    if !self.in_tx() {
                        self.leave_primary();
                    }
                    return Ok(());
                }
                Err(Fail::Client) => {
                    // The client left mid-command: stop the query rather than let it run for
                    // nobody, and close the connection, whose state is unknown.
                    self.kill_query(plan.side).await;
                    return Err(End::ClientGone);
                }
                Err(Fail::Backend { forwarded }) if plan.side == Side::Replica && !forwarded && !self.in_tx() => {
                    warn!("a replica failed before answering; sending the command to the primary");
                    self.drop_slot(Side::Replica);
                    plan.side = Side::Primary;
                    plan.backend = cluster.table.load().primary;
                }
                Err(_) => {
                    self.err(seq, code::UNKNOWN, "08S01", "the database server closed the connection unexpectedly")
                        .await;
                    return Err(End::BackendGone);
                }
            }
        }
    }

    /// `COM_CHANGE_USER`: a new login on the same connection. The client proves the new
    /// user's password against a fresh scramble (an auth switch), then everything of the old
    /// session is dropped — connections (reset and pooled), variables, prepared statements — as
    /// a server does, and the new login is proven on a backend like a new connection's.
    async fn change_user(&mut self, packet: &packet::Packet, seq: u8) -> Result<(), End> {
        let request = match ChangeUser::parse(&packet.payload, self.id.caps) {
            Ok(r) => r,
            Err(e) => {
                self.err(seq, code::HANDSHAKE, "08S01", &e.to_string()).await;
                return Err(End::ClientGone);
            }
        };
        let nonce = super::new_nonce();
        let mut out = BytesMut::new();
        packet::encode(&mut out, seq, &auth_switch_request(super::NATIVE, &nonce));
        self.client.send(&out).await.map_err(|_| End::ClientGone)?;
        let answer = super::read_packet(&mut self.client, &mut self.cbuf).await.map_err(|_| End::ClientGone)?;
        let seq = answer.last_seq.wrapping_add(1);
        let cluster = self.id.cluster;
        let new_id = Identity::new(
            cluster,
            &request.user,
            request.database.as_deref(),
            self.id.caps,
            request.charset.unwrap_or(self.id.charset),
            self.id.listener_read_only,
        );
        let verified = super::password_ok(cluster, &request.user, &nonce, false, &answer.payload);
        let Some(new_id) = new_id.filter(|_| verified) else {
            let text = super::access_denied(&request.user, self.peer, &answer.payload);
            self.err(seq, code::ACCESS_DENIED, "28000", &text).await;
            return Err(End::ClientGone);
        };
        // Nothing of the old session carries over.
        self.leave_primary();
        for (_, slot) in std::mem::take(&mut self.slots) {
            let Some(slot) = slot else { continue };
            release(cluster, &self.id.key, slot).await;
        }
        self.active = None;
        self.state = SessionState::default();
        self.statements = Statements::default();
        self.read_only = new_id.read_only;
        self.id = new_id;
        self.thread.set_user(&self.id.user);
        self.thread.set_target(None);
        match first_connection(&self.id).await {
            Ok((index, conn)) => {
                let side = if cluster.table.load().is_primary(index) { Side::Primary } else { Side::Replica };
                let mut out = BytesMut::new();
                packet::encode(&mut out, seq, &ok_payload(conn.status));
                self.slots[side] = Some(MySlot {
                    conn,
                    conn_id: super::statements::next_conn_id(),
                    backend: index,
                    replayed: 0,
                    counted: Counted::new(&cluster.backends[index].sessions),
                });
                self.active = Some(side);
                self.client.send(&out).await.map_err(|_| End::ClientGone)?;
                debug!(user = %self.id.user, "changed user");
                Ok(())
            }
            Err(e) => {
                let mut out = BytesMut::new();
                packet::encode(&mut out, seq, &first_connection_error(cluster, e));
                let _ = self.client.send(&out).await;
                Err(End::ClientGone)
            }
        }
    }

    /// Stops the query running on `side`'s connection and drops the connection.
    async fn kill_query(&mut self, side: Side) {
        let Some(slot) = self.slots[side].take() else { return };
        let thread = slot.conn.thread_id;
        match self.kill_thread(slot.backend, thread).await {
            Ok(()) => debug!(thread, "stopped the query of a client that left"),
            Err(e) => warn!(thread, error = %e, "could not stop the query of a client that left"),
        }
        slot.conn.quit().await;
        if self.active == Some(side) {
            self.active = None;
        }
    }

    /// `KILL QUERY <thread>` on `backend`, sent as the session's user (who may always stop its
    /// own threads) on a connection of its own.
    async fn kill_thread(&self, backend: usize, thread: u32) -> Result<(), BackendError> {
        let mut killer = acquire(&self.id, backend).await?;
        killer.simple_query(&format!("KILL QUERY {thread}")).await?;
        if let Some(extra) = self.id.cluster.backends[backend].put(self.id.key.clone(), killer) {
            extra.quit().await;
        }
        Ok(())
    }

    /// A client's `KILL [QUERY | CONNECTION] <id>`, with the proxy's connection ids.
    async fn kill(&mut self, target: u32, connection: bool, seq: u8) -> Result<(), End> {
        match self.id.cluster.mysql_threads.kill(target, &self.id.user, connection) {
            Found::Unknown => {
                self.err(seq, code::NO_SUCH_THREAD, "HY000", &format!("Unknown thread id: {target}")).await;
            }
            Found::NotOwner => {
                self.err(seq, code::KILL_DENIED, "HY000", &format!("You are not owner of thread {target}")).await;
            }
            Found::Thread(running) => {
                if let Some((backend, thread)) = running.filter(|_| target != self.thread.id) {
                    if let Err(e) = self.kill_thread(backend, thread).await {
                        let text = format!("sqlswitch could not stop thread {target}: {e}");
                        self.err(seq, code::UNKNOWN, "HY000", &text).await;
                        return Ok(());
                    }
                }
                if connection && target == self.thread.id {
                    self.err(seq, code::CONNECTION_KILLED, "70100", "Connection was killed").await;
                    return Err(End::Killed);
                }
                let status =
                    self.active.and_then(|s| self.slots[s].as_ref()).map_or(status::AUTOCOMMIT, |s| s.conn.status);
                let mut out = BytesMut::new();
                packet::encode(&mut out, seq, &ok_payload(status));
                self.client.send(&out).await.map_err(|_| End::ClientGone)?;
            }
        }
        Ok(())
    }

    fn leave_primary(&mut self) {
        self.primary_work.leave(self.id.cluster);
    }

    fn drop_slot(&mut self, side: Side) {
        if let Some(slot) = self.slots[side].take() {
            if side == Side::Replica {
                self.id.cluster.backends[slot.backend].health.mark_failed();
            }
        }
        if self.active == Some(side) {
            self.active = None;
        }
    }

    /// Makes sure `plan.side` has a connection to `plan.backend` with the session state, then
    /// sends `wire`.
    async fn send(&mut self, plan: &Plan, wire: &mut BytesMut) -> Result<(), BackendError> {
        let side = plan.side;
        // A connection the server closed between commands (a timeout, a kill) is replaced,
        // with the session state replayed, unless it held an open transaction: that is lost,
        // and the client must hear it.
        let dead = self.slots[side].as_ref().is_some_and(|s| !s.conn.is_reusable());
        if dead && self.active == Some(side) && self.in_tx() {
            self.slots[side] = None;
            self.active = None;
            return Err(BackendError::Closed);
        }
        let replace = self.slots[side].as_ref().is_none_or(|s| s.backend != plan.backend || dead);
        if replace {
            if let Some(old) = self.slots[side].take() {
                release(self.id.cluster, &self.id.key, old).await;
            }
            let conn = acquire(&self.id, plan.backend).await?;
            let counted = Counted::new(&self.id.cluster.backends[plan.backend].sessions);
            self.slots[side] = Some(MySlot {
                conn,
                conn_id: super::statements::next_conn_id(),
                backend: plan.backend,
                replayed: 0,
                counted,
            });
        }
        let slot = self.slots[side].as_mut().ok_or_else(|| BackendError::Protocol("no connection".into()))?;
        while let Some(sql) = self.state.replay.get(slot.replayed) {
            slot.conn.simple_query(sql).await?;
            slot.replayed += 1;
        }
        let mut close_elsewhere = Vec::new();
        // A command naming a prepared statement names it as this connection knows it,
        // preparing it here first if it never ran here.
        let cmd = wire.get(HEADER_LEN).copied().unwrap_or(0);
        let at = HEADER_LEN + 1;
        if let Some(client_id) = le_u32(wire, at).filter(|_| carries_statement(cmd)) {
            let backend_id = match self.statements.on(client_id, slot.conn_id) {
                Some(b) => Some(b),
                None => match self.statements.sql(client_id).map(<[u8]>::to_vec) {
                    Some(sql) => {
                        let b = prepare_on(&mut slot.conn, &sql).await?;
                        self.statements.record(client_id, slot.conn_id, b);
                        Some(b)
                    }
                    None => None,
                },
            };
            if let Some((b, field)) = backend_id.zip(wire.get_mut(at..at + 4)) {
                field.copy_from_slice(&b.to_le_bytes());
            }
            if cmd == command::STMT_EXECUTE && wire.len() < packet::MAX_PAYLOAD {
                let payload = wire.get(HEADER_LEN..).unwrap_or_default();
                if let Some(payload) = self.statements.execute_payload(client_id, slot.conn_id, payload) {
                    wire.clear();
                    packet::encode(wire, 0, &payload);
                }
            }
            if cmd == command::STMT_CLOSE {
                close_elsewhere = self.statements.prepared_elsewhere(client_id, slot.conn_id);
                self.statements.remove(client_id);
            }
        }
        self.thread.set_target(Some((plan.backend, slot.conn.thread_id)));
        slot.conn.stream.send(wire).await?;
        // A closed statement is closed on the session's other connection too (no answer comes).
        if let Some(o) = self.slots[side.other()].as_mut() {
            if let Some((_, id)) = close_elsewhere.iter().find(|(c, _)| *c == o.conn_id) {
                let mut payload = vec![command::STMT_CLOSE];
                payload.extend_from_slice(&id.to_le_bytes());
                let mut close = BytesMut::new();
                packet::encode(&mut close, 0, &payload);
                o.conn.stream.send(&close).await?;
            }
        }
        self.active = Some(plan.side);
        Ok(())
    }

    /// Streams the answer on `side` to the client.
    ///
    /// Slices of the read buffer here are bounded by the packet header just checked against
    /// the bytes buffered (`avail`), so they cannot be out of range. `Ok(failed)` when it is complete (`failed`:
    /// it was an error); [`Fail`] when the backend failed or the client left.
    #[expect(clippy::indexing_slicing, reason = "every slice is within the header-checked bytes buffered")]
    async fn relay(&mut self, side: Side, answer: Answer, prepared_sql: Option<&[u8]>) -> Result<bool, Fail> {
        let statements = &mut self.statements;
        let Some(slot) = self.slots[side].as_mut() else { return Err(Fail::Backend { forwarded: false }) };
        let conn_id = slot.conn_id;
        let conn = &mut slot.conn;
        let mut first_packet = true;
        let mut tracker = Tracker::new(answer, conn.caps & caps::DEPRECATE_EOF != 0);
        if tracker.done() {
            return Ok(false);
        }
        let mut forwarded = false;
        let mut client_eof = false;
        let mut passthrough = 0usize;
        loop {
            let mut fwd = 0;
            let mut done = None;
            loop {
                if passthrough > 0 {
                    let n = passthrough.min(conn.buf.len() - fwd);
                    fwd += n;
                    passthrough -= n;
                    if passthrough > 0 {
                        break;
                    }
                }
                let Some(h) = packet::peek_header(&conn.buf[fwd..]) else { break };
                let avail = conn.buf.len() - fwd - HEADER_LEN;
                let first = conn.buf.get(fwd + HEADER_LEN).copied();
                // Terminators and result headers are small: read them whole. A large packet
                // that starts like one is a row: its first bytes are enough.
                let whole = h.len == 0 || (first.is_some_and(needs_whole) && h.len <= 64 * 1024);
                if (whole && avail < h.len) || (!whole && avail == 0) {
                    break;
                }
                let seen = avail.min(h.len);
                if std::mem::take(&mut first_packet) && answer == Answer::Prepare && first == Some(0x00) && seen >= 9 {
                    // The client gets the proxy's own statement id.
                    if let Some(sql) = prepared_sql {
                        let at = fwd + HEADER_LEN + 1;
                        let b = &conn.buf[at..at + 4];
                        let backend_id = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                        let params = u16::from_le_bytes([conn.buf[at + 6], conn.buf[at + 7]]);
                        let client_id = statements.add(sql.to_vec(), params, conn_id, backend_id);
                        conn.buf[at..at + 4].copy_from_slice(&client_id.to_le_bytes());
                    }
                }
                let prefix = &conn.buf[fwd + HEADER_LEN..fwd + HEADER_LEN + seen];
                let step = tracker.feed(h.len, prefix).map_err(|_| Fail::Backend { forwarded })?;
                if seen < h.len {
                    fwd += HEADER_LEN + seen;
                    passthrough = h.len - seen;
                } else {
                    fwd += h.total_len();
                }
                if let Step::Done(flags) = step {
                    done = Some(flags);
                    break;
                }
            }
            if fwd > 0 {
                if self.client.send(&conn.buf[..fwd]).await.is_err() {
                    return Err(Fail::Client);
                }
                conn.buf.advance(fwd);
                forwarded = true;
            }
            if let Some(flags) = done {
                if let Some(f) = flags {
                    conn.status = f;
                }
                return Ok(tracker.failed);
            }
            conn.buf.reserve(16 * 1024);
            // Watch the client too: one that leaves while the server works (a long query)
            // must not leave the query running for nobody. Clients send nothing mid-command;
            // whatever they do send waits in the client buffer.
            if self.cbuf.capacity() - self.cbuf.len() < 1024 {
                self.cbuf.reserve(4096);
            }
            tokio::select! {
                () = self.thread.end.cancelled() => return Err(Fail::Client),
                r = conn.stream.read_buf(&mut conn.buf) => match r {
                    Ok(n) if n > 0 => {}
                    _ => return Err(Fail::Backend { forwarded }),
                },
                r = self.client.read_buf(&mut self.cbuf), if !client_eof => {
                    if !matches!(r, Ok(n) if n > 0) {
                        client_eof = true;
                        if !forwarded {
                            return Err(Fail::Client);
                        }
                    }
                }
            }
        }
    }

    /// Returns the session's connections to their pools.
    pub async fn release(mut self) {
        self.leave_primary();
        let cluster = self.id.cluster;
        for (_, slot) in std::mem::take(&mut self.slots) {
            let Some(slot) = slot else { continue };
            release(cluster, &self.id.key, slot).await;
        }
    }
}

impl Drop for MySession<'_> {
    fn drop(&mut self) {
        self.leave_primary();
    }
}

/// The little-endian `u32` at `at` in `b`, if four bytes are there.
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

/// Sleeps for `d`, or forever when there is none.
async fn sleep_or_never(d: Option<std::time::Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Resets a connection and pools it, or closes it.
async fn release(cluster: &Cluster, key: &PoolKey, slot: MySlot<'_>) {
    let mut conn = slot.conn;
    if matches!(conn.reset().await, Ok(true)) && conn.is_reusable() {
        if let Some(extra) = cluster.backends[slot.backend].put(key.clone(), conn) {
            extra.quit().await;
        }
    } else {
        conn.quit().await;
    }
}
