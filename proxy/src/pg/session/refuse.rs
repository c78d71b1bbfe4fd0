//! What the session does with client messages it does not forward: a write refused in a
//! read-only session (answered here, or injected before the pipeline's Sync is answered),
//! skipping to the next Sync, and a malformed message (a FATAL error, then the end).

use super::*;
use crate::session::core::Refused;

impl Session<'_> {
    /// Refuses the write at offset `batch.len` (a `Q` or `P` of `len` bytes). Returns false when
    /// it must wait for the active connection's answers first.
    pub(super) async fn refuse(&mut self, tag: u8, len: usize, refused: Refused) -> Result<bool, End> {
        if self.batch.len > 0 && tag == fe::PARSE {
            // Earlier messages of this pipeline go out first; our error rides before its Sync's answer.
            if !self.dispatch().await? {
                return Ok(false);
            }
        }
        let pipeline = self.batch.side.is_some();
        if self.outstanding > 0 && !pipeline {
            self.waiting = Some(Waiting::Refusal);
            return Ok(false);
        }
        self.id.cluster.metrics.refused.increment(1);
        self.cbuf.advance(len);
        let mut err = BytesMut::new();
        let why = refused.why();
        let text = format!("cannot execute a write: {why} (sqlswitch refused it before it reached any server)");
        msg::error_response(&mut err, Severity::Error, sqlstate::READ_ONLY_SQL_TRANSACTION, &text);
        self.id.cluster.metrics.errors.count_state(false, Some(sqlstate::READ_ONLY_SQL_TRANSACTION));
        if tag == fe::QUERY && !pipeline {
            msg::ready_for_query(&mut err, self.tx());
            self.send_client(&err).await?;
        } else if pipeline {
            self.inject = Some(err);
            self.skip = Some(Skip::ForwardSync);
        } else {
            self.skip = Some(Skip::ReplyLocally);
            self.send_client(&err).await?;
        }
        Ok(true)
    }

    pub(super) async fn end_skip(&mut self, skip: Skip) -> Result<(), End> {
        match skip {
            Skip::ReplyLocally => {
                let mut out = BytesMut::new();
                msg::ready_for_query(&mut out, self.tx());
                self.send_client(&out).await
            }
            Skip::ForwardSync => {
                let side = self.batch.side.or(self.core.active()).unwrap_or(Side::Primary);
                let sent = match self.slot(side) {
                    Some(slot) => {
                        let mut sync = BytesMut::with_capacity(5);
                        postgres_protocol::message::frontend::sync(&mut sync);
                        slot.conn.stream.send(&sync).await.is_ok()
                    }
                    None => false,
                };
                if !sent {
                    self.tell_client_backend_gone().await;
                    return Err(End::BackendGone);
                }
                self.outstanding += 1;
                self.retry = None;
                self.batch.reset();
                self.waiting = Some(Waiting::ForwardedSync);
                Ok(())
            }
        }
    }

    pub(super) async fn client_error(&mut self, e: ProtocolError) -> End {
        let code = match e {
            ProtocolError::TooLarge { .. } => sqlstate::PROGRAM_LIMIT_EXCEEDED,
            _ => sqlstate::PROTOCOL_VIOLATION,
        };
        let mut out = BytesMut::new();
        msg::error_response(&mut out, Severity::Fatal, code, &e.to_string());
        self.id.cluster.metrics.errors.count_state(false, Some(code));
        let _ = self.client.send(&out).await;
        End::ClientError(e)
    }
}
