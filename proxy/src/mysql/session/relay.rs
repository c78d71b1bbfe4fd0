//! Streaming a command's answer back to the client, following it to its end.

use super::*;

impl MySession<'_> {
    /// Streams the answer on `side` to the client.
    ///
    /// Slices of the read buffer here are bounded by the packet header just checked against
    /// the bytes buffered (`avail`), so they cannot be out of range. `Ok(failed)` when it is complete (`failed`:
    /// it was an error); [`Fail`] when the backend failed or the client left.
    #[expect(clippy::indexing_slicing, reason = "every slice is within the header-checked bytes buffered")]
    pub(super) async fn relay(
        &mut self,
        side: Side,
        answer: Answer,
        prepared_sql: Option<&[u8]>,
    ) -> Result<bool, Fail> {
        let statements = &mut self.statements;
        let Some(slot) = self.core.slot_mut(side) else { return Err(Fail::Backend { forwarded: false }) };
        let conn_id = slot.serial;
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
                    let left = tracker.failed || sqlswitch_protocol::mysql::response::terminator_warnings(prefix) > 0;
                    let about_last = std::mem::take(&mut self.pooling.about_last);
                    self.pooling.diagnostics = left || (about_last && self.pooling.diagnostics);
                    // Counted before the client can see it.
                    if tracker.failed {
                        self.id.cluster.metrics.errors.count(true, &tracker.error_class);
                    }
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
                if tracker.insert_id != 0 {
                    self.pooling.insert_id = (tracker.insert_id, conn_id);
                    conn.kept.insert_id = true;
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
                    Ok(n) if n > 0 => self.received.1 += n as u64,
                    _ => return Err(Fail::Backend { forwarded }),
                },
                r = self.client.read_buf(&mut self.cbuf), if !client_eof => {
                    if let Ok(n) = r {
                        self.received.0 += n as u64;
                    }
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
}
