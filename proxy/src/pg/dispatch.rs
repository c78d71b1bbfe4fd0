//! Sending a batch: the routing decision, the connection it needs (opened lazily, given the
//! session's state and prepared statements first), the send itself, and what to do when a
//! replica dies under a read that has not answered yet (send it to the primary instead).

use bytes::{Bytes, BytesMut};
use sqlswitch_protocol::pg::backend::{self as msg, Severity, TxStatus};
use sqlswitch_protocol::pg::frame::HEADER_LEN;
use sqlswitch_protocol::pg::sqlstate;
use tracing::warn;

use super::session::{End, Identity, Session, StateChange, Waiting};
use crate::backend::BackendError;
use crate::conn::pg::{BackendConn, Login};
use crate::route::Reason;
use crate::session::core::{Note, Tx};
use crate::session::{Refusal, Side};
use std::sync::atomic::Ordering::Relaxed;

/// Where [`Session::send`] starts.
#[derive(Debug, Clone, Copy)]
pub(super) enum Sending {
    /// Make `side`'s connection ready, and write.
    To(Side),
    /// The write to `side`'s ready connection failed.
    Failed(Side),
}

impl Session<'_> {
    /// Routes and sends the undispatched part of the open batch. Returns false when it must
    /// wait until the active connection has answered everything.
    pub(super) async fn dispatch(&mut self) -> Result<bool, End> {
        if self.batch.complete && self.batch.only_parses && self.outstanding == 0 && self.core.pooled_out() {
            return Box::pin(self.answer_parses()).await.map(|()| true);
        }
        let (side, backend, reason) = match self.batch.side {
            Some(side) => {
                let backend = self.core.slot(side).map_or(0, |s| s.backend);
                (side, backend, None)
            }
            None => {
                let at_boundary = self.outstanding == 0 && self.tx() == TxStatus::Idle;
                // Answers still owed for work never admitted as primary work (a pipelined
                // Close, say) are no transaction: primary work after them is admitted as at a
                // boundary. Let through unadmitted, a BEGIN passed a switchover's hold onto
                // the fenced old primary and the transaction's first INSERT failed (25006).
                let owed_only = self.outstanding > 0 && self.tx() == TxStatus::Idle && !self.core.in_primary_work();
                loop {
                    let Some((side, backend, reason)) = self.decide() else {
                        self.waiting = Some(Waiting::OtherSide);
                        return Ok(false);
                    };
                    if owed_only && side == Side::Primary {
                        // Admitted now only if the gate is open and the connection that owes
                        // the answers is to this primary; else the answers come first, and
                        // then this batch is at a boundary.
                        let prepares_only = self.batch.statements == 0 && !self.batch.parses_unnamed;
                        let here = self.core.slot(side).is_some_and(|s| s.backend == backend);
                        if here && self.core.try_pass(!prepares_only, self.batch.view().read) {
                            break (side, backend, Some(reason));
                        }
                        self.waiting = Some(Waiting::OtherSide);
                        return Ok(false);
                    }
                    if !at_boundary {
                        break (side, backend, Some(reason));
                    }
                    if let Some(refused) = self.core.refusal(false, self.batch.maybe_writes) {
                        let text = format!("cannot execute a write: {} (sqlswitch)", refused.why());
                        Box::pin(self.refuse_pending(&text)).await?;
                        return Ok(true);
                    }
                    // A batch that executes nothing (a client preparing a named statement, which
                    // any connection re-prepares when it is used) writes nothing: it is not held
                    // as primary work. An unnamed one is: its Bind must follow it.
                    let prepares_only = self.batch.statements == 0 && !self.batch.parses_unnamed;
                    let primary_work = side == Side::Primary && !prepares_only;
                    match self.core.pass(primary_work, self.batch.view().read).await {
                        Ok(true) => break (side, backend, Some(reason)),
                        Ok(false) => {}
                        Err(refusal) => {
                            let code = match refusal {
                                Refusal::Full(_) => sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
                                Refusal::NoPrimary(_) => sqlstate::CONNECTION_FAILURE,
                                Refusal::SplitBrain(_) | Refusal::Fenced(_) => sqlstate::READ_ONLY_SQL_TRANSACTION,
                            };
                            Box::pin(self.refuse_pending_with(code, refusal.text())).await?;
                            return Ok(true);
                        }
                    }
                    // The routing table may have changed meanwhile: decide again.
                }
            }
        };
        // Only an executed statement that is neither a read nor a session-state change can write:
        // a Parse/Describe batch (a client preparing a statement) or a SET does not start
        // read-your-writes.
        let writes = self.batch.statements > 0
            && !self.batch.view().read
            && self.batch.session_sql.is_none()
            && !self.batch.forgets_all;
        if reason.is_some() && (self.batch.session_sql.is_some() || self.batch.forgets_all) {
            if self.outstanding > 0 {
                self.waiting = Some(Waiting::StateChange);
                return Ok(false);
            }
            self.state_change = Some(match self.batch.session_sql.take() {
                Some(sql) => StateChange::Record(sql),
                None => StateChange::ForgetAll,
            });
        }
        self.core.note(Note { pins: self.batch.pins, unmovable: self.batch.unmovable, releases: self.batch.releases });
        let len = self.batch.len;
        let bytes = self.cbuf.split_to(len).freeze();
        let binds = std::mem::take(&mut self.batch.binds);
        // The common case, a connection that is ready as it is, writes here; anything else
        // (taking a connection, replaying state, a failed write, falling back) is boxed.
        let mut written = None;
        if self.core.slot(side).is_none() {
            self.adopt_idle(side, backend);
        }
        if self.slot_settled(side, backend, binds.as_slice()) {
            if let Some(slot) = self.core.slot_mut(side) {
                written = Some(slot.conn.stream.send(&bytes).await.is_ok());
            }
        }
        let side = match written {
            Some(true) => Some(side),
            Some(false) => Box::pin(self.send(Sending::Failed(side), backend, &bytes, binds.as_slice())).await?,
            None => Box::pin(self.send(Sending::To(side), backend, &bytes, binds.as_slice())).await?,
        };
        let Some(side) = side else {
            // No backend could take it: the client has its error; drop the batch.
            self.batch.binds = binds;
            self.state_change = None;
            self.batch.len = 0;
            return Ok(true);
        };
        // The latest whole batch sent to a replica may be run again elsewhere; any other batch
        // sent after it takes that away (its answers follow, and are the client's). Behind
        // other batches still in flight, it may only once they are answered and left no
        // transaction open (checked at the refusal).
        let pipelined = self.outstanding > 0;
        let alone = !pipelined && self.tx() == TxStatus::Idle;
        let on_replica = side == Side::Replica && self.batch.complete && !self.batch.needs_unnamed_from;
        self.replanning = false;
        if on_replica && (alone || self.core.active() == Some(Side::Replica)) {
            self.retry_binds.copy_from(&binds);
            self.retry = Some(bytes);
        } else {
            self.retry = None;
            // Transaction pooling only: there the statement may have been prepared by another
            // session, before a schema change this session prepared after.
            let replannable = alone
                && side == Side::Primary
                && self.core.pools_per_transaction()
                && self.batch.complete
                && !binds.as_slice().is_empty();
            if replannable && self.batch.parsed.is_empty() && crate::pg::batch::only_executes(&bytes) {
                self.retry_binds.copy_from(&binds);
                self.retry = Some(bytes);
                self.replanning = true;
            }
        }
        self.batch.binds = binds;
        self.after_send(side, reason, writes);
        if self.state_change.is_some() && self.batch.complete {
            self.waiting = Some(Waiting::StateChange); // recorded (or not) at its ReadyForQuery
        }
        Ok(true)
    }

    /// Where the batch goes: `(side, replica backend, reason)`, or `None` to wait.
    fn decide(&mut self) -> Option<(Side, usize, Reason)> {
        let busy = self.outstanding > 0 || self.tx() != TxStatus::Idle;
        if busy && (self.batch.session_sql.is_some() || self.batch.forgets_all) {
            // State changed inside a transaction may be rolled back: do not replay it, stay put.
            self.batch.pins = true;
            self.batch.unmovable.get_or_insert("session state set inside a transaction");
            self.batch.session_sql = None;
        }
        if self.batch.needs_unnamed_from {
            let side = self.unnamed_side.or(self.core.active()).unwrap_or(Side::Primary);
            let backend = self.core.slot(side).map_or_else(|| self.id.cluster.table.load().primary, |s| s.backend);
            return self.wait_or(side, backend, Reason::Transaction);
        }
        let tx = if busy { Tx::Open } else { Tx::None };
        let d = self.core.route(&self.batch.view(), tx);
        self.wait_or(d.side, d.backend, d.reason)
    }

    fn wait_or(&self, side: Side, backend: usize, reason: Reason) -> Option<(Side, usize, Reason)> {
        if self.outstanding > 0 && self.core.active() != Some(side) {
            return None;
        }
        Some((side, backend, reason))
    }

    /// Sends `bytes` to a side (a replica that fails falls back to the primary). Returns the
    /// side it went to, or `None` when no backend could take it (the client was told).
    pub(super) async fn send(
        &mut self,
        sending: Sending,
        mut backend: usize,
        bytes: &Bytes,
        binds: &[String],
    ) -> Result<Option<Side>, End> {
        let (mut side, mut failed) = match sending {
            Sending::To(side) => (side, false),
            Sending::Failed(side) => (side, true),
        };
        loop {
            if !failed {
                match self.ready_slot(side, backend, binds).await {
                    Ok(()) => {
                        let slot = self.core.slot_mut(side).ok_or(End::BackendGone)?;
                        failed = slot.conn.stream.send(bytes).await.is_err();
                        if !failed {
                            return Ok(Some(side));
                        }
                    }
                    Err(e) => {
                        if !self.not_ready(side, e).await? {
                            return Ok(None);
                        }
                    }
                }
            }
            if failed {
                if side == Side::Primary || self.batch.side.is_some() || self.outstanding > 0 {
                    self.tell_client_backend_gone().await;
                    return Err(End::BackendGone);
                }
                self.drop_slot(side);
                failed = false;
            }
            side = Side::Primary;
            backend = self.core.primary();
        }
    }

    /// `side`'s connection could not be made ready for the batch: a replica's failure falls
    /// back to the primary (`Ok(true)`: try it); the primary's is the client's error
    /// (`Ok(false)`: nothing was sent).
    async fn not_ready(&mut self, side: Side, e: BackendError) -> Result<bool, End> {
        match e {
            e if side == Side::Replica => {
                self.core.fall_back(&e);
                Ok(true)
            }
            e @ (BackendError::Unmovable(_) | BackendError::Ended(_)) => {
                // As a server restart would end it: the client hears why, and reconnects.
                self.end_unmovable(&e).await;
                Err(End::BackendGone)
            }
            BackendError::Refused { error, .. } if !msg::is_fatal(error.get(HEADER_LEN..).unwrap_or_default()) => {
                // The server refused to prepare a statement the batch uses (its text does not
                // parse, its table is gone), or to take the session's state: the server's own
                // error is the batch's answer. (A refused login is FATAL: not the client's.)
                let mut out = BytesMut::from(&error[..]);
                for _ in 0..self.batch.syncs {
                    msg::ready_for_query(&mut out, self.tx());
                }
                self.batch.syncs = 0;
                self.id.cluster.metrics.errors.count_state(true, None);
                self.send_client(&out).await?;
                Ok(false)
            }
            e => {
                warn!(error = %e, fault = ?e.fault(), "the primary is unavailable");
                // Nothing of this batch runs anywhere: unless an earlier one still does, the
                // session has no primary work in flight, and a drain must not wait for it.
                if self.outstanding == 0 && self.tx() == TxStatus::Idle {
                    self.leave_primary();
                }
                let code = match e {
                    BackendError::Full { .. } => sqlstate::TOO_MANY_CONNECTIONS,
                    _ => sqlstate::CONNECTION_FAILURE,
                };
                self.refuse_batch(code, &format!("sqlswitch cannot reach the primary: {e}")).await?;
                Ok(false)
            }
        }
    }

    /// Transaction pooling, between transactions: a batch that only prepares named statements
    /// (libpq's `PQprepare`) is answered here, and each statement is prepared on a server
    /// connection where it is first bound. Waiting for a connection to prepare it could wait
    /// forever: a client library blocked in `PQprepare` (pgbench) does not read its other
    /// clients' answers, whose transactions hold the pool's connections meanwhile. An error
    /// in the statement is the server's answer to its first use instead.
    async fn answer_parses(&mut self) -> Result<(), End> {
        let mut out = BytesMut::new();
        for _ in &self.batch.parsed {
            out.extend_from_slice(&[msg::PARSE_COMPLETE, 0, 0, 0, 4]);
        }
        for _ in 0..self.batch.syncs {
            msg::ready_for_query(&mut out, TxStatus::Idle);
        }
        let _ = self.cbuf.split_to(self.batch.len);
        self.batch.reset();
        self.send_client(&out).await
    }

    /// Answers the undispatched batch with a read-only error instead of sending it.
    async fn refuse_pending(&mut self, text: &str) -> Result<(), End> {
        self.refuse_pending_with(sqlstate::READ_ONLY_SQL_TRANSACTION, text).await
    }

    async fn refuse_pending_with(&mut self, code: &str, text: &str) -> Result<(), End> {
        self.id.cluster.metrics.errors.count_state(false, Some(code));
        let mut out = BytesMut::new();
        msg::error_response(&mut out, Severity::Error, code, text);
        for _ in 0..self.batch.syncs {
            msg::ready_for_query(&mut out, self.tx());
        }
        let len = self.batch.len;
        let _ = self.cbuf.split_to(len);
        if !self.batch.complete {
            self.skip = Some(super::session::Skip::ReplyLocally);
        }
        self.batch.reset();
        self.id.cluster.metrics.refused.increment(1);
        self.send_client(&out).await
    }

    /// The session's primary work is over (or never started): let a switchover count it out.
    pub(super) fn leave_primary(&mut self) {
        self.core.leave_primary();
    }

    /// Answers a batch no backend could take with an error (and its ReadyForQuery).
    async fn refuse_batch(&mut self, code: &'static str, text: &str) -> Result<(), End> {
        self.id.cluster.metrics.errors.count_state(false, Some(code));
        let mut out = BytesMut::new();
        msg::error_response(&mut out, Severity::Error, code, text);
        for _ in 0..self.batch.syncs {
            msg::ready_for_query(&mut out, TxStatus::Idle);
        }
        self.batch.syncs = 0;
        self.send_client(&out).await
    }

    /// Drops a connection that failed, and keeps reads off its replica until the monitor sees
    /// it answer again.
    pub(super) fn drop_slot(&mut self, side: Side) {
        self.core.drop_slot(side);
    }

    /// Makes sure `side` has a connection (to `replica` when given), with the session state
    /// replayed and the batch's statements prepared.
    ///
    /// Only [`Session::send`] calls it, itself boxed: `dispatch` writes at once when the
    /// connection is [settled](Session::slot_settled), so this runs when a connection is taken,
    /// state replayed or statements prepared, and its state is not part of every session's
    /// future.
    async fn ready_slot(&mut self, side: Side, backend: usize, binds: &[String]) -> Result<(), BackendError> {
        // A transaction open on the connection (or answers still owed) keeps it: if its server
        // stopped being the primary, the core ends the transaction instead of moving it.
        let tx = if self.tx() != TxStatus::Idle {
            Tx::Open
        } else if self.outstanding > 0 {
            Tx::Owed
        } else {
            Tx::None
        };
        let id = &self.id;
        let open = |backend| acquire(id, backend);
        self.core.ready(side, backend, id.key, tx, open).await?;
        let (slot, state) =
            self.core.slot_with_state(side).ok_or_else(|| BackendError::Protocol("no connection".into()))?;
        // A statement of the same name that another session left on a pooled connection goes
        // before the client's own Parse reaches the server.
        for (name, _) in &self.batch.parsed {
            if slot.applied.foreign.contains_key(name) {
                prepare(&mut slot.conn, name, &Bytes::new(), true).await?;
                slot.applied.closed(name);
            }
        }
        for name in binds {
            let Some(stmt) = state.statement(name) else { continue };
            let Some(close_first) = slot.applied.needs(name, stmt.generation) else { continue };
            prepare(&mut slot.conn, name, &stmt.parse, close_first).await?;
            slot.applied.prepared_here(name.clone(), stmt.generation);
            self.id.cluster.metrics.prepared_again.increment(1);
        }
        Ok(())
    }

    /// Takes an idle connection to `backend` for `side` without waiting, when its pool has
    /// one (the common case under transaction pooling), so that `dispatch` writes at once;
    /// else [`Session::ready_slot`] checks one out.
    fn adopt_idle(&mut self, side: Side, backend: usize) {
        let (cluster, key) = (self.id.cluster, self.id.key);
        let b = &cluster.backends[backend];
        let Some(conn) = b.take_idle::<BackendConn>(key, cluster.limits(key.user())) else { return };
        if let Err(conn) = self.core.adopt_idle(side, backend, conn) {
            if let Some(extra) = b.put(key, conn) {
                tokio::spawn(extra.terminate());
            }
        }
    }

    /// Whether `side`'s connection is ready for a batch that binds `binds` as it is: what
    /// [`Session::ready_slot`] would find nothing to do for, checked without awaiting.
    fn slot_settled(&self, side: Side, backend: usize, binds: &[String]) -> bool {
        if !self.core.settled(side, backend, Tx::None) {
            return false;
        }
        let Some(slot) = self.core.slot(side) else { return false };
        let foreign = &slot.applied.foreign;
        (foreign.is_empty() || self.batch.parsed.iter().all(|(name, _)| !foreign.contains_key(name)))
            && binds.iter().all(|name| {
                self.core.state().statement(name).is_none_or(|stmt| slot.applied.needs(name, stmt.generation).is_none())
            })
    }

    /// Bookkeeping after the batch went to `side`.
    fn after_send(&mut self, side: Side, reason: Option<Reason>, writes: bool) {
        let activates = self.core.active() != Some(side);
        let Some(slot) = self.core.slot_mut(side) else { return };
        for (name, generation) in self.batch.parsed.drain(..) {
            slot.applied.prepared_here(name, generation);
        }
        for name in &self.batch.closes {
            slot.applied.closed(name);
        }
        let backend = slot.backend;
        if activates {
            self.id.cancel.set_target(Some(slot.conn.cancel.clone()));
        }
        for name in self.batch.closes.drain(..) {
            self.core.forget(&name);
        }
        if self.batch.parses_unnamed {
            self.unnamed_side = Some(side);
            // Prepared and not run in this batch (psql's \gdesc, a Describe to follow): the
            // connection stays until a batch runs something.
            self.unnamed_unbound = self.batch.statements == 0;
        } else if self.batch.statements > 0 {
            self.unnamed_unbound = false;
        }
        if side == Side::Primary && writes {
            self.writes_in_flight = true;
        }
        self.id.cluster.backends[backend].queries.fetch_add(u64::from(self.batch.statements), Relaxed);
        if let Some(reason) = reason {
            self.id.cluster.metrics.count_routed(side == Side::Replica, reason, u64::from(self.batch.statements));
        }
        if activates {
            self.core.activate(side);
        }
        if self.outstanding == 0 && self.batch.syncs > 0 {
            self.timing = Some(std::time::Instant::now());
        }
        self.outstanding += self.batch.syncs;
        self.batch.syncs = 0;
        self.batch.len = 0;
        self.batch.side = (!self.batch.complete).then_some(side);
    }

    /// The active connection failed. A replica read that has not answered yet is sent to the
    /// primary; an idle connection is dropped quietly and replaced at next use; anything else
    /// ends the session with an error.
    pub(super) async fn backend_failed(&mut self) -> Result<(), End> {
        let Some(side) = self.core.active() else { return Ok(()) };
        let was_idle = self.outstanding == 0 && self.core.slot(side).is_some_and(|s| s.conn.tx == TxStatus::Idle);
        self.drop_slot(side);
        if self.replica_retry() && self.outstanding == 1 {
            warn!("a replica failed before answering; sending the read to the primary");
            return self.resend_on_primary().await;
        }
        if was_idle {
            return Ok(());
        }
        self.tell_client_backend_gone().await;
        Err(End::BackendGone)
    }
}

