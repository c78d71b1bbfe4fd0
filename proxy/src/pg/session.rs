//! A client session: client messages are grouped into batches ([`super::batch`]), each batch is
//! routed on its own ([`crate::route`]) and relayed to the primary or a replica connection
//! ([`super::dispatch`]), and the answers flow back without being decoded. The proxy reads only
//! message headers, the bodies of `Q`, `P`, `B`, `D`, `C` from the client, and `Z`, `E`, `S`
//! from the backend. Forwarding is zero-copy: complete messages at the front of a read buffer
//! go out in one `write_all` straight from that buffer, and a message larger than what has
//! arrived is streamed through as it comes.
//!
//! One connection is *active* at a time: the one owing answers. A batch for the other one waits
//! until every answer is in, so the client always reads answers in order.
//!
//! In a read-only session a statement the classifier knows to write is refused with SQLSTATE
//! 25006 and never sent, in protocol order: the refusal waits for earlier answers, or rides just
//! before the ReadyForQuery of the pipeline it belongs to.

use crate::tls::ClientStream;
use bytes::{Buf, Bytes, BytesMut};
use sqlswitch_protocol::classify::{self, text::Text};
use sqlswitch_protocol::pg::backend::{self as msg, Severity, TxStatus};
use sqlswitch_protocol::pg::frame::{self, HEADER_LEN};
use sqlswitch_protocol::pg::frontend as fe;
use sqlswitch_protocol::pg::sqlstate;
use sqlswitch_protocol::ProtocolError;
use tokio_util::sync::CancellationToken;

use super::batch::{note_statement_use, statement_name, Names, OpenBatch};
use crate::cancel::CancelKey;
use crate::cluster::Cluster;
use crate::conn::pg::{BackendConn, MAX_BACKEND_MESSAGE};
use crate::pool::PoolKey;
use crate::session::core::{Core, Timer, MOVED_CHECK};
use crate::session::Side;

mod refuse;
mod relay;

/// How a session ended.
#[derive(Debug)]
pub enum End {
    /// The client sent Terminate.
    Quit,
    /// The client's socket closed or failed.
    ClientGone,
    /// A backend failed mid-work; the client has been told.
    BackendGone,
    /// The client broke the protocol; it has been told.
    ClientError(#[expect(dead_code, reason = "read by the session-ended log line, through Debug")] ProtocolError),
    /// The daemon is shutting down and the session was idle.
    Shutdown,
    /// Idle (outside a transaction) for `idle_timeout`.
    IdleTimeout,
}

/// What client input waits for while the active connection answers everything it owes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// The next batch goes to the other connection: answers must come back in order.
    OtherSide,
    /// A session-state change is recorded (or not) at its ReadyForQuery, before what follows.
    StateChange,
    /// A write refused in a read-only session: the refusal follows the earlier answers.
    Refusal,
    /// A Sync forwarded after a locally refused message: our error rides before its
    /// ReadyForQuery.
    ForwardedSync,
}

/// After a locally refused extended-protocol message, client messages are discarded up to Sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    /// Nothing of this pipeline went to a backend: answer its Sync with our own ReadyForQuery.
    ReplyLocally,
    /// A backend holds earlier messages of this pipeline: forward the Sync and put our error
    /// just before its ReadyForQuery, unless the backend reports an error itself.
    ForwardSync,
}

/// One backend connection of the session.
pub type Slot<'a> = crate::session::core::Slot<'a, BackendConn>;

/// Who the session is.
pub struct Identity<'a> {
    /// The cluster.
    pub cluster: &'a Cluster,
    /// The login user's password, for opening more backend connections.
    pub password: &'a str,
    /// The client's SCRAM keys instead, for a passthrough user.
    pub keys: Option<&'a crate::conn::scram::Keys>,
    /// What its backend connections are opened with.
    pub key: &'a PoolKey,
    /// Refuse writes with 25006; use replicas for everything.
    pub read_only: bool,
    /// The cancel key handed to the client.
    pub cancel: &'a CancelKey,
}

