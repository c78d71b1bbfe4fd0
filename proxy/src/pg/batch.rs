//! The open batch: client messages from the end of one Sync to the next (or one Query), with
//! what routing needs to know about them. A batch is dispatched whole at its Sync, so one
//! decision covers it; a Flush, or a batch too large to hold, dispatches what is there and fixes
//! the backend for the rest of it.

use sqlswitch_protocol::classify::text::Text;
use sqlswitch_protocol::classify::{Class, TxControl, Verdict};

use sqlswitch_protocol::pg::frame::Fields;
use sqlswitch_protocol::pg::frontend as fe;
use sqlswitch_protocol::ProtocolError;

use crate::route;
use crate::session::state::SessionState;
use crate::session::Side;

/// A list of statement names that keeps its strings' buffers from batch to batch, so that
/// binding a prepared statement allocates nothing in steady state.
#[derive(Debug, Default)]
pub struct Names {
    items: Vec<String>,
    len: usize,
}

impl Names {
    /// Empties the list, keeping the buffers.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The names.
    pub fn as_slice(&self) -> &[String] {
        self.items.get(..self.len).unwrap_or_default()
    }

    /// Whether `name` is in the list.
    pub fn contains(&self, name: &str) -> bool {
        self.as_slice().iter().any(|n| n == name)
    }

    /// Adds `name`.
    pub fn push(&mut self, name: &str) {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                slot.clear();
                slot.push_str(name);
            }
            None => self.items.push(name.to_owned()),
        }
        self.len += 1;
    }

    /// Makes this list a copy of `other`, reusing buffers.
    pub fn copy_from(&mut self, other: &Names) {
        self.clear();
        for n in other.as_slice() {
            self.push(n);
        }
    }
}

/// The batch being assembled.
#[derive(Debug, Default)]
pub struct OpenBatch {
    /// Bytes at the front of the client buffer that belong to it and are not dispatched yet.
    pub len: usize,
    /// Where its dispatched part went; the rest follows.
    pub side: Option<Side>,
    /// Every statement so far is provably a read.
    pub read: bool,
    /// Some statement may write (not a read, transaction control or session state): refused
    /// in read-only maintenance mode.
    pub maybe_writes: bool,
    /// Starts a `READ ONLY` transaction.
    pub begins_read_only_tx: bool,
    /// Execute messages and simple Queries in it.
    pub statements: u32,
    /// Named statements it binds without parsing them itself: they may need preparing.
    pub binds: Names,
    /// Named statements it parses: `(name, generation)`.
    pub parsed: Vec<(String, u64)>,
    /// Named statements it closes.
    pub closes: Vec<String>,
    /// A session-state statement to record once it succeeds (`None` when there is none).
    pub session_sql: Option<String>,
    /// State that cannot be replayed, or a pin: the session stays on the primary.
    pub pins: bool,
    /// What the batch leaves on its connection that cannot move to another server.
    pub unmovable: Option<&'static str>,
    /// It forgets every prepared statement (`DISCARD ALL`, `DEALLOCATE ALL`).
    pub forgets_all: bool,
    /// It binds the unnamed statement without parsing it: it must go where that was parsed.
    pub needs_unnamed_from: bool,
    /// It parses the unnamed statement.
    pub parses_unnamed: bool,
    /// Sync points (Sync, Query, FunctionCall) in its undispatched part.
    pub syncs: u32,
    /// It reached its sync point and waits only to be dispatched.
    pub complete: bool,
    /// It holds only named Parses and Syncs (libpq's `PQprepare`).
    pub only_parses: bool,
    /// Some statement may release what keeps the session on its connection.
    pub releases: bool,
}

impl OpenBatch {
    /// A fresh batch, keeping the vectors' capacity.
    pub fn reset(&mut self) {
        self.len = 0;
        self.side = None;
        self.read = true;
        self.maybe_writes = false;
        self.begins_read_only_tx = false;
        self.statements = 0;
        self.binds.clear();
        self.parsed.clear();
        self.closes.clear();
        self.session_sql = None;
        self.pins = false;
        self.unmovable = None;
        self.forgets_all = false;
        self.needs_unnamed_from = false;
        self.parses_unnamed = false;
        self.syncs = 0;
        self.complete = false;
        self.only_parses = true;
        self.releases = false;
    }

