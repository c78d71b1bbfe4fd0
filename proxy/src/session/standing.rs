//! What a statement does to a session's standing: the pins and reasons it cannot move, the
//! session-state statements it recorded or discarded, the named statements the client
//! defined, and the refusal of a write before it reaches any server. One place for both
//! protocols; the adapters classify, the core keeps the rules.

use tracing::debug;

use super::{Applied, Core, Link, Side};
use crate::session::state::parameter_of;

/// What a statement does to the session's standing, as its adapter classified it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Note {
    /// It keeps the session on the primary from now on (SERIALIZABLE, a lock, ...).
    pub pins: bool,
    /// It leaves state on its connection that cannot move to another server, and why.
    pub unmovable: Option<&'static str>,
    /// It may release such state (an unlock, `UNLISTEN`, `CLOSE`, `DROP`, ...).
    pub releases: bool,
}

/// Why a statement is refused before it reaches any server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It writes, and the session is read-only (by its user, its listener or itself).
    ReadOnly,
    /// It may write, and the cluster is in maintenance (why).
    Maintenance(&'static str),
}

impl Refused {
    /// The reason, for the client's error.
    pub fn why(self) -> &'static str {
        match self {
            Refused::ReadOnly => "this is a read-only session",
            Refused::Maintenance(why) => why,
        }
    }
}