/// A running session.
pub struct Session<'a> {
    pub(super) client: ClientStream,
    pub(super) cbuf: BytesMut,
    pub(super) id: Identity<'a>,
    /// The connections, the session state, the gate: what both protocols share.
    pub core: Core<'a, BackendConn>,
    pub(super) batch: OpenBatch,
    /// Sync points (Sync, Query, FunctionCall) sent whose ReadyForQuery has not come back.
    pub(super) outstanding: u32,
    /// When the oldest answer owed was asked for: its latency is counted, for the connection
    /// that answers, when the last answer owed ends.
    pub(super) timing: Option<std::time::Instant>,
    /// Bytes received from the client and from backends since they were last counted.
    pub(super) received: (u64, u64),
    pub(super) skip: Option<Skip>,
    pub(super) inject: Option<BytesMut>,
    /// Client input waits until the active connection has answered everything, and why.
    pub(super) waiting: Option<Waiting>,
    passthrough: usize,
    /// A write was sent to the primary and not yet acknowledged.
    pub(super) writes_in_flight: bool,
    /// A session-state change waiting for its ReadyForQuery to be recorded.
    pub(super) state_change: Option<StateChange>,
    /// The backend reported an error since the last ReadyForQuery.
    batch_error: bool,
    /// A replica read kept until its first answer byte, to retry it on the primary if the
    /// replica fails; or, with `replanning`, a batch of the primary that binds named
    /// statements, alone in an implicit transaction, kept until its first answer byte: if the
    /// server answers that a statement's cached plan must not change result type (0A000, a
    /// schema change under a statement prepared before it), it is prepared again and the batch
    /// run again, as nothing of it took effect.
    pub(super) retry: Option<Bytes>,
    /// `retry` holds a primary batch to run again after a stale plan, not a replica read.
    pub(super) replanning: bool,
    /// The statements that `retry` binds (buffers reused).
    pub(super) retry_binds: Names,
    /// Where the unnamed statement was last parsed.
    pub(super) unnamed_side: Option<Side>,
    /// A transaction (or an autocommit statement) ended: transaction pooling may give the
    /// connections back once the client is silent.
    pub(super) boundary: bool,
    /// The unnamed statement was prepared and not run yet: its connection stays.
    pub(super) unnamed_unbound: bool,
}

/// What woke a session up.
enum Event {
    /// The active connection sent bytes.
    Backend,
    /// The client sent bytes.
    Client,
    /// The active connection closed or failed.
    BackendFailed,
    /// An idle session whose state cannot move looks whether the primary changed.
    MovedCheck,
    /// A session that kept its connection after a write heard nothing from its client for a
    /// moment (transaction pooling).
    KeepExpired,
}

/// A session-state change in flight.
#[derive(Debug)]
pub(super) enum StateChange {
    /// Record this statement for replay.
    Record(String),
    /// `DISCARD ALL`: forget everything.
    ForgetAll,
}

impl<'a> Session<'a> {
    /// A session over an authenticated client; backend connections are taken as needed.
    pub fn new(client: ClientStream, cbuf: BytesMut, id: Identity<'a>) -> Self {
        let mut batch = OpenBatch::default();
        batch.reset();
        Self {
            client,
            cbuf,
            core: Core::new(id.cluster, id.read_only, id.key.user()),
            id,
            batch,
            outstanding: 0,
            timing: None,
            received: (0, 0),
            skip: None,
            inject: None,
            waiting: None,
            passthrough: 0,
            writes_in_flight: false,
            state_change: None,
            batch_error: false,
            retry: None,
            replanning: false,
            retry_binds: Names::default(),
            unnamed_side: None,
            // The login's connection goes back (transaction pooling) before the first statement:
            // a client that logs in and waits holds none.
            boundary: true,
            unnamed_unbound: false,
        }
    }

