//! What a session must carry from one backend connection to another so that switching between
//! the primary and a replica is invisible to the client: the named prepared statements (to be
//! prepared lazily wherever they are executed), the session-state statements (SET and friends,
//! replayed on every connection before its next statement), and the pins and write times that
//! keep it on the primary.

use std::collections::HashMap;

use bytes::Bytes;
use sqlswitch_protocol::classify::Pin;

/// A named prepared statement, as the client last defined it.
#[derive(Debug, Clone)]
pub struct Statement {
    /// The client's Parse message, whole: replayed verbatim on another connection.
    pub parse: Bytes,
    /// Bumped at every redefinition, so a connection holding an older one is noticed.
    pub generation: u64,
    /// Provably a read.
    pub read: bool,
}

/// Where a session's state lets it run: it only goes down this list, until a `DISCARD ALL`
/// on its primary connection returns it to the top (nothing of the session's is left there).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stay {
    /// Anywhere: its reads may go to replicas.
    #[default]
    Free,
    /// On the primary only (state a replica would not have or cannot take: SERIALIZABLE, a
    /// refused replay, ...); it moves to a new primary with the session, replayed there.
    Primary,
    /// On its primary connection only, and it cannot move to another server (why: a temporary
    /// table, a lock, `LISTEN`, state set inside a transaction, more state than is replayed):
    /// when the primary changes, the session is ended.
    Unmovable(&'static str),
}

/// The session-state statements, shared with the pooled connections that keep them
/// (transaction pooling: a connection records what it holds without a copy); the list is
/// copied only when the session adds to it while one still shares it. Empty, it holds nothing.
#[derive(Debug, Default, Clone)]
pub struct Replay(Option<std::sync::Arc<Vec<String>>>);

impl std::ops::Deref for Replay {
    type Target = [String];

    fn deref(&self) -> &[String] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl Replay {
    /// Adds a statement.
    pub(super) fn push(&mut self, sql: String) {
        std::sync::Arc::make_mut(self.0.get_or_insert_with(Default::default)).push(sql);
    }

    /// Keeps the first `n` statements.
    pub(super) fn truncate(&mut self, n: usize) {
        if n == 0 {
            self.0 = None;
        } else if let Some(list) = self.0.as_mut().filter(|l| l.len() > n) {
            std::sync::Arc::make_mut(list).truncate(n);
        }
    }

    /// The list, shared (`None` when empty).
    pub fn shared(&self) -> Option<std::sync::Arc<Vec<String>>> {
        self.0.clone()
    }
}

impl From<Vec<String>> for Replay {
    fn from(list: Vec<String>) -> Self {
        Self((!list.is_empty()).then(|| std::sync::Arc::new(list)))
    }
}

/// The session-wide state.
#[derive(Debug, Default)]
pub struct SessionState {
    statements: HashMap<String, Statement>,
    generation: u64,
    /// Session-state statements that succeeded, in order.
    pub(super) replay: Replay,
    /// Where the session may run from now on ([`Stay`]).
    stay: Stay,
    /// When the last write was acknowledged (clock micros).
    pub(super) last_write: Option<u64>,
    /// The session may have set a custom parameter (`myapp.tenant`): its connections keep a
    /// placeholder that no reset removes, so they are closed, not pooled, when it is done.
    pub(super) custom_settings: bool,
    /// How many of the first `replay` statements the login gave (the client's startup
    /// parameters that are not part of the pool key): a `DISCARD ALL` returns to them.
    pub(super) startup: usize,
    /// Keep only each parameter's last setting in `replay` (PostgreSQL; [`parameter_of`]).
    pub(super) compact: bool,
    /// What keeps the session on its connection, one bit per kind ([`Held`]).
    held: u8,
    /// A statement that may release some of it ran: the server is asked at the transaction's
    /// end ([`SessionState::rechecks`]).
    pub(super) recheck: bool,
}

/// The kinds of state that keep a session on its connection, as bits of a `u8`: those a
/// statement can release, and the rest (only a `DISCARD ALL` releases them).
#[derive(Debug, Clone, Copy)]
pub struct Held;

impl Held {
    /// A temporary table (or any relation in the session's temporary schema).
    pub const TEMP: u8 = 1;
    /// `LISTEN`.
    pub const LISTEN: u8 = 2;
    /// A session-level advisory lock (PostgreSQL).
    pub const ADVISORY: u8 = 4;
    /// A cursor `WITH HOLD`.
    pub const CURSOR: u8 = 8;
    /// A `GET_LOCK()` lock (MySQL).
    pub const GET_LOCK: u8 = 16;
    /// `LOCK TABLES` (MySQL).
    pub const LOCK_TABLES: u8 = 32;
    /// Anything else: state set inside a transaction, state sqlswitch cannot replay, ...
    pub const OTHER: u8 = 128;
    /// What a PostgreSQL server can be asked whether the connection still holds.
    pub const PG_CHECKED: u8 = Self::TEMP | Self::LISTEN | Self::ADVISORY | Self::CURSOR;

