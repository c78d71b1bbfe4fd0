//! Idle backend connections, kept per backend and keyed by what a login fixes for the
//! connection's lifetime (user, database, startup parameters), so a reused connection is
//! indistinguishable from a new one. Taking and putting are short operations under a lock;
//! nothing here does network I/O. Each connection remembers the session worker whose reactor it
//! is registered with: a worker takes its own connections first, and re-registers one it takes
//! from another ([`Rehome`]).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use metrics::Gauge;

/// A connection whose socket can move to the current runtime's reactor.
pub trait Rehome: Sized {
    /// Re-registers the socket with the current runtime.
    ///
    /// # Errors
    /// The socket could not be moved; the connection is unusable.
    fn rehome(self) -> std::io::Result<Self>;
}

/// A pool of idle connections of type `C`, keyed by `K`.
pub struct Pool<K, C> {
    /// `(worker, connection)`, most recently returned last.
    idle: Mutex<HashMap<K, Vec<(usize, C)>>>,
    max_idle: usize,
    gauge: Gauge,
}

impl<K: Hash + Eq, C: Rehome> Pool<K, C> {
    /// A pool that keeps at most `max_idle` connections per key.
    pub fn new(max_idle: usize, gauge: Gauge) -> Self {
        Self { idle: Mutex::new(HashMap::new()), max_idle, gauge }
    }

    /// Takes the most recently returned connection for `key` that lives on this thread's
    /// worker, or else any, moved to this worker.
    pub fn take(&self, key: &K) -> Option<C> {
        let here = crate::workers::current();
        loop {
            let (home, conn) = {
                let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let list = idle.get_mut(key)?;
                let at = list.iter().rposition(|(w, _)| *w == here).or_else(|| list.len().checked_sub(1))?;
                list.remove(at)
            };
            self.gauge.decrement(1.0);
            if home == here {
                return Some(conn);
            }
            if let Ok(conn) = conn.rehome() {
                return Some(conn);
            }
        }
    }

    /// Returns a clean connection; past `max_idle` it is handed back to be closed.
    pub fn put(&self, key: K, conn: C) -> Option<C> {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let list = idle.entry(key).or_default();
        if list.len() >= self.max_idle {
            return Some(conn);
        }
        list.push((crate::workers::current(), conn));
        self.gauge.increment(1.0);
        None
    }

    /// How many idle connections are kept.
    pub fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Rehome for u32 {
        fn rehome(self) -> std::io::Result<Self> {
            Ok(self)
        }
    }

    #[test]
    fn keeps_per_key_and_caps() {
        let pool: Pool<&str, u32> = Pool::new(2, Gauge::noop());
        assert_eq!(pool.put("a", 1), None);
        assert_eq!(pool.put("a", 2), None);
        assert_eq!(pool.put("a", 3), Some(3));
        assert_eq!(pool.put("b", 4), None);
        assert_eq!(pool.take(&"a"), Some(2));
        assert_eq!(pool.take(&"c"), None);
        assert_eq!(pool.idle_count(), 2);
    }
}
