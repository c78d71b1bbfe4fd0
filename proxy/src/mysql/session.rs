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
use sqlswitch_protocol::classify::{classify_mysql_with, text::Text, Class, TxControl};
use sqlswitch_protocol::mysql::command::{self, Answer};
use sqlswitch_protocol::mysql::packet::{self, err_payload, ok_payload, HEADER_LEN};
use sqlswitch_protocol::mysql::response::{autocommit_off, in_transaction, needs_whole, Step, Tracker};
use sqlswitch_protocol::mysql::{caps, code, status};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::statements::{carries_statement, prepare_on, Statements};
use crate::backend::BackendError;
use crate::cluster::Cluster;
use crate::conn::mysql::{Login, MyConn};
use crate::pool::PoolKey;
use crate::route::{self, Reason};
use crate::session::core::{Core, Note, Tx};
use crate::session::state::SessionState;
use crate::session::{Refusal, Side};
use crate::threads::{self, Found, ThreadId};
use sqlswitch_protocol::mysql::handshake::{auth_switch_request, ChangeUser};

mod commands;
mod connect;
mod pooling;
mod relay;
mod send;
mod temporary;
use super::timeout::sleep_or_never;
use temporary::TempUse;

pub use connect::{acquire, first_connection, first_connection_error, Identity};

