//! A batch run again on the primary: after a stale plan (0A000 under a schema change) or a
//! replica's refusal of what no lexer can see to be a write.

use sqlswitch_protocol::pg::frontend as fe;
use tracing::debug;

use super::dispatch::Sending;
use super::session::{End, Session};
use crate::session::Side;

impl Session<'_> {
    /// Sends the held batch ([`Session::retry`]) to the primary (again); its first answer, if
    /// any, has been consumed.
    pub(super) async fn resend_on_primary(&mut self) -> Result<(), End> {
        let Some(retry) = self.retry.take() else { return Ok(()) };
        let binds = std::mem::take(&mut self.retry_binds);
        self.outstanding = self.outstanding.saturating_sub(1);
        let primary = self.id.cluster.table.load().primary;
        let sent = self.send(Sending::To(Side::Primary), primary, &retry, binds.as_slice()).await;
        self.retry_binds = binds;
        match sent? {
            Some(side) => {
                self.outstanding += 1;
                self.id.cancel.set_target(self.core.slot(side).map(|s| s.conn.cancel.clone()));
                self.core.activate(side);
            }
            None => self.waiting = None,
        }
        Ok(())
    }

    /// The primary answered a batch of prepared statements (held in [`Session::retry`], none
    /// of it sent to the client) with 0A000 "cached plan must not change result type": a schema
    /// change since the statements were prepared on this connection (by this session, or by
    /// another that left them here). Directly, a session preparing after the change would not
    /// see it. They are closed, prepared again, and the batch runs again: its implicit
    /// transaction failed whole, so nothing of it took effect.
    pub(super) async fn replan_and_rerun(&mut self) -> Result<(), End> {
        if !std::mem::take(&mut self.replanning) {
            return Ok(());
        }
        // The connection's copies are stale: closed and prepared again before the batch.
        if let Some(slot) = self.core.slot_mut(Side::Primary) {
            for name in self.retry_binds.as_slice() {
                slot.applied.stale(name);
            }
        }
        self.id.cluster.metrics.replans.increment(1);
        debug!("a prepared statement's plan went stale under a schema change; preparing it again");
        self.resend_on_primary().await
    }

    /// A read-write session's replica refused a read, before any of its answer reached the
    /// client, with an error that means "not on a standby" (25006: it writes after all, as a
    /// view calling `nextval()`; 0A000: an unlogged or temporary relation; 40001: a cancel by a
    /// recovery conflict). What no lexer can see is corrected here: the read runs on the
    /// primary, the client never hears of the replica, and (but for a conflict, which passes)
    /// the statement goes to the primary from then on, in every session.
    pub(super) async fn rerun_on_primary(&mut self, remember: bool) -> Result<(), End> {
        let cluster = self.id.cluster;
        cluster.metrics.reruns.increment(1);
        if remember {
            if let Some(retry) = self.retry.clone() {
                for name in remember_statements(cluster, &retry) {
                    self.core.not_read(&name);
                }
            }
        }
        debug!(remember, "a replica cannot run this read; running it on the primary");
        self.resend_on_primary().await
    }
}

/// Remembers, for the whole cluster, the texts of the statements in `messages` (a client
/// batch) as primary-only; returns the names of the prepared statements it binds.
fn remember_statements(cluster: &crate::cluster::Cluster, mut messages: &[u8]) -> Vec<String> {
    use sqlswitch_protocol::classify::text::Text;
    use sqlswitch_protocol::pg::frame;
    let mut names = Vec::new();
    while let Ok(Some(h)) = frame::peek_header(messages, usize::MAX) {
        let Some(body) = messages.get(frame::HEADER_LEN..h.total_len) else { break };
        match h.tag {
            fe::QUERY => {
                if let Ok(text) = fe::query_text(body) {
                    cluster.primary_only.remember(&Text::read(text).sql);
                }
            }
            fe::PARSE => {
                if let Ok((name, text)) = fe::parse(body) {
                    cluster.primary_only.remember(&Text::read(text).sql);
                    names.push(name.to_owned());
                }
            }
            fe::BIND => {
                let mut f = frame::Fields::new(body);
                if let (Ok(_), Ok(name)) = (f.cstr("portal"), f.cstr("statement")) {
                    names.push(name.to_owned());
                }
            }
            _ => {}
        }
        messages = messages.get(h.total_len..).unwrap_or_default();
    }
    names
}
