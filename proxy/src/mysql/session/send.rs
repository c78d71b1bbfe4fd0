//! Sending a command to a backend: the connection readied with the session state, a
//! prepared statement named as that connection knows it (prepared there first if need be).

use super::*;

impl MySession<'_> {
    /// Makes sure `plan.side` has a connection to `plan.backend` with the session state, then
    /// sends `wire`.
    pub(super) async fn send(&mut self, plan: &Plan, wire: &mut BytesMut) -> Result<(), BackendError> {
        let side = plan.side;
        // A connection the server closed between commands (a timeout, a kill) is replaced,
        // with the session state replayed, unless it held an open transaction: that is lost,
        // and the client must hear it.
        let tx = self.tx();
        let id = &self.id;
        // Boxed, when there is anything to do: taking a connection (a wait, a login) is the
        // largest state of a session's future; unboxed, every idle session would carry its size.
        if !self.core.settled(side, plan.backend, tx) {
            Box::pin(self.core.ready(side, plan.backend, &id.key, tx, |backend| acquire(id, backend))).await?;
        }
        self.carry_insert_id(side).await?;
        let id = &self.id;
        // Statements a connection kept were prepared with the login's settings: only a session
        // with no state of its own may take them (the same text could name another table
        // after a `USE`, another collation after a `SET`).
        let stateless = !self.core.state().has_state();
        let slot = self.core.slot_mut(side).ok_or(BackendError::Closed)?;
        let mut close_elsewhere = Vec::new();
        // A command naming a prepared statement names it as this connection knows it,
        // preparing it here first if it never ran here.
        let cmd = wire.get(HEADER_LEN).copied().unwrap_or(0);
        let at = HEADER_LEN + 1;
        if let Some(client_id) = le_u32(wire, at).filter(|_| carries_statement(cmd)) {
            let backend_id = match self.statements.on(client_id, slot.serial) {
                Some(b) => Some(b),
                None => match self.statements.sql(client_id).map(<[u8]>::to_vec) {
                    Some(sql) => {
                        // Prepared there already by a session before (kept by the connection), or
                        // prepared now.
                        let kept = if stateless { slot.conn.kept.take_statement(&sql) } else { None };
                        let b = match kept {
                            Some(b) => b,
                            None => {
                                id.cluster.metrics.prepared_again.increment(1);
                                prepare_on(&mut slot.conn, &sql).await?
                            }
                        };
                        self.statements.record(client_id, slot.serial, b);
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
                if let Some(payload) = self.statements.execute_payload(client_id, slot.serial, payload) {
                    wire.clear();
                    packet::encode(wire, 0, &payload);
                }
            }
            if cmd == command::STMT_CLOSE {
                close_elsewhere = self.statements.prepared_elsewhere(client_id, slot.serial);
                self.statements.remove(client_id);
            }
        }
        if plan.temp.is_some() {
            // The session's transactions are read-only (MariaDB then refuses even temporary
            // tables): this statement runs read-write, on a replica whose read_only stops any
            // write to a real table; read-only again right after ([`MySession::temp_done`]).
            slot.conn.simple_query("SET SESSION TRANSACTION READ WRITE").await?;
        }
        self.thread.set_target(Some((plan.backend, slot.conn.thread_id)));
        slot.conn.stream.send(wire).await?;
        // A closed statement is closed on the session's other connection too (no answer comes).
        if let Some(o) = self.core.slot_mut(side.other()) {
            if let Some((_, id)) = close_elsewhere.iter().find(|(c, _)| *c == o.serial) {
                let mut payload = vec![command::STMT_CLOSE];
                payload.extend_from_slice(&id.to_le_bytes());
                let mut close = BytesMut::new();
                packet::encode(&mut close, 0, &payload);
                o.conn.stream.send(&close).await?;
            }
        }
        self.core.activate(plan.side);
        Ok(())
    }
}