    const REASONS: [(u8, &'static str); 6] = [
        (Self::TEMP, "a temporary table"),
        (Self::LISTEN, LISTENING),
        (Self::ADVISORY, "an advisory lock"),
        (Self::CURSOR, "a cursor WITH HOLD"),
        (Self::GET_LOCK, "a GET_LOCK() lock"),
        (Self::LOCK_TABLES, "LOCK TABLES"),
    ];

    fn of(why: &str) -> u8 {
        Self::REASONS.iter().find(|(_, r)| *r == why).map_or(Self::OTHER, |(bit, _)| *bit)
    }
}

/// The reason a session that ran `LISTEN` cannot move: it waits for notifications that only
/// the old primary would send, so it is told at once when the primary changes.
pub const LISTENING: &str = "LISTEN";

/// What a pinned statement leaves on its connection that no other connection can be given, as
/// a session ended over it is told; `None` when it ends with the transaction (PostgreSQL's
/// `LOCK TABLE`).
pub fn unmovable(pin: Pin, mysql: bool) -> Option<&'static str> {
    match pin {
        Pin::TempTable => Some("a temporary table"),
        Pin::Listen => Some(LISTENING),
        Pin::AdvisoryLock if mysql => Some("a GET_LOCK() lock"),
        Pin::AdvisoryLock => Some("an advisory lock"),
        Pin::Lock if mysql => Some("LOCK TABLES"),
        Pin::Lock => None,
        Pin::Cursor => Some("a cursor WITH HOLD"),
    }
}

/// Past this many replayed statements the session is pinned instead: replaying them on a new
/// connection would cost more than the replica saves.
const MAX_REPLAY: usize = 64;

impl SessionState {
    /// An empty state; with `compact`, only each parameter's last setting is replayed.
    pub(super) fn compacting(compact: bool) -> Self {
        Self { compact, ..Self::default() }
    }

    /// Records a Parse of a named statement; returns its generation.
    pub(super) fn define(&mut self, name: &str, parse: Bytes, read: bool) -> u64 {
        self.generation += 1;
        let generation = self.generation;
        self.statements.insert(name.to_owned(), Statement { parse, generation, read });
        generation
    }

    /// The statement called `name`, if the client defined it.
    pub fn statement(&self, name: &str) -> Option<&Statement> {
        self.statements.get(name)
    }

    /// The session holds state that cannot move (`why`): it stays on its primary connection.
    /// The first reason is kept.
    pub(super) fn stuck(&mut self, why: &'static str) {
        self.held |= Held::of(why);
        if !matches!(self.stay, Stay::Unmovable(_)) {
            self.stay = Stay::Unmovable(why);
        }
    }

    /// The session's state is gone from its primary connection (`DISCARD ALL`): temporary
    /// tables, locks, `LISTEN`s, cursors and settings alike. It may run anywhere again.
    pub(super) fn unpin(&mut self) {
        self.stay = Stay::Free;
        self.held = 0;
        self.recheck = false;
    }

    /// What keeps the session on its connection ([`Held`] bits).
    #[cfg(test)]
    pub fn held(&self) -> u8 {
        self.held
    }

    /// The kinds `kinds` of state are gone from the session's primary connection (the server
    /// said so, or a statement that releases all of a kind succeeded). When nothing is left
    /// that keeps it there, it may move again, on the primary only (what pinned it may have
    /// pinned it to the primary for other reasons too, and staying there is always safe).
    pub(super) fn released(&mut self, kinds: u8) {
        self.held &= !kinds;
        let Stay::Unmovable(why) = self.stay else { return };
        if self.held == 0 {
            self.stay = Stay::Primary;
        } else if Held::of(why) & self.held == 0 {
            let left = Held::REASONS.iter().find(|(bit, _)| self.held & bit != 0);
            self.stay = Stay::Unmovable(left.map_or("session state that sqlswitch cannot replay", |(_, r)| r));
        }
    }

    /// Whether to ask the server, at the transaction's end, what the connection still holds:
    /// a statement that may release something ran, and all the session holds is of kinds the
    /// server can be asked about (`checked`: [`Held::PG_CHECKED`], or 0 where it cannot).
    pub(super) fn rechecks(&self, checked: u8) -> bool {
        self.recheck && self.held != 0 && self.held & !checked == 0
    }