    /// Adds a statement's verdict; `text` is its text, kept when it is session state. State set
    /// in text that is not UTF-8 is not kept (the classifier's copy is not the client's bytes):
    /// the session stays where it is.
    pub fn add_verdict(&mut self, v: &Verdict, text: &Text<'_>) {
        let sql: &str = &text.sql;
        if !v.is_read() {
            self.read = false;
        }
        if v.may_write() {
            self.maybe_writes = true;
        }
        self.releases |= v.releases;
        if let Some(pin) = v.pin {
            self.pins = true;
            if let Some(why) = crate::session::state::unmovable(pin, false) {
                self.unmovable.get_or_insert(why);
            }
        }
        match v.class {
            Class::Tx(TxControl::Begin(o)) if o.read_only == Some(true) && !o.serializable => {
                self.begins_read_only_tx = true
            }
            Class::Tx(TxControl::Begin(o) | TxControl::SetTransaction(o)) if o.serializable => self.pins = true,
            Class::Session => {
                match statement_effect(sql) {
                    Effect::ForgetsAll => self.forgets_all = true,
                    // Dropping one statement by SQL would desynchronise our map: stay on the primary.
                    Effect::Deallocates => self.stuck(),
                    // Two state changes in one batch: keep it simple and stay on the primary.
                    Effect::Replayable if self.session_sql.is_some() || text.legacy => self.stuck(),
                    Effect::Replayable => self.session_sql = Some(sql.to_owned()),
                }
                self.pins |= v.serializable;
            }
            // `SELECT set_config(..., false)`: state to replay like a SET; a set_config the
            // text alone cannot replay (a parameter, other calls beside it) pins.
            Class::Unknown if v.sets_config_only => match self.session_sql {
                None if !text.legacy => self.session_sql = Some(sql.to_owned()),
                _ => self.stuck(),
            },
            Class::Unknown if v.custom_setting => self.stuck(),
            // Several statements with a state change among them cannot be replayed alone.
            Class::Multi if v.session => self.stuck(),
            _ => {}
        }
    }

    /// Session state that is not recorded for replay: the session stays on the primary, and
    /// cannot move to another one.
    pub fn stuck(&mut self) {
        self.pins = true;
        self.unmovable.get_or_insert("session state that sqlswitch cannot replay");
    }

    /// The routing view of this batch.
    pub fn view(&self) -> route::Batch {
        route::Batch {
            read: self.read && self.statements > 0 && self.session_sql.is_none() && !self.pins,
            begins_read_only_tx: self.begins_read_only_tx,
            session_state: self.session_sql.is_some() || self.pins,
        }
    }
}

/// What a session-state statement does to prepared statements.
enum Effect {
    /// `DISCARD ALL`: drops every prepared statement and resets all state.
    ForgetsAll,
    /// `DEALLOCATE ...`: drops prepared statements.
    Deallocates,
    /// Anything else (`SET`, `RESET`, `PREPARE`, `DISCARD PLANS`, ...): replay it elsewhere.
    Replayable,
}

fn statement_effect(sql: &str) -> Effect {
    let mut words = sql.split(|c: char| c.is_ascii_whitespace() || c == ';').filter(|w| !w.is_empty());
    let first = words.next().unwrap_or("");
    if first.eq_ignore_ascii_case("deallocate") {
        Effect::Deallocates
    } else if first.eq_ignore_ascii_case("discard") && words.next().is_some_and(|w| w.eq_ignore_ascii_case("all")) {
        Effect::ForgetsAll
    } else {
        Effect::Replayable
    }
}

/// Records a Bind, Describe or Close of a named (or the unnamed) statement.
pub fn note_statement_use(batch: &mut OpenBatch, state: &SessionState, tag: u8, name: Option<&str>) {
    let Some(name) = name else { return };
    if tag == fe::CLOSE {
        if !name.is_empty() {
            batch.closes.push(name.to_owned());
        }
        return;
    }
    if name.is_empty() {
        if !batch.parses_unnamed {
            batch.needs_unnamed_from = true;
        }
        return;
    }
    if batch.parsed.iter().any(|(n, _)| n == name) {
        return;
    }
    match state.statement(name) {
        Some(s) if s.read => {}
        _ => batch.read = false,
    }
    if !batch.binds.contains(name) {
        batch.binds.push(name);
    }
}