    /// A replica read is held that may run on the primary instead ([`Session::retry`]).
    pub(super) fn replica_retry(&self) -> bool {
        self.retry.is_some() && !self.replanning
    }

    /// A primary batch is held that may run again after a stale plan ([`Session::retry`]).
    pub(super) fn replan_held(&self) -> bool {
        self.retry.is_some() && self.replanning
    }

    pub(super) fn slot(&mut self, side: Side) -> Option<&mut Slot<'a>> {
        self.core.slot_mut(side)
    }

    /// The transaction status of the active connection.
    pub(super) fn tx(&self) -> TxStatus {
        self.core.active().and_then(|s| self.core.slot(s)).map_or(TxStatus::Idle, |s| s.conn.tx)
    }

    /// Whether nothing is in flight and no transaction is open.
    pub fn is_idle(&self) -> bool {
        self.outstanding == 0
            && self.batch.len == 0
            && self.batch.side.is_none()
            && self.tx() == TxStatus::Idle
            && self.passthrough == 0
    }

    /// The connection owing answers, if any.
    pub fn active_side(&self) -> Option<Side> {
        self.core.active()
    }

    /// The client socket, for the final words.
    pub fn client(&mut self) -> &mut ClientStream {
        &mut self.client
    }

    /// Relays until the client leaves, a backend fails mid-work, or `shutdown` fires while idle.
    ///
    /// # Cancellation safety
    /// Run it to completion: it is the session's only task.
    pub async fn run(&mut self, shutdown: &CancellationToken) -> End {
        if let Err(end) = self.on_client().await {
            return end;
        }
        // The idle timer, when configured, is re-armed each time the session becomes idle. It is
        // made (boxed, once) only when configured: a timer entry would otherwise be part of every
        // session's task for its whole life.
        let idle_timeout = self.id.cluster.config.idle_timeout;
        let (mut idle_timer, mut moved_timer) = (Timer::default(), Timer::default());
        let mut armed = false;
        loop {
            if self.boundary && self.is_idle() && self.cbuf.is_empty() {
                self.boundary = false;
                if self.core.rechecks() {
                    let mut aside = bytes::BytesMut::new();
                    Box::pin(self.core.recheck_pins(&mut aside)).await;
                    if !aside.is_empty() {
                        if let Err(end) = self.send_client(&aside).await {
                            return end;
                        }
                    }
                }
                if self.core.transaction_ended(self.id.key) && !self.unnamed_unbound {
                    if !self.give_back_now() {
                        Box::pin(self.give_back()).await;
                    }
                } else if self.core.keeping() {
                    // The one timer serves both: a session that keeps its connection after a
                    // write holds no state that stops it moving.
                    moved_timer.arm(crate::session::core::KEEP_AFTER_WRITE);
                }
            }
            let idle = self.is_idle() && self.cbuf.is_empty();
            let hold = self.waiting.is_some();
            // Idle on a plain socket: no read buffer is held while the client is silent.
            let park = idle && !hold && self.client.parks_unbuffered();
            if park {
                if self.cbuf.capacity() > 0 {
                    crate::buffers::give(std::mem::take(&mut self.cbuf));
                }
            } else if self.cbuf.capacity() == 0 {
                self.cbuf = crate::buffers::take();
            } else if self.cbuf.capacity() - self.cbuf.len() < 4096 {
                self.cbuf.reserve(8192);
            }
            match idle_timeout {
                Some(d) if idle && !armed => {
                    idle_timer.arm(d);
                    armed = true;
                }
                _ if !idle => armed = false,
                _ => {}
            }
            let stuck = idle && self.core.listening();
            let keeping = idle && self.core.keeping();
            if stuck {
                moved_timer.arm(MOVED_CHECK);
            }
            let active = match self.core.active() {
                Some(side) => self.core.slot_mut(side),
                None => None,
            };
            let step = tokio::select! {
                biased;
                () = shutdown.cancelled(), if idle => return End::Shutdown,
                () = idle_timer.fired(), if idle && armed => return End::IdleTimeout,
                () = moved_timer.fired(), if stuck || keeping => {
                    if stuck { Event::MovedCheck } else { Event::KeepExpired }
                }
                r = read_backend(active) => match r {
                    Ok(0) | Err(_) => Event::BackendFailed,
                    Ok(n) => {
                        self.received.1 += n as u64;
                        Event::Backend
                    }
                },
                r = read_client(&mut self.client, &mut self.cbuf, park), if !hold => match r {
                    Ok(0) | Err(_) => return End::ClientGone,
                    Ok(n) => {
                        self.received.0 += n as u64;
                        Event::Client
                    }
                },
            };
            let result = match step {
                Event::Backend => self.on_backend().await,
                Event::Client => self.on_client().await,
                Event::BackendFailed => Box::pin(self.backend_failed()).await,
                Event::MovedCheck => match self.core.moved_away() {
                    Some(e) => {
                        Box::pin(self.end_unmovable(&e)).await;
                        return End::BackendGone;
                    }
                    None => Ok(()),
                },
                Event::KeepExpired => {
                    if self.core.keep_expired() && !self.unnamed_unbound {
                        Box::pin(self.give_back()).await;
                    }
                    Ok(())
                }
            };
            if let Err(end) = result {
                return end;
            }
        }
    }

    /// Transaction pooling: the connections go back to their pools between transactions; the
    /// session's cancel key points nowhere until its next statement takes one.
    async fn give_back(&mut self) {
        self.core.give_back_all(self.id.key).await;
        self.gave_back();
    }

    /// [`Session::give_back`]'s common case (the session only read), without awaiting:
    /// whether every connection went back.
    fn give_back_now(&mut self) -> bool {
        let all = self.core.give_back_now(self.id.key);
        if all {
            self.gave_back();
        }
        all
    }

    fn gave_back(&mut self) {
        self.id.cancel.set_target(None);
        self.unnamed_side = None;
    }

    pub(super) async fn tell_client_backend_gone(&mut self) {
        if self.passthrough > 0 {
            // Part of a message has reached the client: an error now would be read as the rest
            // of it. Closing is the signal, as when a server dies mid-message.
            return;
        }
        let mut out = BytesMut::new();
        msg::error_response(
            &mut out,
            Severity::Fatal,
            sqlstate::CONNECTION_FAILURE,
            "the database server closed the connection unexpectedly",
        );
        self.id.cluster.metrics.errors.count_state(false, Some(sqlstate::CONNECTION_FAILURE));
        let _ = self.client.send(&out).await;
    }

    /// Ends a session whose state cannot move to the new primary, or whose open transaction
    /// cannot go on ([`crate::backend::BackendError::Ended`]), as a server restart would:
    /// FATAL 57P01 with the reason.
    pub(super) async fn end_unmovable(&mut self, e: &crate::backend::BackendError) {
        tracing::warn!(error = %e, "ending a session as on a lost connection");
        let text = format!("terminating connection: {e} (sqlswitch)");
        let mut out = BytesMut::new();
        msg::error_response(&mut out, Severity::Fatal, sqlstate::ADMIN_SHUTDOWN, &text);
        self.id.cluster.metrics.errors.count_state(false, Some(sqlstate::ADMIN_SHUTDOWN));
        let _ = self.client.send(&out).await;
    }

    pub(super) async fn send_client(&mut self, bytes: &[u8]) -> Result<(), End> {
        self.client.send(bytes).await.map_err(|_| End::ClientGone)
    }

    /// Handles every complete client message in the buffer.
    #[expect(
        clippy::indexing_slicing,
        reason = "a message is sliced only once its checked header says it is buffered whole"
    )]
    async fn on_client(&mut self) -> Result<(), End> {
        loop {
            if self.waiting.is_some() {
                return Ok(());
            }
            if self.batch.complete {
                if !self.dispatch().await? {
                    return Ok(()); // held until the active connection has answered
                }
                self.batch.reset();
                continue;
            }
            let at = self.batch.len;
            if at == 0 && self.batch.side.is_none() && self.outstanding == 0 && self.tx() == TxStatus::Idle {
                // A transaction boundary: the cluster's maintenance state holds for what follows.
                self.core.at_boundary();
            }
            let header = match frame::peek_header(&self.cbuf[at..], self.id.cluster.config.max_message_size) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => return Err(self.client_error(e).await),
            };
            if self.cbuf.len() - at < header.total_len {
                break;
            }
            let len = header.total_len;
            if let Some(skip) = self.skip {
                self.cbuf.advance(len);
                if header.tag == fe::SYNC {
                    self.skip = None;
                    self.end_skip(skip).await?;
                }
                continue;
            }
            let body = &self.cbuf[at + HEADER_LEN..at + len];
            self.batch.only_parses &= header.tag == fe::SYNC || (header.tag == fe::PARSE && body.first() != Some(&0));
            match header.tag {
                fe::QUERY | fe::PARSE => {
                    let parsed =
                        if header.tag == fe::QUERY { fe::query_text(body).map(|q| ("", q)) } else { fe::parse(body) };
                    let (name, bytes) = match parsed {
                        Ok(v) => v,
                        Err(e) => return Err(self.client_error(e).await),
                    };
                    // Any client encoding: a text that is not UTF-8 is read as the classifier
                    // can (classify::text), never refused.
                    let read = Text::read(bytes);
                    let text: &str = &read.sql;
                    let mut verdict = classify::classify_pg_with(text, &self.id.cluster.config.read_only_functions);
                    let unsure = read.ambiguous || self.id.cluster.primary_only.contains(text);
                    if verdict.is_read() && unsure {
                        // A replica refused it before, or its quotes cannot be found for sure.
                        verdict.class = classify::Class::Unknown;
                    }
                    if verdict.custom_setting {
                        self.core.custom_setting();
                    }
                    if let Some(refused) = self.core.refusal(verdict.refused_read_only(), false) {
                        if !Box::pin(self.refuse(header.tag, len, refused)).await? {
                            return Ok(());
                        }
                        continue;
                    }
                    // No copy of the text: it is borrowed from the client buffer (the batch
                    // keeps its own copy only of session-state statements and named Parses).
                    self.batch.add_verdict(&verdict, &read);
                    if header.tag == fe::QUERY {
                        self.batch.statements += 1;
                        self.batch.syncs += 1;
                        self.batch.complete = true;
                    } else if name.is_empty() {
                        self.batch.parses_unnamed = true;
                    } else {
                        let parse = Bytes::copy_from_slice(&self.cbuf[at..at + len]);
                        let generation = self.core.define(name, parse, verdict.is_read());
                        self.batch.parsed.push((name.to_owned(), generation));
                    }
                }
                fe::BIND | fe::DESCRIBE | fe::CLOSE => match statement_name(header.tag, body) {
                    Ok(name) => note_statement_use(&mut self.batch, self.core.state(), header.tag, name),
                    Err(e) => return Err(self.client_error(e).await),
                },
                fe::EXECUTE => self.batch.statements += 1,
                fe::SYNC => {
                    self.batch.syncs += 1;
                    self.batch.complete = true;
                }
                fe::FUNCTION_CALL => {
                    self.batch.read = false;
                    self.batch.statements += 1;
                    self.batch.syncs += 1;
                    self.batch.complete = true;
                }
                fe::TERMINATE => {
                    if self.batch.len > 0 {
                        self.batch.complete = true;
                        let _ = self.dispatch().await;
                    }
                    if self.outstanding > 0 {
                        // A server answers what came before a Terminate, then closes: the
                        // answers owed go out first (the Terminate is read again once they have).
                        return Ok(());
                    }
                    return Err(End::Quit);
                }
                fe::COPY_DATA | fe::COPY_DONE | fe::COPY_FAIL => {
                    // Part of a COPY already running on the active connection.
                    self.batch.side = self.batch.side.or(self.core.active());
                }
                fe::FLUSH => {}
                other => {
                    // As PostgreSQL does: a message type it does not know ends the session.
                    let text = format!("invalid frontend message type {other}");
                    let mut out = BytesMut::new();
                    msg::error_response(&mut out, Severity::Fatal, sqlstate::PROTOCOL_VIOLATION, &text);
                    self.id.cluster.metrics.errors.count_state(false, Some(sqlstate::PROTOCOL_VIOLATION));
                    let _ = self.client.send(&out).await;
                    return Err(End::ClientError(ProtocolError::Malformed { what: "frontend message type" }));
                }
            }
            self.batch.len += len;
            if header.tag == fe::FLUSH || self.batch.len > FORCE_DISPATCH {
                // The client wants answers before its Sync (or the batch is too big to hold):
                // decide now; the rest of the batch follows to the same connection.
                if !self.dispatch().await? {
                    return Ok(());
                }
            }
        }
        if self.batch.side.is_some() && self.batch.len > 0 && !self.batch.complete {
            self.dispatch().await?;
        } else if self.batch.side.is_none()
            && self.batch.statements > 0
            && !self.batch.complete
            && self.cbuf.len() == self.batch.len
            && self.waiting.is_none()
        {
            // Executes with no Sync yet and nothing more from the client: a pipeline waiting
            // for its answers (libpq's pipeline mode; the server sends them as it runs each
            // message, and flushes at an error). Held for a Sync, it would wait forever. It goes
            // now, to the primary (what follows, unseen, may write) unless the session is
            // read-only; the rest of the batch follows it.
            if !self.core.read_only_now() {
                self.batch.read = false;
            }
            self.dispatch().await?;
        }
        Ok(())
    }
}

