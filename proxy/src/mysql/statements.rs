//! Prepared statements across connections. The client sees the proxy's own statement ids; each
//! backend connection has its own, prepared lazily from the statement's SQL the first time it
//! executes there (after a switchover, on the new primary). Ids are rewritten in the commands
//! on the way out and in the prepare answer on the way back.

use std::collections::HashMap;

use sqlswitch_protocol::mysql::caps;
use sqlswitch_protocol::mysql::command::{self, Answer};
use sqlswitch_protocol::mysql::response::{Step, Tracker};

use crate::backend::BackendError;
use crate::conn::mysql::{refused, MyConn};

struct Prepared {
    sql: Vec<u8>,
    /// Provably a read: its executions may run on a replica.
    read: bool,
    /// `BEGIN`, `COMMIT` and the like: their executions write nothing of their own.
    tx_control: bool,
    /// Long data was sent for its next execution (to the primary connection).
    long_data: bool,
    /// Number of parameters.
    params: u16,
    /// The parameter types of the client's last execute that sent them (2 bytes each).
    types: Option<Vec<u8>>,
    /// Per connection: its statement id, and whether it has been sent the types.
    on: Vec<On>,
}

struct On {
    conn: u64,
    id: u32,
    typed: bool,
}

/// The session's prepared statements.
#[derive(Default)]
pub struct Statements {
    next: u32,
    map: HashMap<u32, Prepared>,
}

impl Statements {
    /// Records a statement prepared on connection `conn` as `backend_id`; returns the id the
    /// client gets.
    pub fn add(&mut self, sql: Vec<u8>, params: u16, conn: u64, backend_id: u32) -> u32 {
        self.next = self.next.wrapping_add(1).max(1);
        let text = sqlswitch_protocol::classify::text::Text::read(&sql);
        let verdict = sqlswitch_protocol::classify::classify_mysql_with(&text.sql, &[]);
        let read = !text.ambiguous && verdict.is_read();
        let tx_control = matches!(verdict.class, sqlswitch_protocol::classify::Class::Tx(_));
        let on = vec![On { conn, id: backend_id, typed: false }];
        self.map.insert(self.next, Prepared { sql, read, tx_control, long_data: false, params, types: None, on });
        self.next
    }

    /// Whether long data was sent for an execution still to come: it is on its connection.
    pub fn long_data_pending(&self) -> bool {
        self.map.values().any(|p| p.long_data)
    }

    /// Connection `conn` goes back to the pool: the statements prepared there stop being the
    /// session's. Returns them (text, the connection's id), for the connection to keep.
    pub fn take_conn(&mut self, conn: u64) -> Vec<(Vec<u8>, u32)> {
        let mut taken = Vec::new();
        for p in self.map.values_mut() {
            if let Some(at) = p.on.iter().position(|o| o.conn == conn) {
                taken.push((p.sql.clone(), p.on.swap_remove(at).id));
            }
        }
        taken
    }

    /// The id of client statement `id` on connection `conn`, if prepared there.
    pub fn on(&self, id: u32, conn: u64) -> Option<u32> {
        self.map.get(&id)?.on.iter().find(|o| o.conn == conn).map(|o| o.id)
    }

    /// Adjusts a `COM_STMT_EXECUTE` payload for connection `conn`: remembers parameter types the
    /// client sends, and adds them when the client sends none but this connection never got
    /// them (the statement was prepared here by the proxy). Returns a new payload when changed.
    pub fn execute_payload(&mut self, id: u32, conn: u64, payload: &[u8]) -> Option<Vec<u8>> {
        let p = self.map.get_mut(&id)?;
        let n = usize::from(p.params);
        let on = p.on.iter_mut().find(|o| o.conn == conn)?;
        if n == 0 {
            return None;
        }
        // cmd(1) id(4) flags(1) iterations(4) null bitmap, then the new-params-bound flag.
        let flag_at = 10 + n.div_ceil(8);
        let flag = *payload.get(flag_at)?;
        if flag == 1 {
            p.types = payload.get(flag_at + 1..flag_at + 1 + 2 * n).map(<[u8]>::to_vec);
            on.typed = true;
            return None;
        }
        if on.typed {
            return None;
        }
        let types = p.types.as_ref()?;
        on.typed = true;
        let mut out = Vec::with_capacity(payload.len() + types.len());
        let (before, after) = (payload.get(..flag_at)?, payload.get(flag_at + 1..)?);
        out.extend_from_slice(before);
        out.push(1);
        out.extend_from_slice(types);
        out.extend_from_slice(after);
        Some(out)
    }

    /// Whether an execution of client statement `id` with cursor `flags` may run on a replica:
    /// a provable read, with no long data pending and no cursor (a cursor's fetches need the
    /// connection that opened it).
    pub fn replica_ok(&self, id: u32, flags: u8) -> bool {
        self.map.get(&id).is_some_and(|p| p.read && !p.long_data && flags == 0)
    }

    /// Whether statement `id` is `BEGIN`, `COMMIT` or the like (sysbench prepares them).
    pub fn tx_control(&self, id: u32) -> bool {
        self.map.get(&id).is_some_and(|p| p.tx_control)
    }