impl<C: Link> Core<'_, C> {
    /// The session declared itself read-only (`true`) or read-write again; or, at a change
    /// of user, the new user's standing.
    pub fn set_read_only(&mut self, on: bool) {
        self.read_only = on;
    }

    /// Whether a statement is refused before it reaches any server, and why: one the
    /// classifier knows to write (`refused_read_only`) in a read-only session, or one that may
    /// write (`may_write`, or known to) while the cluster is in maintenance. The session's own
    /// read-only standing is the reason given when both hold.
    pub fn refusal(&self, refused_read_only: bool, may_write: bool) -> Option<Refused> {
        if self.read_only && refused_read_only {
            return Some(Refused::ReadOnly);
        }
        self.maintenance.filter(|_| may_write || refused_read_only).map(Refused::Maintenance)
    }

    /// What a statement does to the session's standing: pins it to the primary, or makes it
    /// unmovable (which pins it too).
    pub fn note(&mut self, note: Note) {
        if note.pins || note.unmovable.is_some() {
            self.state.pin();
        }
        if let Some(why) = note.unmovable {
            self.state.stuck(why);
            self.counted_pin();
        }
        if note.releases && self.state.unmovable().is_some() {
            self.state.recheck = true;
        }
    }

    /// A statement released every piece of state of the kinds `kinds`
    /// ([`crate::session::state::Held`] bits) on the session's primary connection.
    pub fn released(&mut self, kinds: u8) {
        self.state.released(kinds);
        self.uncount_pin();
    }

    /// Whether to ask the server at this transaction's end what still keeps the session on
    /// its connection ([`Core::recheck_pins`]).
    pub fn rechecks(&self) -> bool {
        self.state.rechecks(C::CHECKED)
    }

    /// Asks the server whether the session's primary connection still holds what kept the
    /// session there, after a statement that may have released it: when it holds nothing,
    /// the session may move again (transaction pooling gives the connection back; a change of
    /// primary moves the session instead of ending it). A failed question changes nothing:
    /// the session finds the broken connection at its next statement. What the server sent
    /// the client meanwhile is added to `aside`.
    pub async fn recheck_pins(&mut self, aside: &mut bytes::BytesMut) {
        self.state.recheck = false;
        let Some(slot) = self.slots[Side::Primary].as_deref_mut() else { return };
        match slot.conn.holds_unmovable(aside).await {
            Ok(false) => {
                debug!("the session's connection holds nothing that keeps it there any more");
                self.released(C::CHECKED);
            }
            Ok(true) => {}
            Err(e) => debug!(error = %e, "could not ask what the session's connection holds"),
        }
    }

    /// The gauge of pinned sessions no longer counts this one once nothing keeps it.
    fn uncount_pin(&mut self) {
        if self.state.unmovable().is_none() && std::mem::take(&mut self.pin_counted) {
            self.cluster.metrics.pinned.decrement(1.0);
        }
    }

    /// Counts the session among the pinned ones once it holds state that cannot move.
    pub(super) fn counted_pin(&mut self) {
        if self.pin_counted {
            return;
        }
        if let Some(why) = self.state.unmovable() {
            self.pin_counted = true;
            self.cluster.metrics.count_pin(why);
        }
    }

    /// A session-state statement `sql` succeeded on `side`: it is replayed on every other
    /// connection the session takes; the one that ran it has it.
    ///
    /// A `RESET` returns a setting to its value at login, and the server's login did not carry
    /// the session's own settings ([`Core::starts_with`]): they are given again after it, on
    /// this connection too (before its next statement), as directly a `RESET ALL` returns to
    /// the client's startup values.
    pub fn recorded(&mut self, side: Side, sql: String) {
        // A RESET of a login setting (or of all) returns it to the server's login value.
        let is_reset = sql.trim_start().get(..5).is_some_and(|w| w.eq_ignore_ascii_case("reset"));
        let param = is_reset.then(|| parameter_of(&sql)).flatten();
        let startup = self.state.replay.get(..self.state.startup).unwrap_or_default();
        let resets =
            param.is_some_and(|p| p == "all" || startup.iter().any(|s| parameter_of(s).as_deref() == Some(&p)));
        let again = if resets { startup.to_vec() } else { Vec::new() };
        let mut ran = 0;
        for (n, statement) in std::iter::once(sql).chain(again).enumerate() {
            let removed = self.state.record(statement);
            // What each connection ran counts only what is left of it: a removed setting was
            // superseded by the one just recorded, which the others run next.
            let shift = |count: usize| count - removed.iter().filter(|&&i| i < count).count();
            for (at, slot) in self.slots.iter_mut() {
                if let Some(slot) = slot {
                    // Another connection that ran a removed setting still has it, beyond what
                    // its count now says it holds: it runs the new one before the session's next
                    // statement there, but must not go back to the pool claiming that count
                    // (another session with the same state would take it with the old setting):
                    // it is reset when given back.
                    if at != side && removed.iter().any(|&i| i < slot.applied.replayed) {
                        slot.wrote = true;
                    }
                    slot.applied.replayed = shift(slot.applied.replayed);
                }
            }
            ran = if n == 0 { self.state.replay.len() } else { shift(ran) };
        }
        if let Some(slot) = self.slots[side].as_mut() {
            slot.applied.replayed = ran;
        }
        // Past the replay limit the session is pinned.
        self.counted_pin();
    }

    /// The session's state was discarded on `side` (`DISCARD ALL`): its statements and
    /// settings are gone; the other connection still holds them and is replaced before its
    /// next use.
    pub fn discarded(&mut self, side: Side) {
        self.state.forget_all();
        // What pinned the session is gone with it, when it was on the connection that ran the
        // DISCARD ALL (a pinned session's state is on its primary connection).
        if side == Side::Primary || self.slots[Side::Primary].is_none() {
            self.state.unpin();
            self.uncount_pin();
        }
        // Back to what the login gave (as directly, where DISCARD ALL returns every setting
        // to its value at the start of the session).
        self.state.replay.truncate(self.state.startup);
        for (at, slot) in self.slots.iter_mut() {
            if let Some(slot) = slot {
                slot.applied = Applied::default();
                slot.stale = at != side;
            }
        }
    }

    /// The session starts with `settings`, its login's own (the startup parameters that are
    /// not part of the pool key, as `SET` statements): every connection it takes is given them
    /// first, and a `DISCARD ALL` returns to them.
    pub fn starts_with(&mut self, settings: Vec<String>) {
        self.state.startup = settings.len();
        self.state.replay = settings.into();
    }

    /// The client (re)defined the named statement `name` with its Parse `parse`; returns its
    /// generation.
    pub fn define(&mut self, name: &str, parse: bytes::Bytes, read: bool) -> u64 {
        self.state.define(name, parse, read)
    }

    /// The client closed the named statement `name`.
    pub fn forget(&mut self, name: &str) {
        self.state.forget(name);
    }

    /// The named statement `name` turned out not to be a read (a replica refused it).
    pub fn not_read(&mut self, name: &str) {
        self.state.not_read(name);
    }

    /// The session may have set a custom parameter: its connections are closed, not pooled.
    pub fn custom_setting(&mut self) {
        self.state.custom_settings = true;
    }
}