    /// The session holds state only the primary has: it runs there from now on.
    pub(super) fn pin(&mut self) {
        if self.stay == Stay::Free {
            self.stay = Stay::Primary;
        }
    }

    /// Whether the session may have set a custom parameter ([`SessionState::custom_settings`]).
    pub fn custom_settings(&self) -> bool {
        self.custom_settings
    }

    /// Whether the session has state of its own to replay (its connections run as their
    /// login left them otherwise).
    pub fn has_state(&self) -> bool {
        !self.replay.is_empty()
    }

    /// Whether the session runs on the primary only.
    pub fn pinned(&self) -> bool {
        self.stay != Stay::Free
    }

    /// Why the session's state cannot move to another server, if it cannot.
    pub fn unmovable(&self) -> Option<&'static str> {
        match self.stay {
            Stay::Unmovable(why) => Some(why),
            Stay::Free | Stay::Primary => None,
        }
    }

    /// A replica refused `name` as "not on a standby": it runs on the primary from now on.
    pub(super) fn not_read(&mut self, name: &str) {
        if let Some(s) = self.statements.get_mut(name) {
            s.read = false;
        }
    }

    /// The client closed `name`.
    pub(super) fn forget(&mut self, name: &str) {
        self.statements.remove(name);
    }

    /// `DISCARD ALL` / `DEALLOCATE ALL` dropped every prepared statement.
    pub(super) fn forget_all(&mut self) {
        self.statements.clear();
    }

    /// A session-state statement succeeded on the primary.
    pub(super) fn record(&mut self, sql: String) -> Vec<usize> {
        // A setting replaces what earlier statements set of the same parameter (PostgreSQL):
        // only its last setting is replayed, so `SET ROLE x` is not replayed after `RESET ROLE;
        // DROP ROLE x`. The startup settings stay. Returns the indices removed.
        let mut removed = Vec::new();
        if let Some(param) = self.compact.then(|| parameter_of(&sql)).flatten() {
            let superseded = |old: &str| parameter_of(old).is_some_and(|p| p == param || param == "all");
            removed = self
                .replay
                .iter()
                .enumerate()
                .skip(self.startup)
                .filter(|(_, old)| superseded(old))
                .map(|(i, _)| i)
                .collect();
            if !removed.is_empty() {
                let kept = self.replay.iter().enumerate().filter(|(i, _)| !removed.contains(i)).map(|(_, s)| s.clone());
                self.replay = kept.collect::<Vec<_>>().into();
            }
        }
        if self.replay.len() >= MAX_REPLAY {
            self.stuck("more session state than sqlswitch replays");
        } else {
            self.replay.push(sql);
        }
        removed
    }
}