    /// Long data was sent for statement `id` (it goes to the primary connection), or its
    /// execution consumed it.
    pub fn set_long_data(&mut self, id: u32, pending: bool) {
        if let Some(p) = self.map.get_mut(&id) {
            p.long_data = pending;
        }
    }

    /// The connections other than `except` on which statement `id` is prepared, with their ids.
    pub fn prepared_elsewhere(&self, id: u32, except: u64) -> Vec<(u64, u32)> {
        self.map
            .get(&id)
            .map(|p| p.on.iter().filter(|o| o.conn != except).map(|o| (o.conn, o.id)).collect())
            .unwrap_or_default()
    }

    /// The SQL of client statement `id`.
    pub fn sql(&self, id: u32) -> Option<&[u8]> {
        self.map.get(&id).map(|p| p.sql.as_slice())
    }

    /// Records that client statement `id` is `backend_id` on connection `conn`.
    pub fn record(&mut self, id: u32, conn: u64, backend_id: u32) {
        if let Some(p) = self.map.get_mut(&id) {
            p.on.push(On { conn, id: backend_id, typed: false });
        }
    }

    /// The client closed statement `id`.
    pub fn remove(&mut self, id: u32) {
        self.map.remove(&id);
    }
}

/// Whether command `cmd` names a prepared statement in bytes 1..5 of its payload.
pub fn carries_statement(cmd: u8) -> bool {
    matches!(
        cmd,
        command::STMT_EXECUTE
            | command::STMT_BULK_EXECUTE
            | command::STMT_CLOSE
            | command::STMT_RESET
            | command::STMT_SEND_LONG_DATA
            | command::STMT_FETCH
    )
}

/// Prepares `sql` on `conn` and reads the whole answer; returns the connection's statement id.
///
/// # Errors
/// I/O failure, or the server's refusal.
pub async fn prepare_on(conn: &mut MyConn, sql: &[u8]) -> Result<u32, BackendError> {
    let mut payload = Vec::with_capacity(sql.len() + 1);
    payload.push(command::STMT_PREPARE);
    payload.extend_from_slice(sql);
    let mut out = bytes::BytesMut::new();
    sqlswitch_protocol::mysql::packet::encode(&mut out, 0, &payload);
    conn.stream.send(&out).await?;
    let mut tracker = Tracker::new(Answer::Prepare, conn.caps & caps::DEPRECATE_EOF != 0);
    let mut id = None;
    loop {
        let p = conn.read_packet().await?;
        if p.payload.first() == Some(&0xFF) {
            return Err(refused(p.payload.freeze()));
        }
        if id.is_none() {
            let b = p.payload.get(1..5).and_then(|b| <[u8; 4]>::try_from(b).ok());
            id = Some(u32::from_le_bytes(b.ok_or_else(|| BackendError::Protocol("short prepare answer".into()))?));
        }
        if let Step::Done(_) =
            tracker.feed(p.payload.len(), &p.payload).map_err(|e| BackendError::Protocol(e.to_string()))?
        {
            return id.ok_or_else(|| BackendError::Protocol("empty prepare answer".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_map_per_connection() {
        let mut s = Statements::default();
        let a = s.add(b"select ?".to_vec(), 1, 7, 1);
        assert!(s.replica_ok(a, 0), "a read may run on a replica");
        assert!(!s.replica_ok(a, 1), "not with a cursor");
        s.set_long_data(a, true);
        assert!(!s.replica_ok(a, 0), "not with long data pending on the primary");
        s.set_long_data(a, false);
        let b = s.add(b"select 2".to_vec(), 0, 7, 2);
        assert_ne!(a, b);
        assert_eq!(s.on(a, 7), Some(1));
        assert_eq!(s.on(a, 8), None, "not prepared on the other connection yet");
        s.record(a, 8, 1);
        assert_eq!(s.on(a, 8), Some(1));
        assert_eq!(s.sql(b), Some(&b"select 2"[..]));
        // The client's first execute on connection 7 sends types (flag 1); later ones do not.
        let typed = [0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0x00, 1, 0x08, 0x00, 42, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(s.execute_payload(a, 7, &typed), None);
        let untyped = [0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0x00, 0, 42, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(s.execute_payload(a, 7, &untyped), None, "connection 7 has the types");
        let fixed = s.execute_payload(a, 8, &untyped).expect("connection 8 never got the types");
        assert_eq!(fixed, typed.to_vec());
        assert_eq!(s.execute_payload(a, 8, &untyped), None, "only the first time");
        s.remove(a);
        assert_eq!(s.sql(a), None);
        // sysbench prepares its BEGIN and COMMIT: they write nothing of their own.
        let begin = s.add(b"BEGIN".to_vec(), 0, 7, 3);
        assert!(s.tx_control(begin) && !s.tx_control(b));
        // Connection 7 goes back: what was prepared there is its to keep, no longer the session's.
        let mut kept = s.take_conn(7);
        kept.sort_unstable();
        assert_eq!(kept, vec![(b"BEGIN".to_vec(), 3), (b"select 2".to_vec(), 2)]);
        assert_eq!(s.on(b, 7), None);
    }
}
