//! Idle backend connections, kept per backend and keyed by what a login fixes for the
//! connection's lifetime (user, database, startup parameters), so a reused connection is
//! indistinguishable from a new one. Taking and putting are O(1) under a short lock; nothing
//! here does I/O.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use metrics::Gauge;

/// A pool of idle connections of type `C`, keyed by `K`.
pub struct Pool<K, C> {
    idle: Mutex<HashMap<K, Vec<C>>>,
    max_idle: usize,
    gauge: Gauge,
}

impl<K: Hash + Eq, C> Pool<K, C> {
    /// A pool that keeps at most `max_idle` connections per key.
    pub fn new(max_idle: usize, gauge: Gauge) -> Self {
        Self { idle: Mutex::new(HashMap::new()), max_idle, gauge }
    }

    /// Takes the most recently returned connection for `key`.
    pub fn take(&self, key: &K) -> Option<C> {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let conn = idle.get_mut(key).and_then(Vec::pop);
        if conn.is_some() {
            self.gauge.decrement(1.0);
        }
        conn
    }

    /// Returns a clean connection; past `max_idle` it is handed back to be closed.
    pub fn put(&self, key: K, conn: C) -> Option<C> {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let list = idle.entry(key).or_default();
        if list.len() >= self.max_idle {
            return Some(conn);
        }
        list.push(conn);
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