/// The statement a Bind, Describe (`S`) or Close (`S`) names; `None` for portals.
pub fn statement_name(tag: u8, body: &[u8]) -> Result<Option<&str>, ProtocolError> {
    let mut f = Fields::new(body);
    if tag == fe::BIND {
        f.cstr("Bind portal")?;
        return f.cstr("Bind statement").map(Some);
    }
    let kind = f.byte("Describe/Close kind")?;
    let name = f.cstr("Describe/Close name")?;
    Ok((kind == b'S').then_some(name))
}

#[cfg(test)]
mod tests {
    use sqlswitch_protocol::classify::classify_pg;
    use sqlswitch_protocol::classify::text::Text;

    use super::OpenBatch;

    /// A SET in UTF-8 is kept for replay; the same SET in LATIN9 bytes is not (its classifier
    /// copy differs from the client's bytes): the session stays where it is.
    #[test]
    fn state_set_in_text_that_is_not_utf8_is_not_kept_for_replay() {
        for (bytes, kept) in [(&b"SET search_path = cafe"[..], true), (b"SET search_path = caf\xe9", false)] {
            let text = Text::read(bytes);
            let mut batch = OpenBatch::default();
            batch.add_verdict(&classify_pg(&text.sql), &text);
            assert_eq!(batch.session_sql.is_some(), kept, "{bytes:?}");
            assert_eq!(batch.unmovable.is_some(), !kept, "{bytes:?}");
        }
    }
}

/// Whether a client batch holds only what runs prepared statements (Bind, Describe, Execute,
/// Close, Flush) and one Sync, last, and describes each portal before executing it: run again
/// whole, it does what it would have done once, and the client learns the result's columns
/// from the new plan (libpq's `PQexecPrepared`, pgbench `-M prepared`), not from the plan it
/// prepared.
pub fn only_executes(mut batch: &[u8]) -> bool {
    use sqlswitch_protocol::pg::frame;
    let (mut syncs, mut described) = (0, false);
    while let Ok(Some(h)) = frame::peek_header(batch, usize::MAX) {
        match h.tag {
            _ if syncs > 0 => return false,
            b'B' => described = false,
            b'D' => described |= batch.get(frame::HEADER_LEN) == Some(&b'P'),
            b'E' if described => {}
            b'C' | b'H' => {}
            b'S' => syncs += 1,
            _ => return false,
        }
        batch = batch.get(h.total_len..).unwrap_or_default();
    }
    syncs == 1 && batch.is_empty()
}

#[cfg(test)]
mod replan_tests {
    use super::only_executes;
    use bytes::BytesMut;
    use postgres_protocol::message::frontend;

    fn batch(describe: bool, sync: bool) -> BytesMut {
        let mut out = BytesMut::new();
        let none = |_: (), _: &mut BytesMut| Ok(postgres_protocol::IsNull::Yes);
        frontend::bind("", "s1", [], [], none, [], &mut out).map_err(|_| "bind").unwrap();
        if describe {
            frontend::describe(b'P', "", &mut out).unwrap();
        }
        frontend::execute("", 0, &mut out).unwrap();
        if sync {
            frontend::sync(&mut out);
        }
        out
    }

    #[test]
    fn only_described_executions_with_one_sync_run_again() {
        assert!(only_executes(&batch(true, true)));
        assert!(!only_executes(&batch(false, true)), "the client would keep the old columns");
        assert!(!only_executes(&batch(true, false)), "no Sync: not a whole implicit transaction");
        let mut two = batch(true, true);
        two.extend_from_slice(&batch(true, true));
        assert!(!only_executes(&two), "two transactions");
        let mut query = batch(true, false);
        frontend::query("COMMIT", &mut query).unwrap();
        assert!(!only_executes(&query), "a simple query may end a transaction");
    }
}
