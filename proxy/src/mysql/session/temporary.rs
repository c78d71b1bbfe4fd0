//! A read-only session's temporary tables: which statements use them ([`crate::mysql::temp`]),
//! where they live, and what happens when that replica is gone.

use super::*;

/// What a read-only session's statement does with its temporary tables.
#[derive(Debug, Clone)]
pub(super) enum TempUse {
    /// Creates this one.
    Create(String),
    /// Drops these.
    Drop(Vec<String>),
    /// Writes to one of them.
    Write,
}

impl MySession<'_> {
    /// A read-only session's statement on its own temporary tables, which its replica allows.
    pub(super) fn temp_use(&self, sql: &str) -> Option<TempUse> {
        if !self.core.read_only_now() {
            return None;
        }
        if let Some(name) = crate::mysql::temp::created(sql) {
            return Some(TempUse::Create(name));
        }
        if let Some(names) = crate::mysql::temp::dropped(sql).filter(|n| n.iter().all(|t| self.temp_tables.contains(t)))
        {
            return Some(TempUse::Drop(names));
        }
        crate::mysql::temp::written(sql).filter(|t| self.temp_tables.contains(t)).map(|_| TempUse::Write)
    }

    /// After a temporary-table statement ran on `side`/`backend` (`failed`: with an error):
    /// the connection is read-only again, and the session's tables are noted. Returns false
    /// when the connection could not be made read-only again (it is then not used further).
    pub(super) async fn temp_done(&mut self, temp: TempUse, failed: bool, side: Side, backend: usize) -> bool {
        let restored = match self.core.slot_mut(side) {
            Some(slot) => slot.conn.simple_query("SET SESSION TRANSACTION READ ONLY").await.is_ok(),
            None => false,
        };
        if !restored {
            self.core.take(side);
            return false;
        }
        if failed {
            return true;
        }
        match temp {
            TempUse::Create(name) => {
                self.temp_tables.push(name);
                self.temp_home.get_or_insert((side, backend));
            }
            TempUse::Drop(names) => {
                self.temp_tables.retain(|t| !names.contains(t));
                if self.temp_tables.is_empty() {
                    self.temp_home = None;
                }
            }
            TempUse::Write => {}
        }
        true
    }

    /// The replica that holds the session's temporary tables is gone: the session ends with an
    /// error naming them, never moved without them.
    pub(super) async fn temp_lost(&mut self, seq: u8) -> End {
        let text = format!(
            "Connection was killed: the replica holding this session's temporary table(s) {} is gone (sqlswitch)",
            self.temp_tables.join(", ")
        );
        warn!(tables = ?self.temp_tables, "ending a session whose temporary tables were on a replica that failed");
        self.err(seq, code::CONNECTION_KILLED, "70100", &text).await;
        End::BackendGone
    }
}