/// Client batches larger than this are dispatched before their Sync.
const FORCE_DISPATCH: usize = 1 << 20;

/// Reads client input into `cbuf`. `park`: the session is idle on a plain socket and holds no
/// buffer while it waits; it takes one from its thread's free list once input is there.
///
/// Written as a poll function over the socket's own readiness, not as an `async fn` awaiting
/// `readable()` then `read_buf`: it keeps no waiter of its own, and what an idle session's
/// future holds while it waits stays a few words. A read that fills less than the buffer tells
/// tokio the socket is drained, so the next wait parks at once rather than first making a read
/// that finds nothing (benches/NOTES.md). Readiness that was not (a spurious wake-up) waits in
/// the read, holding the buffer.
fn read_client<'s>(
    client: &'s mut ClientStream,
    cbuf: &'s mut BytesMut,
    park: bool,
) -> impl std::future::Future<Output = std::io::Result<usize>> + 's {
    std::future::poll_fn(move |cx| {
        if park && cbuf.capacity() == 0 {
            std::task::ready!(client.poll_read_ready(cx))?;
            *cbuf = crate::buffers::take();
        }
        tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut *client), cx, cbuf)
    })
}

/// Reads the active backend's answer into its buffer; never, when no connection is active.
fn read_backend<'s>(slot: Option<&'s mut Slot<'_>>) -> impl std::future::Future<Output = std::io::Result<usize>> + 's {
    let mut slot = slot.map(|s| {
        if s.conn.buf.capacity() - s.conn.buf.len() < 4096 {
            s.conn.buf.reserve(16 * 1024);
        }
        &mut s.conn
    });
    std::future::poll_fn(move |cx| match slot.as_deref_mut() {
        Some(conn) => tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut conn.stream), cx, &mut conn.buf),
        None => std::task::Poll::Pending,
    })
}
