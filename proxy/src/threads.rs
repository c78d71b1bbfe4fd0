//! `KILL` through the proxy. A MySQL client learns its connection id from the handshake and
//! stops a query with `KILL QUERY <id>` sent on another connection (the `mariadb` client does it
//! on Ctrl-C). The proxy hands out its own ids, one per client connection, and maps each to the
//! backend thread that runs the session's current command. Like MySQL, a user may kill only its
//! own threads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct Entry {
    user: String,
    /// `(backend index, server thread id)` of the session's current connection.
    target: Option<(usize, u32)>,
    /// Cancelled by `KILL CONNECTION`.
    end: CancellationToken,
}

/// What `KILL` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No such id (MySQL error 1094).
    Unknown,
    /// Another user's thread (MySQL error 1095).
    NotOwner,
    /// The session's backend thread (none while it has no connection).
    Thread(Option<(usize, u32)>),
}

/// The client connection ids of one cluster.
#[derive(Debug, Default)]
pub struct Registry {
    threads: Mutex<HashMap<u32, Entry>>,
}

impl Registry {
    /// A fresh id for a new client connection; the guard removes it when dropped.
    pub fn register(self: &Arc<Self>) -> ThreadId {
        let mut map = self.threads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            // Above any server's thread ids (counters from 1), as for PostgreSQL's pids: a
            // `KILL` of a small number is about a server thread, never another client.
            let id = (rand::random::<u32>() & 0x3FFF_FFFF) | 0x4000_0000;
            if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(id) {
                let end = CancellationToken::new();
                slot.insert(Entry { user: String::new(), target: None, end: end.clone() });
                return ThreadId { registry: Arc::clone(self), id, end, last: None };
            }
        }
    }

    fn with<T>(&self, id: u32, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        let mut map = self.threads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get_mut(&id).map(f)
    }

    /// Looks `id` up for `user`; with `connection`, also ends that session.
    pub fn kill(&self, id: u32, user: &str, connection: bool) -> Found {
        self.with(id, |e| {
            if e.user != user {
                return Found::NotOwner;
            }
            if connection {
                e.end.cancel();
            }
            Found::Thread(e.target)
        })
        .unwrap_or(Found::Unknown)
    }
}

/// A client connection's id, registered while it lives.
#[derive(Debug)]
pub struct ThreadId {
    registry: Arc<Registry>,
    /// The id the client sees.
    pub id: u32,
    /// Cancelled when another connection runs `KILL CONNECTION` on this one.
    pub end: CancellationToken,
    last: Option<(usize, u32)>,
}

impl ThreadId {
    /// Records who logged in on this connection.
    pub fn set_user(&self, user: &str) {
        self.registry.with(self.id, |e| user.clone_into(&mut e.user));
    }

    /// Records the backend thread that runs the session's commands now (a lock only when it
    /// changes).
    pub fn set_target(&mut self, target: Option<(usize, u32)>) {
        if self.last != target {
            self.last = target;
            self.registry.with(self.id, |e| e.target = target);
        }
    }
}

impl Drop for ThreadId {
    fn drop(&mut self) {
        let mut map = self.registry.threads.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(&self.id);
    }
}

/// Parses `KILL [QUERY | CONNECTION] <id>`: `Some((id, connection))`, `None` when the text is
/// not a plain KILL of a number.
pub fn parse_kill(sql: &str) -> Option<(u32, bool)> {
    let mut words = sql.trim().trim_end_matches(';').split_ascii_whitespace();
    if !words.next()?.eq_ignore_ascii_case("kill") {
        return None;
    }
    let mut word = words.next()?;
    let mut connection = true;
    if word.eq_ignore_ascii_case("hard") || word.eq_ignore_ascii_case("soft") {
        word = words.next()?;
    }
    if word.eq_ignore_ascii_case("query") {
        connection = false;
        word = words.next()?;
    } else if word.eq_ignore_ascii_case("connection") {
        word = words.next()?;
    }
    let id = word.parse().ok()?;
    words.next().is_none().then_some((id, connection))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_statements() {
        assert_eq!(parse_kill("KILL QUERY 42"), Some((42, false)));
        assert_eq!(parse_kill("kill 7;"), Some((7, true)));
        assert_eq!(parse_kill("KILL CONNECTION 9"), Some((9, true)));
        assert_eq!(parse_kill("KILL HARD QUERY 3"), Some((3, false)));
        assert_eq!(parse_kill("KILL QUERY ID 3"), None, "MariaDB's query-id form is not mapped");
        assert_eq!(parse_kill("KILL USER app"), None);
        assert_eq!(parse_kill("SELECT 1"), None);
    }

    #[test]
    fn only_the_owner_may_kill() {
        let registry = Arc::new(Registry::default());
        let mut t = registry.register();
        t.set_user("app");
        t.set_target(Some((1, 99)));
        assert_eq!(registry.kill(t.id, "other", true), Found::NotOwner);
        assert!(!t.end.is_cancelled());
        assert_eq!(registry.kill(t.id, "app", false), Found::Thread(Some((1, 99))));
        assert_eq!(registry.kill(t.id, "app", true), Found::Thread(Some((1, 99))));
        assert!(t.end.is_cancelled());
        let id = t.id;
        drop(t);
        assert_eq!(registry.kill(id, "app", false), Found::Unknown);
    }
}