/// One backend connection of the session.
pub type MySlot<'a> = crate::session::core::Slot<'a, MyConn>;

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
    /// Bytes received from the client and from backends since they were last counted.
    received: (u64, u64),
    /// The command being sent to a backend, reused from command to command.
    wire: BytesMut,
    id: Identity<'a>,
    /// The connections, the session state, the gate: what both protocols share.
    core: Core<'a, MyConn>,
    statements: Statements,
    /// A read-only session's temporary tables, and where they are ([`super::temp`]).
    temp_tables: Vec<String>,
    temp_home: Option<(Side, usize)>,
    /// The client's connection id, for `KILL`.
    thread: ThreadId,
    /// The `wait_timeout` the session set ([`super::timeout`]).
    wait_timeout: Option<std::time::Duration>,
    peer: std::net::SocketAddr,
    pooling: pooling::Pooling,
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
    /// `BEGIN`, `COMMIT` and the like: they write nothing of their own.
    tx_control: bool,
    record: Option<String>,
    /// A read-only session's statement on its own temporary tables.
    temp: Option<TempUse>,
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
        let mut core = Core::new(id.cluster, id.read_only, id.key.user());
        core.start(side, first);
        Self {
            client,
            cbuf,
            received: (0, 0),
            wire: BytesMut::new(),
            id,
            core,
            statements: Statements::default(),
            temp_tables: Vec::new(),
            temp_home: None,
            thread,
            wait_timeout: None,
            peer,
            // The login's connection goes back (transaction pooling) before the first command: a
            // client that logs in and waits holds none.
            pooling: pooling::Pooling { boundary: true, ..Default::default() },
        }
    }

    /// Whether a transaction is open, as the server said in its last answer: what the gate,
    /// the drain and shutdown count.
    fn in_tx(&self) -> bool {
        self.core.active_slot().is_some_and(|s| in_transaction(s.conn.status))
    }

    /// Whether the session runs with autocommit off (PyMySQL's and mysqlclient's default): its
    /// next statement opens a transaction.
    fn autocommit_off(&self) -> bool {
        self.core.active_slot().map_or(self.pooling.autocommit_off, |s| autocommit_off(s.conn.status))
    }

    /// The session's transaction, for routing and the drain.
    fn tx(&self) -> Tx {
        if self.in_tx() {
            Tx::Open
        } else if self.autocommit_off() {
            Tx::Implicit
        } else {
            Tx::None
        }
    }

    /// Relays commands until the client quits or `shutdown` fires between transactions.
    pub async fn run(&mut self, shutdown: &CancellationToken) -> End {
        let mut moved_timer = crate::session::core::Timer::default();
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
                if self.between_commands().await {
                    // The one timer serves both: a session that keeps its connection after a
                    // write holds no state that stops it moving.
                    moved_timer.arm(crate::session::core::KEEP_AFTER_WRITE);
                }
                let idle = !self.in_tx();
                let idle_timeout = self.id.cluster.config.idle_timeout.filter(|_| idle);
                let stuck = idle && self.core.listening();
                if stuck {
                    moved_timer.arm(crate::session::core::MOVED_CHECK);
                }
                let keeping = idle && self.core.keeping();
                tokio::select! {
                    () = shutdown.cancelled(), if idle => return End::Shutdown,
                    () = moved_timer.fired(), if stuck || keeping => {
                        if !stuck {
                            self.keep_expired().await;
                        } else if let Some(e) = self.core.moved_away() {
                            self.end_unmovable(0, &e).await;
                            return End::BackendGone;
                        }
                    }
                    () = self.thread.end.cancelled() => return End::Killed,
                    // The server would close it: the client finds it gone, as directly.
                    () = sleep_or_never(self.wait_timeout) => return End::ClientGone,
                    () = sleep_or_never(idle_timeout) => {
                        let text = "The client was disconnected by the server because of inactivity (idle_timeout)";
                        self.err(0, code::CLIENT_INACTIVE, "HY000", text).await;
                        return End::ClientGone;
                    }
                    r = self.client.read_buf(&mut self.cbuf) => match r {
                        Ok(n) if n > 0 => self.received.0 += n as u64,
                        _ => return End::ClientGone,
                    },
                }
            };
            let Some(&cmd) = packet.payload.first() else { return End::ClientGone };
            let reply_seq = packet.last_seq.wrapping_add(1);
            if cmd == command::QUIT {
                return End::Quit;
            }
            if cmd == command::CHANGE_USER {
                // Boxed: a rare command whose login states would size every session's future.
                if let Err(end) = Box::pin(self.change_user(&packet, reply_seq)).await {
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
                Ok(()) => self.pooling.boundary = true,
                Err(end) => return end,
            }
        }
    }

    /// Ends a session whose state cannot move to the new primary, or whose open transaction
    /// cannot go on ([`BackendError::Ended`]), as a server restart would (error 1927,
    /// connection killed), with the reason.
    async fn end_unmovable(&mut self, seq: u8, e: &BackendError) {
        warn!(error = %e, "ending a session as on a lost connection");
        self.err(seq, code::CONNECTION_KILLED, "70100", &format!("Connection was killed: {e} (sqlswitch)")).await;
    }

    async fn err(&mut self, seq: u8, code: u16, state: &str, text: &str) {
        self.id.cluster.metrics.errors.count(false, state.as_bytes().get(..2).unwrap_or_default());
        let mut out = BytesMut::new();
        packet::encode(&mut out, seq, &err_payload(code, state, text));
        let _ = self.client.send(&out).await;
    }

    async fn command(&mut self, packet: &packet::Packet, cmd: u8, answer: Answer, seq: u8) -> Result<(), End> {
        let cluster = self.id.cluster;
        if !self.in_tx() {
            // A transaction boundary: the cluster's maintenance state holds for what follows
            // (every command: a prepared write then meets a read-only connection).
            self.core.at_boundary();
        }
        let plan = match cmd {
            command::QUERY => {
                // Any character set: text that is not UTF-8 is read as the classifier can
                // (classify::text), never refused.
                let read = Text::read(packet.payload.get(1..).unwrap_or_default());
                let (legacy, ambiguous, sql) = (read.legacy, read.ambiguous, read.sql);
                if let Some((target, connection)) = threads::parse_kill(&sql) {
                    // Boxed: ending another session may open a control connection.
                    return Box::pin(self.kill(target, connection, seq)).await;
                }
                if sql.trim_start().get(..4).is_some_and(|w| w.eq_ignore_ascii_case("kill")) {
                    // Other forms (KILL USER, KILL QUERY ID) would name server-side things.
                    let text = "only KILL [QUERY | CONNECTION] <id> is supported through sqlswitch";
                    self.err(seq, code::NOT_SUPPORTED_YET, "42000", text).await;
                    return Ok(());
                }
                let mut v = classify_mysql_with(&sql, &cluster.config.read_only_functions);
                if ambiguous && v.is_read() {
                    // Its quotes and escapes cannot be found without the character set.
                    v.class = Class::Unknown;
                }
                let may_write = v.may_write();
                // A session the client itself declared read-only may declare itself read-write
                // again, as directly; one made read-only by its user or listener may not.
                let undeclares = !self.id.read_only && v.session_read_only == Some(false);
                let temp = self.temp_use(&sql);
                let refused = self.core.refusal(v.refused_read_only() && !undeclares, may_write);
                let refusal = refused.filter(|_| temp.is_none()).map(|r| {
                    format!("The MySQL server is running with the --read-only option so it cannot execute this statement ({}; sqlswitch)", r.why())
                });
                if let Some(text) = refusal {
                    cluster.metrics.refused.increment(1);
                    self.err(seq, code::OPTION_PREVENTS_STATEMENT, "HY000", &text).await;
                    return Ok(());
                }
                if let Some(declared) = v.session_read_only.filter(|_| !self.id.read_only) {
                    self.core.set_read_only(declared);
                }
                let in_tx = self.in_tx();
                let releases = if v.releases { commands::releases_all_of(&sql) } else { 0 };
                let mut record = None;
                let note = if let Some(pin) = v.pin {
                    Note { pins: true, unmovable: crate::session::state::unmovable(pin, true), releases: false }
                } else if v.session && in_tx {
                    Note { pins: true, unmovable: Some("session state set inside a transaction"), releases: false }
                } else if v.session && (v.statements > 1 || legacy) {
                    Note { pins: true, unmovable: Some(commands::UNREPLAYABLE), releases: false }
                } else {
                    // `SET SESSION TRANSACTION ISOLATION LEVEL SERIALIZABLE` pins the session to
                    // the primary and, like any session setting, is replayed on every server
                    // connection it takes (the new primary's after a switchover included).
                    if v.class == Class::Session {
                        record = Some(sql.into_owned());
                    }
                    Note { pins: v.serializable, unmovable: None, releases: false }
                };
                self.core.note(note);
                if v.pin.is_some() && v.statements > 1 {
                    // Which kinds a multi-statement string pins is not known one by one: only
                    // a reset releases them.
                    self.core.note(Note { pins: true, unmovable: Some(commands::UNREPLAYABLE), releases: false });
                } else if releases != 0 {
                    self.core.released(releases);
                }
                // `SHOW WARNINGS` and friends are about the last statement: the connection that
                // ran it answers.
                let last = self.core.active().and_then(|side| self.core.slot(side).map(|s| (side, s.backend)));
                self.pooling.about_last = v.about_last_statement && record.is_none();
                if let Some((side, backend)) = last.filter(|_| v.about_last_statement && record.is_none()) {
                    Plan {
                        side,
                        backend,
                        reason: Reason::Transaction,
                        read: true,
                        tx_control: false,
                        record: None,
                        temp: None,
                    }
                } else {
                    let batch = route::Batch {
                        read: v.is_read(),
                        begins_read_only_tx: matches!(v.class, Class::Tx(TxControl::Begin(o)) if o.read_only == Some(true)),
                        session_state: record.is_some() || self.core.state().pinned(),
                    };
                    let mut plan = self.plan(&batch, record);
                    plan.temp = temp;
                    plan.tx_control = matches!(v.class, Class::Tx(_));
                    plan
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
                let flags = packet.payload.get(5).copied().unwrap_or(0);
                self.note_cursor(cmd, id, flags);
                let read = self.statements.replica_ok(id, flags);
                self.statements.set_long_data(id, false);
                let batch = route::Batch { read, ..Default::default() };
                let mut plan = self.plan(&batch, None);
                plan.tx_control = self.statements.tx_control(id);
                plan
            }
            // A bulk execution writes (MariaDB runs only DML in bulk): the primary, where the
            // session's writes go, counted for read-your-writes.
            command::STMT_BULK_EXECUTE => {
                let id = le_u32(&packet.payload, 1).unwrap_or(0);
                self.statements.set_long_data(id, false);
                self.plan(&route::Batch::default(), None)
            }
            // Long data, resets, cursors, field lists, options: the primary connection.
            _ => {
                if let Some(id) = le_u32(&packet.payload, 1).filter(|_| cmd == command::STMT_SEND_LONG_DATA) {
                    self.statements.set_long_data(id, true);
                }
                if let Some(id) = le_u32(&packet.payload, 1) {
                    self.note_cursor(cmd, id, 0);
                }
                if cmd == command::SET_OPTION {
                    self.core.note(Note {
                        pins: true,
                        unmovable: Some("a connection option (COM_SET_OPTION)"),
                        releases: false,
                    });
                } else if cmd == command::RESET_CONNECTION {
                    self.core.note(Note { pins: true, unmovable: None, releases: false });
                    self.wait_timeout = None;
                }
                let batch = route::Batch { session_state: true, ..Default::default() };
                self.plan(&batch, None)
            }
        };
        self.execute(packet, answer, plan, seq).await
    }

    fn plan(&self, batch: &route::Batch, record: Option<String>) -> Plan {
        let d = self.core.route(batch, self.tx());
        // A session with temporary tables stays where they are.
        let (side, backend, reason) =
            self.temp_home.map_or((d.side, d.backend, d.reason), |(s, b)| (s, b, Reason::Pinned));
        Plan { side, backend, reason, read: batch.read, tx_control: false, record, temp: None }
    }

    /// Sends the command where `plan` says (a replica that fails before answering hands it to
    /// the primary) and relays the answer.
    async fn execute(&mut self, packet: &packet::Packet, answer: Answer, mut plan: Plan, seq: u8) -> Result<(), End> {
        if !self.in_tx() {
            loop {
                // Preparing a statement writes nothing: it is not held as primary work.
                let primary_work = plan.side == Side::Primary && packet.payload.first() != Some(&command::STMT_PREPARE);
                match self.core.pass(primary_work, plan.read).await {
                    Ok(true) => break,
                    Ok(false) => {
                        let tx_control = plan.tx_control;
                        plan = self.plan(&route::Batch { read: plan.read, ..Default::default() }, plan.record);
                        plan.tx_control = tx_control;
                    }
                    Err(refusal @ Refusal::Full(_)) => {
                        self.err(seq, code::UNKNOWN, "HY000", refusal.text()).await;
                        return Ok(());
                    }
                    Err(refusal) => {
                        self.err(seq, code::OPTION_PREVENTS_STATEMENT, "HY000", refusal.text()).await;
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
                Err(_) if plan.side == Side::Replica && self.temp_home.is_some() => {
                    return Err(self.temp_lost(seq).await)
                }
                Err(e) if plan.side == Side::Replica => {
                    self.core.fall_back(&e);
                    plan.side = Side::Primary;
                    plan.backend = self.core.primary();
                    continue;
                }
                Err(e @ (BackendError::Unmovable(_) | BackendError::Ended(_))) => {
                    self.end_unmovable(seq, &e).await;
                    return Err(End::BackendGone);
                }
                Err(e) => {
                    self.leave_primary();
                    let text = format!("sqlswitch cannot reach the primary: {e}");
                    let (number, state) = match e {
                        BackendError::Full { .. } => (code::TOO_MANY_CONNECTIONS, "08004"),
                        _ => (code::UNKNOWN, "08S01"),
                    };
                    self.err(seq, number, state, &text).await;
                    return Ok(());
                }
            }
            cluster.metrics.count_routed(plan.side == Side::Replica, plan.reason, 1);
            cluster.backends[plan.backend].queries.fetch_add(1, Relaxed);
            let prepared_sql = (packet.payload.first() == Some(&command::STMT_PREPARE))
                .then(|| packet.payload.get(1..).unwrap_or_default());
            let asked = std::time::Instant::now();
            match self.relay(plan.side, answer, prepared_sql).await {
                Ok(failed) => {
                    cluster.latency.record(plan.backend, plan.side == Side::Replica, asked.elapsed());
                    let (client, backend) = std::mem::take(&mut self.received);
                    cluster.latency.add_bytes(client, backend);
                    if let Some(temp) = plan.temp.take() {
                        if !self.temp_done(temp, failed, plan.side, plan.backend).await {
                            return Err(self.temp_lost(seq).await);
                        }
                    }
                    if !failed {
                        if let Some(sql) = plan.record.take() {
                            if let Some(wait) = super::timeout::set_by(&sql) {
                                self.wait_timeout = wait;
                            }
                            self.core.recorded(plan.side, sql);
                        }
                    }
                    if plan.side == Side::Primary
                        && !plan.read
                        && !plan.tx_control
                        && plan.reason != Reason::SessionState
                    {
                        self.core.wrote();
                    }
                    if !self.in_tx() {
                        self.leave_primary();
                    }
                    return Ok(());
                }
                Err(Fail::Client) => {
                    // The client left mid-command: stop the query rather than let it run for
                    // nobody, and close the connection, whose state is unknown.
                    // Boxed: a control connection's login would size every session's future.
                    Box::pin(self.kill_query(plan.side)).await;
                    return Err(End::ClientGone);
                }
                Err(Fail::Backend { .. }) if plan.side == Side::Replica && self.temp_home.is_some() => {
                    return Err(self.temp_lost(seq).await);
                }
                Err(Fail::Backend { forwarded }) if plan.side == Side::Replica && !forwarded && !self.in_tx() => {
                    warn!("a replica failed before answering; sending the command to the primary");
                    self.drop_slot(Side::Replica);
                    plan.side = Side::Primary;
                    plan.backend = self.core.primary();
                }
                Err(_) => {
                    self.err(seq, code::UNKNOWN, "08S01", "the database server closed the connection unexpectedly")
                        .await;
                    return Err(End::BackendGone);
                }
            }
        }
    }

    fn leave_primary(&mut self) {
        self.core.leave_primary();
    }

    fn drop_slot(&mut self, side: Side) {
        self.core.drop_slot(side);
    }

    /// Returns the session's connections to their pools.
    pub async fn release(mut self) {
        self.core.release_all(&self.id.key).await;
    }
}

/// The little-endian `u32` at `at` in `b`, if four bytes are there.
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let bytes: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}
