//! Forwarding a backend's answers to the client, watching only where each ends, its errors,
//! its parameter changes and the sender of its notifications.

use super::*;

impl Session<'_> {
    /// Forwards every message the active connection sent, watching `Z`, `E`, `S` and `A`.
    #[expect(clippy::indexing_slicing, reason = "slices end at `fwd`, which never passes the bytes buffered")]
    pub(super) async fn on_backend(&mut self) -> Result<(), End> {
        let Some(side) = self.core.active() else { return Ok(()) };
        if self.replica_retry() {
            // A replica read that may still be retried elsewhere: hold its answer until it is
            // whole (ends with ReadyForQuery) or large, so that a replica dying mid-answer costs
            // the client nothing. A small answer usually arrives in one read anyway.
            let buf = self.core.slot(side).map(|s| &s.conn.buf[..]).unwrap_or_default();
            if buf.len() < RETRY_HOLD && !ends_with_ready_for_query(buf) {
                return Ok(());
            }
        }
        if self.replan_held() {
            // An error first may be a stale plan's: wait for the ReadyForQuery that tells
            // whether the batch's transaction failed whole (it follows at once).
            let buf = self.core.slot(side).map(|s| &s.conn.buf[..]).unwrap_or_default();
            if buf.first() == Some(&msg::ERROR_RESPONSE) && buf.len() < RETRY_HOLD && !ends_with_ready_for_query(buf) {
                return Ok(());
            }
        }
        let read_only = self.core.read_only_now();
        let mut fwd = 0;
        // Where the answer still owed begins: just after the last ReadyForQuery seen.
        let mut answered = 0;
        loop {
            let Some(slot) = self.core.slot_mut(side) else { return Ok(()) };
            let buf_len = slot.conn.buf.len();
            if self.passthrough > 0 {
                let n = self.passthrough.min(buf_len - fwd);
                fwd += n;
                self.passthrough -= n;
                if self.passthrough > 0 {
                    break;
                }
            }
            let header = match frame::peek_header(&slot.conn.buf[fwd..], MAX_BACKEND_MESSAGE) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(_) => {
                    self.tell_client_backend_gone().await;
                    return Err(End::BackendGone);
                }
            };
            let avail = buf_len - fwd;
            match header.tag {
                msg::READY_FOR_QUERY | msg::ERROR_RESPONSE | msg::PARAMETER_STATUS | msg::NOTIFICATION_RESPONSE => {
                    if avail < header.total_len {
                        break;
                    }
                    let start = fwd + HEADER_LEN;
                    fwd += header.total_len;
                    match header.tag {
                        msg::READY_FOR_QUERY => {
                            slot.conn.tx = TxStatus::from_byte(slot.conn.buf.get(start).copied().unwrap_or(b'T'));
                            let answered_by = slot.backend;
                            self.outstanding = self.outstanding.saturating_sub(1);
                            self.after_ready(side);
                            if self.outstanding == 0 {
                                // Timed from the send of the batch this answer ends, on this
                                // same connection.
                                if let Some(at) = self.timing.take() {
                                    let latency = &self.id.cluster.latency;
                                    latency.record(answered_by, side == Side::Replica, at.elapsed());
                                    let (client, backend) = std::mem::take(&mut self.received);
                                    latency.add_bytes(client, backend);
                                }
                                if let Some(err) = self.inject.take() {
                                    // Our refusal goes just before this ReadyForQuery.
                                    self.flush_backend(side, fwd - header.total_len, 0).await?;
                                    fwd = header.total_len;
                                    self.send_client(&err).await?;
                                }
                                self.waiting = None;
                            }
                            answered = fwd;
                        }
                        msg::ERROR_RESPONSE => {
                            // Boxed: an error's paths (a rerun, a failover) are a session's rare ones.
                            if Box::pin(self.on_error(side, (start, fwd), answered, read_only)).await? {
                                return Ok(());
                            }
                        }
                        msg::NOTIFICATION_RESPONSE => {
                            // A notification names the process id the sender's client was
                            // given, as directly (clients compare it with their own, or with
                            // another session's): this session's own, or another session of
                            // this daemon whose queries run on that server process. A sender
                            // that is not a sqlswitch session keeps the server's pid.
                            let target = &slot.conn.cancel;
                            if let Some(raw) = slot.conn.buf.get_mut(start..start + 4) {
                                let server_pid = i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
                                let client = if server_pid == target.pid {
                                    Some(self.id.cancel.pid)
                                } else {
                                    self.id.cancel.client_pid_of(&target.addr, server_pid)
                                };
                                if let Some(pid) = client {
                                    raw.copy_from_slice(&pid.to_be_bytes());
                                }
                            }
                        }
                        _ => {
                            let body = slot.conn.buf[start..fwd].to_vec();
                            slot.conn.note_parameter(&body);
                        }
                    }
                }
                _ if avail >= header.total_len => fwd += header.total_len,
                _ => {
                    fwd += avail;
                    self.passthrough = header.total_len - avail;
                    break;
                }
            }
        }
        self.flush_backend(side, fwd, answered).await?;
        if self.waiting.is_none() && (!self.cbuf.is_empty() || self.batch.complete) {
            // Client messages held back while the backend caught up.
            return Box::pin(self.on_client()).await;
        }
        Ok(())
    }

    /// An ErrorResponse at `start..fwd` of `side`'s buffer, the answers before `answered`
    /// owed to the client: a replica's "not on a standby" and a stale plan run the batch
    /// again, a FATAL ends the connection. Whether `on_backend` is done (else forwarding goes
    /// on).
    #[expect(clippy::indexing_slicing, reason = "`start..fwd` is a whole message within the bytes buffered")]
    async fn on_error(
        &mut self,
        side: Side,
        (start, fwd): (usize, usize),
        answered: usize,
        read_only: bool,
    ) -> Result<bool, End> {
        let Some(slot) = self.core.slot_mut(side) else { return Ok(true) };
        // Where the message begins (its header).
        let at = start - HEADER_LEN;
        let body = &slot.conn.buf[start..fwd];
        // A replica read refused as "not on a standby", with nothing of it
        // sent yet and its whole answer here: run it on the primary.
        let refusal = standby_refusal(msg::error_fields(body).0);
        if let Some(remember) = refusal {
            let whole = ends_with_ready_for_query(&slot.conn.buf);
            let rerun = side == Side::Replica && !read_only && self.retry.is_some() && !self.replanning;
            if rerun && self.outstanding == 1 && whole && slot.conn.tx == TxStatus::Idle {
                // Earlier batches' answers are the client's; this one's is not.
                self.flush_backend(side, answered, answered).await?;
                if let Some(slot) = self.core.slot_mut(side) {
                    slot.conn.buf.clear();
                }
                return Box::pin(self.rerun_on_primary(remember)).await.map(|()| true);
            }
        }
        let body = &slot.conn.buf[start..fwd];
        if self.retry.is_some() && self.replanning && self.outstanding == 1 && stale_plan(body) {
            // The implicit transaction failed whole (the last byte is its
            // ReadyForQuery's status): nothing of the batch took effect.
            let idle_after = slot.conn.buf.last() == Some(&b'I');
            if ends_with_ready_for_query(&slot.conn.buf) && idle_after && at == answered {
                self.flush_backend(side, answered, answered).await?;
                if let Some(slot) = self.core.slot_mut(side) {
                    slot.conn.buf.clear();
                }
                return Box::pin(self.replan_and_rerun()).await.map(|()| true);
            }
        }
        let body = &slot.conn.buf[start..fwd];
        let open_tx = slot.conn.tx != TxStatus::Idle;
        if msg::is_fatal(body) && self.outstanding == 0 && (self.retry.is_none() || self.replanning) && open_tx {
            // The server ended the session's open transaction with its
            // connection (idle_in_transaction_session_timeout, a
            // terminate): the client hears the server's own words, and the
            // connection closes, as a direct client's would.
            self.flush_backend(side, fwd, 0).await?;
            return Err(End::BackendGone);
        }
        if msg::is_fatal(body) && (self.outstanding == 0 || (self.retry.is_some() && !self.replanning)) {
            // The server is closing this connection (shutdown, crash): with
            // nothing owed to the client, or a read that can run elsewhere,
            // the client need not hear of it.
            self.flush_backend(side, at, answered).await?;
            return Box::pin(self.backend_failed()).await.map(|()| true);
        }
        self.id.cluster.metrics.errors.count_state(true, msg::error_fields(body).0);
        self.inject = None;
        self.batch_error = true;
        Ok(false)
    }

    /// Bookkeeping at each ReadyForQuery of `side`.
    pub(super) fn after_ready(&mut self, side: Side) {
        if self.writes_in_flight && side == Side::Primary {
            self.core.wrote();
        }
        if self.outstanding == 0 {
            self.writes_in_flight = false;
            self.retry = None;
            if self.tx() == TxStatus::Idle && self.batch.side.is_none() {
                self.leave_primary();
                self.boundary = true;
            }
            match self.state_change.take() {
                Some(_) if self.batch_error => {}
                Some(StateChange::Record(sql)) => self.core.recorded(side, sql),
                Some(StateChange::ForgetAll) => self.core.discarded(side),
                None => {}
            }
        }
        self.batch_error = false;
    }

    /// Sends the first `n` buffered bytes of `side` to the client. Those past `answered` (the
    /// end of the last whole answer) are the start of the answer still owed: it cannot be run
    /// elsewhere from then on.
    pub(super) async fn flush_backend(&mut self, side: Side, n: usize, answered: usize) -> Result<(), End> {
        if n > answered {
            self.retry = None;
        }
        if n > 0 {
            let Some(slot) = self.core.slot_mut(side) else { return Ok(()) };
            let bytes = slot.conn.buf.get(..n).unwrap_or_default();
            self.client.send(bytes).await.map_err(|_| End::ClientGone)?;
            slot.conn.buf.advance(n);
        }
        Ok(())
    }
}

/// An error that says a prepared statement's cached plan no longer fits its tables (a schema
/// change since it was prepared on this connection).
fn stale_plan(body: &[u8]) -> bool {
    let (code, text) = msg::error_fields(body);
    code == Some("0A000") && text.is_some_and(|t| t.contains("cached plan must not change result type"))
}

/// A retryable replica answer is held back up to this size.
const RETRY_HOLD: usize = 64 * 1024;

/// Whether SQLSTATE `code` says a standby cannot run the statement, and if so whether to
/// remember that: `Some(true)` for 25006 (read-only transaction: the statement writes) and
/// 0A000 (an unlogged or temporary relation), `Some(false)` for 40001 (a cancel by a recovery
/// conflict, which passes).
fn standby_refusal(code: Option<&str>) -> Option<bool> {
    match code? {
        "25006" | "0A000" => Some(true),
        "40001" => Some(false),
        _ => None,
    }
}

/// Whether `buf` ends with a whole ReadyForQuery message.
fn ends_with_ready_for_query(buf: &[u8]) -> bool {
    buf.len().checked_sub(6).and_then(|at| buf.get(at..at + 5)) == Some(&[msg::READY_FOR_QUERY, 0, 0, 0, 5])
}