/// Prepares the named statement `name` on `conn` from the client's own Parse message `parse`
/// (nothing when empty), closing the one of that name there first with `close_first`, and
/// waits for the answer.
async fn prepare(conn: &mut BackendConn, name: &str, parse: &Bytes, close_first: bool) -> Result<(), BackendError> {
    let mut out = BytesMut::with_capacity(parse.len() + name.len() + 16);
    if close_first {
        postgres_protocol::message::frontend::close(b'S', name, &mut out)?;
    }
    out.extend_from_slice(parse);
    postgres_protocol::message::frontend::sync(&mut out);
    conn.stream.send(&out).await?;
    let mut failure = None;
    loop {
        let f = conn.read_frame().await?;
        match f.tag {
            msg::ERROR_RESPONSE => {
                let (_, text) = msg::error_fields(f.body());
                failure = Some(BackendError::Refused { message: text.unwrap_or("").to_owned(), error: f.bytes });
            }
            msg::READY_FOR_QUERY => {
                conn.tx = TxStatus::from_byte(f.body().first().copied().unwrap_or(b'T'));
                return failure.map_or(Ok(()), Err);
            }
            _ => {}
        }
    }
}

/// A pooled or new connection to `backend` for the session `id`.
async fn acquire(id: &Identity<'_>, backend: usize) -> Result<BackendConn, BackendError> {
    let cluster = id.cluster;
    let b = &cluster.backends[backend];
    let tls = cluster.backend_tls.load_full();
    let login = Login {
        user: id.key.user(),
        password: id.password,
        keys: id.keys,
        params: id.key.params(),
        tls: tls.as_deref(),
    };
    let to = b.dialing(cluster.config.connect_timeout);
    let open = || BackendConn::connect(&to, &login);
    b.checkout(id.key, cluster.limits(id.key.user()), open).await
}