/// The parameter a PostgreSQL session-state statement sets or resets, lower-cased (`all` for
/// `RESET ALL`), or `None` for any other statement (`PREPARE`, `set_config(...)`, `SET LOCAL`,
/// several assignments): those are replayed as they are.
pub(super) fn parameter_of(sql: &str) -> Option<String> {
    let mut words = sql.split(|c: char| c.is_ascii_whitespace() || c == '=' || c == ';').filter(|w| !w.is_empty());
    let first = words.next()?.to_ascii_lowercase();
    let mut next = || words.next().map(str::to_ascii_lowercase);
    let name = match first.as_str() {
        "reset" => next()?,
        "set" => {
            let mut word = next()?;
            if word == "session" {
                word = next()?;
            }
            match word.as_str() {
                // DateStyle is set in parts (`SET DateStyle TO ymd` keeps the output format).
                "local" | "constraints" | "transaction" | "datestyle" => return None,
                "time" => "timezone".to_owned(),
                "names" => "client_encoding".to_owned(),
                _ => word,
            }
        }
        _ => return None,
    };
    let name = match name.as_str() {
        "session" | "authorization" => "session_authorization".to_owned(),
        _ => name,
    };
    (!name.starts_with('"') && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.'))
        .then_some(name)
}

/// A backend connection's view of the session state: what it has been given so far.
#[derive(Debug, Default)]
pub struct Applied {
    /// How many of [`SessionState::replay`] ran here.
    pub replayed: usize,
    /// Named statements prepared here, by generation.
    pub prepared: HashMap<String, u64>,
    /// Named statements another session left here (transaction pooling) that this session has
    /// not defined the same way: closed before the session prepares one of the same name.
    pub foreign: HashMap<String, Bytes>,
}

/// Most named statements a connection given back between transactions keeps for the next
/// session; past it, it goes back reset, with none.
pub const MAX_HELD_STATEMENTS: usize = 256;

impl Applied {
    /// Takes over `statements`, prepared on a pooled connection by the sessions before: those
    /// the session defined alike count as prepared, the others as foreign.
    pub fn adopt(&mut self, statements: Vec<(String, Bytes)>, state: &SessionState) {
        for (name, parse) in statements {
            match state.statement(&name) {
                Some(s) if !parse.is_empty() && s.parse == parse => {
                    self.prepared.insert(name, s.generation);
                }
                _ => {
                    self.foreign.insert(name, parse);
                }
            }
        }
    }

    /// `name` is now prepared here at `generation`.
    pub fn prepared_here(&mut self, name: String, generation: u64) {
        self.foreign.remove(&name);
        self.prepared.insert(name, generation);
    }

    /// `name`'s plan here went stale (a schema change): closed and prepared again before its
    /// next use, as another session's statement of that name would be.
    pub fn stale(&mut self, name: &str) {
        if self.prepared.remove(name).is_some() {
            self.foreign.insert(name.to_owned(), Bytes::new());
        }
    }

    /// `name` was closed here.
    pub fn closed(&mut self, name: &str) {
        self.foreign.remove(name);
        self.prepared.remove(name);
    }

    /// The named statements prepared here, for the next session to take over: the session's
    /// own with their Parse messages, and the foreign ones it left alone.
    pub fn held(&self, state: &SessionState) -> Vec<(String, Bytes)> {
        let own = self.prepared.iter().map(|(name, generation)| {
            let parse = state.statement(name).filter(|s| s.generation == *generation).map(|s| s.parse.clone());
            (name.clone(), parse.unwrap_or_default())
        });
        own.chain(self.foreign.iter().map(|(n, p)| (n.clone(), p.clone()))).collect()
    }

    /// Whether `name` at `generation` is prepared here; `Some(true)` when an older definition
    /// is there and must be closed first.
    pub fn needs(&self, name: &str, generation: u64) -> Option<bool> {
        if self.foreign.contains_key(name) {
            return Some(true);
        }
        match self.prepared.get(name) {
            Some(g) if *g == generation => None,
            Some(_) => Some(true),
            None => Some(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_track_redefinitions() {
        let mut s = SessionState::default();
        let g1 = s.define("s1", Bytes::from_static(b"P"), true);
        let mut a = Applied::default();
        assert_eq!(a.needs("s1", g1), Some(false));
        a.prepared.insert("s1".into(), g1);
        assert_eq!(a.needs("s1", g1), None);
        let g2 = s.define("s1", Bytes::from_static(b"P2"), false);
        assert_eq!(a.needs("s1", g2), Some(true));
        assert!(!s.statement("s1").unwrap().read);
        s.forget("s1");
        assert!(s.statement("s1").is_none());
    }

    /// Statements another session left on a pooled connection: those the session defined alike
    /// count as prepared, the rest as foreign (closed before one of their names is prepared),
    /// and all of them go back with the connection, the foreign ones unchanged.
    #[test]
    fn a_pooled_connections_statements_are_adopted_by_content() {
        let mut s = SessionState::default();
        let same = s.define("s1", Bytes::from_static(b"P same"), true);
        s.define("s2", Bytes::from_static(b"P mine"), true);
        let mut a = Applied::default();
        let left = [("s1", &b"P same"[..]), ("s2", b"P theirs"), ("s3", b"P other"), ("s4", b"")];
        a.adopt(left.iter().map(|(n, p)| ((*n).to_owned(), Bytes::copy_from_slice(p))).collect(), &s);
        assert_eq!(a.needs("s1", same), None, "the same text is taken as prepared");
        assert_eq!(a.needs("s2", same + 1), Some(true), "another text is closed first");
        assert_eq!(a.needs("s3", 99), Some(true));
        assert_eq!(a.needs("s4", 99), Some(true), "an unknown text is never taken as the session's");
        a.prepared_here("s2".into(), same + 1);
        a.closed("s3");
        let mut held = a.held(&s);
        held.sort();
        let names: Vec<_> = held.iter().map(|(n, p)| (n.as_str(), &p[..])).collect();
        assert_eq!(names, [("s1", &b"P same"[..]), ("s2", b"P mine"), ("s4", b"")]);
    }

    #[test]
    fn too_much_state_pins() {
        let mut s = SessionState::default();
        for i in 0..=MAX_REPLAY {
            s.record(format!("SET a.b = {i}"));
        }
        assert!(s.pinned());
        assert_eq!(s.replay.len(), MAX_REPLAY);
    }
}
