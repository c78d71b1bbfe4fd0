//! Transaction pooling for MySQL/MariaDB sessions (decision 0020): the connections go back to
//! the pool between transactions, reset (`COM_RESET_CONNECTION`), unless the session holds
//! what lives on its connection: a transaction (also an implicit one, with autocommit off, as
//! the server says), a read-only session's temporary tables, long data sent for an execution
//! still to come, or a statement's open cursor.

use super::*;
use crate::conn::mysql::MAX_KEPT_STATEMENTS;

/// Per session: what keeps its connection between transactions beyond the core's rules.
#[derive(Debug, Default)]
pub(super) struct Pooling {
    /// A command ended since the last look: the session may be between transactions.
    pub boundary: bool,
    /// Client statement ids executed with a cursor and not closed or reset since: their
    /// fetches need the connection the cursor is on.
    pub cursors: Vec<u32>,
    /// Autocommit was off when the connections went back: the next statement opens a
    /// transaction (as the server's status said when it had one).
    pub autocommit_off: bool,
    /// The session's last insert id (from the servers' OK packets; 0: none yet) and the
    /// connection (its serial) that answers it: another primary connection is given it
    /// (`SELECT LAST_INSERT_ID(n)`) before the session's next command, so that
    /// `LAST_INSERT_ID()` answers the session's own value wherever that runs.
    pub insert_id: (u64, u64),
    /// The last command left warnings or an error (`SHOW WARNINGS`, `@@warning_count`
    /// answer for the connection that ran it): the connection is kept for the next command
    /// a moment, when no client waits for one.
    pub diagnostics: bool,
    /// The command asks about the last statement (`SHOW WARNINGS`): it leaves the
    /// diagnostics as they were, as the server does.
    pub about_last: bool,
}

impl MySession<'_> {
    /// Between commands, with no next command buffered: at the end of a transaction the
    /// connections go back to the pool (transaction pooling), unless the session keeps them;
    /// `true` when it keeps them after a write for a moment (the caller arms
    /// [`crate::session::core::KEEP_AFTER_WRITE`]).
    pub(super) async fn between_commands(&mut self) -> bool {
        if !std::mem::take(&mut self.pooling.boundary) || self.in_tx() || self.holds_connection() {
            return false;
        }
        if self.core.transaction_ended(&self.id.key) {
            if self.pooling.diagnostics && self.core.keep_a_moment(&self.id.key) {
                return true;
            }
            self.give_back().await;
            return false;
        }
        self.core.keeping()
    }

    /// The client stayed silent for a moment after a write: the connections go back now.
    pub(super) async fn keep_expired(&mut self) {
        if self.core.keep_expired() && !self.in_tx() && !self.holds_connection() {
            self.give_back().await;
        }
    }

    /// What keeps the connection beyond the core's rules.
    fn holds_connection(&self) -> bool {
        self.temp_home.is_some() || self.statements.long_data_pending() || !self.pooling.cursors.is_empty()
    }

    /// Gives every connection back: reset after a transaction that wrote, when the last
    /// command left diagnostics (`SHOW WARNINGS` would answer for it) or with autocommit off;
    /// else as it is. The statements the session prepared on a connection stay there, by
    /// text, for whoever prepares the same next ([`crate::conn::mysql::Kept`]; a reset
    /// drops them); the session prepares them again where they next execute.
    async fn give_back(&mut self) {
        self.pooling.autocommit_off = self.autocommit_off();
        let reset = self.pooling.diagnostics || self.pooling.autocommit_off;
        // Kept only when prepared with the login's settings (the session has no state of its
        // own: it would have had it when it prepared them, as state only grows).
        let keep = !self.core.state().has_state();
        for side in [Side::Primary, Side::Replica] {
            let Some(slot) = self.core.slot_mut(side) else { continue };
            slot.wrote |= reset;
            let mut closing = BytesMut::new();
            for (sql, id) in self.statements.take_conn(slot.serial) {
                let kept = &mut slot.conn.kept.statements;
                if !keep || kept.len() >= MAX_KEPT_STATEMENTS || kept.iter().any(|(s, _)| *s == sql) {
                    packet::encode(&mut closing, 0, &[&[command::STMT_CLOSE][..], &id.to_le_bytes()].concat());
                } else {
                    kept.push((sql, id));
                }
            }
            // COM_STMT_CLOSE has no answer: one write, no wait.
            if !closing.is_empty() && slot.conn.stream.send(&closing).await.is_err() {
                slot.stale = true;
            }
        }
        Box::pin(self.core.give_back_all(&self.id.key)).await;
    }

    /// Gives the primary connection about to run a command the session's last insert id, if
    /// another connection answered it.
    pub(super) async fn carry_insert_id(&mut self, side: Side) -> Result<(), BackendError> {
        let (value, on) = self.pooling.insert_id;
        let Some(slot) = self.core.slot_mut(side).filter(|s| value != 0 && side == Side::Primary && s.serial != on)
        else {
            return Ok(());
        };
        slot.conn.simple_query(&format!("SELECT LAST_INSERT_ID({value})")).await?;
        slot.conn.kept.insert_id = true;
        self.pooling.insert_id.1 = slot.serial;
        Ok(())
    }

    /// Notes what a command does to cursors: an execution with cursor `flags` opens one on
    /// statement `id`; a close or reset of `id` ends it.
    pub(super) fn note_cursor(&mut self, cmd: u8, id: u32, flags: u8) {
        let cursors = &mut self.pooling.cursors;
        match cmd {
            command::STMT_EXECUTE if flags != 0 && !cursors.contains(&id) => cursors.push(id),
            command::STMT_CLOSE | command::STMT_RESET => cursors.retain(|c| *c != id),
            _ => {}
        }
    }
}
