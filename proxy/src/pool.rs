//! Idle backend connections, kept per backend and keyed by what a login fixes for the
//! connection's lifetime (user, database, startup parameters), so a reused connection is
//! indistinguishable from a new one. Taking and putting are short operations under a lock;
//! the pool itself does no network I/O. Each connection remembers the session worker whose
//! reactor it is registered with: a worker takes its own connections first, and re-registers
//! one it takes from another ([`Rehome`]).
//!
//! [`Pool::checkout`] is how a session gets a connection, and where the server's connection
//! limit is respected: under `max_backend_connections` (idle connections of other keys are
//! closed to make room, then the client waits for one up to `connect_timeout`), and when a
//! server refuses a login for too many connections, idle pooled ones are closed and the login
//! tried once more, so idle connections never cost a client its session. Under a key's own limit
//! (`pool_size`, transaction pooling) a client waits for one of that key's connections, first
//! come first served. Idle connections are closed after `pool_idle_timeout` ([`Pool::expired`]),
//! but for `min_pool_size` of each key.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};

use crate::backend::BackendError;
pub use crate::metrics::{OpenCount, Place};

/// A connection whose socket can move to the current runtime's reactor.
pub trait Rehome: Sized {
    /// Re-registers the socket with the current runtime.
    ///
    /// # Errors
    /// The socket could not be moved; the connection is unusable.
    fn rehome(self) -> std::io::Result<Self>;
}

/// A backend connection as the pool handles it.
pub trait Pooled: Rehome {
    /// Whether the socket is still open with nothing unread.
    fn is_reusable(&self) -> bool;

    /// Says goodbye to the server and closes.
    fn close(self) -> impl std::future::Future<Output = ()> + Send;

    /// Keeps `place` (under its key's `pool_size`) for as long as the connection lives.
    fn hold(&mut self, place: Place);
}

/// The limits a checkout respects.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections open to the backend at once; 0: no limit but the server's.
    pub max_open: usize,
    /// How long a client waits for room.
    pub wait: Duration,
    /// Most connections open at once under one pool key; 0: no such limit (session pooling,
    /// where a session keeps its connection for life).
    pub per_key: usize,
}

struct Idle<C> {
    worker: usize,
    since: Instant,
    conn: C,
}

/// One key's idle connections, and its open ones counted against `pool_size`.
struct Entry<C> {
    /// Most recently returned last.
    idle: Vec<Idle<C>>,
    /// Open connections of the key that hold a [`Place`], and its waiting clients.
    open: Arc<OpenCount>,
}

impl<C> Default for Entry<C> {
    fn default() -> Self {
        Self { idle: Vec::new(), open: Arc::default() }
    }
}

/// What a pool reports, and the backend's open connections it counts.
#[derive(Clone)]
pub struct PoolMetrics {
    /// Idle connections.
    pub idle: Gauge,
    /// Sessions waiting for room now.
    pub waiting: Gauge,
    /// How long each session that waited for room waited.
    pub waited: Histogram,
    /// Sessions refused after waiting.
    pub timeouts: Counter,
    /// The backend's open connections, as `max_backend_connections` counts them.
    pub count: Arc<OpenCount>,
}

impl Default for PoolMetrics {
    /// Reported nowhere (tests).
    fn default() -> Self {
        Self {
            idle: Gauge::noop(),
            waiting: Gauge::noop(),
            waited: Histogram::noop(),
            timeouts: Counter::noop(),
            count: Arc::default(),
        }
    }
}

/// A pool of idle connections of type `C`, keyed by `K`.
pub struct Pool<K, C> {
    idle: Mutex<HashMap<K, Entry<C>>>,
    max_idle: usize,
    gauge: Gauge,
    count: Arc<OpenCount>,
    waiting: Gauge,
    waited: Histogram,
    timeouts: Counter,
}

impl<K: Hash + Eq, C: Pooled> Pool<K, C> {
    /// A pool that keeps at most `max_idle` connections per key, reporting to `metrics`.
    pub fn new(max_idle: usize, metrics: PoolMetrics) -> Self {
        let PoolMetrics { idle, waiting, waited, timeouts, count } = metrics;
        Self { idle: Mutex::new(HashMap::new()), max_idle, gauge: idle, count, waiting, waited, timeouts }
    }

    /// Sessions waiting for room now (on the backend's limit or a key's).
    pub fn waiting(&self) -> usize {
        self.count.waiting() + self.lock().values().map(|e| e.open.waiting()).sum::<usize>()
    }

    /// Whether a client waits for one of `key`'s connections now: a session keeps a
    /// connection past its transaction only when none does.
    pub fn contended(&self, key: &K) -> bool {
        self.lock().get(key).is_some_and(|e| e.open.waiting() > 0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Entry<C>>> {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the most recently returned connection for `key` that lives on this thread's
    /// worker, or else any, moved to this worker.
    pub fn take(&self, key: &K) -> Option<C> {
        let here = crate::workers::current();
        loop {
            let idle = {
                let mut idle = self.lock();
                let list = &mut idle.get_mut(key)?.idle;
                let at = list.iter().rposition(|i| i.worker == here).or_else(|| list.len().checked_sub(1))?;
                list.remove(at)
            };
            self.gauge.decrement(1.0);
            if idle.worker == here {
                return Some(idle.conn);
            }
            if let Ok(conn) = idle.conn.rehome() {
                return Some(conn);
            }
        }
    }

    /// Returns a clean connection; past `max_idle` it is handed back to be closed.
    pub fn put(&self, key: K, conn: C) -> Option<C> {
        let open = {
            let mut idle = self.lock();
            let entry = idle.entry(key).or_default();
            if entry.idle.len() >= self.max_idle {
                return Some(conn);
            }
            entry.idle.push(Idle { worker: crate::workers::current(), since: Instant::now(), conn });
            Arc::clone(&entry.open)
        };
        self.gauge.increment(1.0);
        // A client waiting for this key's connections takes it; one waiting for room on the
        // backend may close it.
        open.room().notify_one();
        self.count.room().notify_one();
        None
    }

    /// How many idle connections are kept.
    pub fn idle_count(&self) -> usize {
        self.lock().values().map(|e| e.idle.len()).sum()
    }

    /// Removes the connection idle longest, of any key, to be closed.
    pub fn evict_oldest(&self) -> Option<C> {
        let idle = {
            let mut idle = self.lock();
            let (_, entry) = idle
                .iter_mut()
                .filter(|(_, e)| !e.idle.is_empty())
                .min_by_key(|(_, e)| e.idle.first().map(|i| i.since))?;
            entry.idle.remove(0)
        };
        self.gauge.decrement(1.0);
        Some(idle.conn)
    }

    /// Removes every connection idle for longer than `timeout`, but the last `keep` of each
    /// key (`min_pool_size`), to be closed.
    pub fn expired(&self, timeout: Duration, keep: usize) -> Vec<C> {
        let now = Instant::now();
        let mut out = Vec::new();
        {
            let mut idle = self.lock();
            for entry in idle.values_mut() {
                let list = &mut entry.idle;
                // Oldest first: the expired ones are a prefix.
                let n = list.iter().take_while(|i| now.duration_since(i.since) > timeout).count();
                let n = n.min(list.len().saturating_sub(keep));
                out.extend(list.drain(..n).map(|i| i.conn));
            }
            // A key's count stays while any of its connections (holding its place) is open.
            idle.retain(|_, e| !e.idle.is_empty() || Arc::strong_count(&e.open) > 1);
        }
        self.gauge.decrement(out.len() as f64);
        out
    }

    /// A session that waited for room (`waiting`: its counts, dropped here) stops waiting.
    fn waited_since(&self, waiting: &mut [Option<crate::metrics::Waiting<'_>>; 2], started: tokio::time::Instant) {
        if waiting.iter_mut().any(|w| w.take().is_some()) {
            self.waited.record(started.elapsed().as_secs_f64());
        }
    }

    /// `key`'s count of open connections under `pool_size`.
    fn key_open(&self, key: &K) -> Arc<OpenCount>
    where
        K: Clone,
    {
        let mut idle = self.lock();
        match idle.get(key) {
            Some(e) => Arc::clone(&e.open),
            None => Arc::clone(&idle.entry(key.clone()).or_default().open),
        }
    }

    /// A connection for `key`: an idle one, or a new one from `open` within `limits`.
    ///
    /// # Errors
    /// `open`'s error, or [`BackendError::Full`] when no room was made within `limits.wait`.
    pub async fn checkout<F, Fut>(&self, key: &K, limits: Limits, open: F) -> Result<C, BackendError>
    where
        K: Clone,
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<C, BackendError>>,
    {
        let started = tokio::time::Instant::now();
        let deadline = started + limits.wait;
        let key_open = (limits.per_key > 0).then(|| self.key_open(key));
        // Counted as waiting (for the key, for the backend) from its first wait to its end.
        let mut waiting = [None, None];
        let (place, _reserved) = loop {
            while let Some(conn) = self.take(key) {
                if conn.is_reusable() {
                    self.waited_since(&mut waiting, started);
                    return Ok(conn);
                }
                conn.close().await;
            }
            // The key's own limit first: past it, the client waits for one of its connections.
            let (place, full) = match &key_open {
                Some(count) => match count.reserve_owned(limits.per_key) {
                    Some(place) => (Some(place), None),
                    None => (None, Some((count, limits.per_key, "pool_size"))),
                },
                None => (None, None),
            };
            let full = match full {
                Some(full) => full,
                None if limits.max_open == 0 => break (place, None),
                None => match self.count.reserve(limits.max_open) {
                    Some(reserved) => break (place, Some(reserved)),
                    None => {
                        drop(place);
                        if let Some(old) = self.evict_oldest() {
                            old.close().await;
                            continue;
                        }
                        (&self.count, limits.max_open, "max_backend_connections")
                    }
                },
            };
            let (count, max, limit) = full;
            let [backend, key] = &mut waiting;
            let counted = if limit == "pool_size" { key } else { backend };
            if counted.is_none() {
                *counted = Some(count.wait(&self.waiting));
            }
            let room = count.room().notified();
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                self.waited_since(&mut waiting, started);
                self.timeouts.increment(1);
                return Err(BackendError::Full { max, limit, waited: limits.wait });
            }
        };
        self.waited_since(&mut waiting, started);
        let mut conn = match open().await {
            Err(e) if e.too_many_connections() => {
                // The server is full: idle pooled connections must not be why.
                let mut closed = 0usize;
                while let Some(old) = self.evict_oldest() {
                    old.close().await;
                    closed += 1;
                }
                if closed == 0 {
                    return Err(e);
                }
                tracing::info!(closed, "the backend refused a login for too many connections; closed idle ones");
                open().await?
            }
            result => result?,
        };
        if let Some(place) = place {
            conn.hold(place);
        }
        Ok(conn)
    }
}

/// What a pooled connection was opened with: the login user and the startup parameters
/// (database included, in the order sent). Every session holds its key for its whole life, idle
/// ones too, so it is one allocation: the user, then each name and value after its length
/// (`8:database3:app`), which no two different keys share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    text: Box<str>,
    user_len: usize,
}

impl PoolKey {
    /// The key of a login as `user` with startup parameters `params`.
    pub fn new<K: AsRef<str>, V: AsRef<str>>(user: &str, params: impl IntoIterator<Item = (K, V)>) -> Self {
        use std::fmt::Write as _;
        let mut text = String::from(user);
        for (k, v) in params {
            let (k, v) = (k.as_ref(), v.as_ref());
            let _ = write!(text, "{}:{k}{}:{v}", k.len(), v.len());
        }
        Self { text: text.into_boxed_str(), user_len: user.len() }
    }

    /// The login user.
    pub fn user(&self) -> &str {
        self.text.get(..self.user_len).unwrap_or_default()
    }

    /// The startup parameters, in the order given.
    pub fn params(&self) -> Params<'_> {
        Params { rest: self.text.get(self.user_len..).unwrap_or_default() }
    }
}

/// The startup parameters of a [`PoolKey`]: `(name, value)` pairs.
#[derive(Debug, Clone)]
pub struct Params<'a> {
    rest: &'a str,
}

impl<'a> Params<'a> {
    fn field(&mut self) -> Option<&'a str> {
        let (len, rest) = self.rest.split_once(':')?;
        let len: usize = len.parse().ok()?;
        let field = rest.get(..len)?;
        self.rest = rest.get(len..)?;
        Some(field)
    }
}

impl<'a> Iterator for Params<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        Some((self.field()?, self.field()?))
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

    impl Pooled for u32 {
        fn is_reusable(&self) -> bool {
            true
        }

        async fn close(self) {}

        fn hold(&mut self, _: Place) {}
    }

    fn pool(max_idle: usize) -> Pool<&'static str, u32> {
        Pool::new(max_idle, super::PoolMetrics::default())
    }

    #[test]
    fn keeps_per_key_and_caps() {
        let pool = pool(2);
        assert_eq!(pool.put("a", 1), None);
        assert_eq!(pool.put("a", 2), None);
        assert_eq!(pool.put("a", 3), Some(3));
        assert_eq!(pool.put("b", 4), None);
        assert_eq!(pool.take(&"a"), Some(2));
        assert_eq!(pool.take(&"c"), None);
        assert_eq!(pool.idle_count(), 2);
    }

    #[test]
    fn evicts_the_oldest_of_any_key_and_expires_idle_ones() {
        let pool = pool(8);
        assert_eq!(pool.put("a", 1), None);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(pool.put("b", 2), None);
        assert_eq!(pool.put("a", 3), None);
        assert_eq!(pool.evict_oldest(), Some(1));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(pool.put("a", 4), None);
        let mut gone = pool.expired(Duration::from_millis(10), 0);
        gone.sort_unstable();
        assert_eq!(gone, vec![2, 3]);
        assert_eq!(pool.idle_count(), 1);
        assert_eq!(pool.take(&"a"), Some(4));
        assert_eq!(pool.evict_oldest(), None);
    }

    /// A connection that counts itself open, as the real ones do through their guard.
    #[derive(Debug)]
    struct Counted(u32, Arc<OpenCount>, Option<Place>);

    impl Rehome for Counted {
        fn rehome(self) -> std::io::Result<Self> {
            Ok(self)
        }
    }

    impl Pooled for Counted {
        fn is_reusable(&self) -> bool {
            true
        }

        async fn close(self) {
            self.1.closed();
        }

        fn hold(&mut self, place: Place) {
            self.2 = Some(place);
        }
    }

    #[tokio::test]
    async fn a_full_backend_makes_room_from_idle_connections_or_waits() {
        let count = Arc::new(OpenCount::default());
        let metrics = super::PoolMetrics { count: Arc::clone(&count), ..Default::default() };
        let pool: Pool<&str, Counted> = Pool::new(8, metrics);
        let limits = Limits { max_open: 1, wait: Duration::from_millis(50), per_key: 0 };
        let open = |n: u32| {
            let count = Arc::clone(&count);
            move || {
                count.opened();
                let c = Counted(n, Arc::clone(&count), None);
                async move { Ok(c) }
            }
        };
        // One open and idle under another key: closed to make room.
        count.opened();
        assert!(pool.put("other", Counted(7, Arc::clone(&count), None)).is_none());
        let first = pool.checkout(&"mine", limits, open(1)).await.ok();
        assert_eq!(first.as_ref().map(|c| c.0), Some(1));
        assert_eq!(count.get(), 1);
        // One open and in use: the client waits, then is told.
        let started = std::time::Instant::now();
        let err = pool.checkout(&"mine", limits, open(2)).await.err();
        assert!(err.is_some_and(|e| e.to_string().contains("max_backend_connections")));
        assert!(started.elapsed() >= Duration::from_millis(50));
        // The one in use going idle under the client's key is taken as soon as it is back.
        let waiting = pool.checkout(&"mine", Limits { wait: Duration::from_secs(5), ..limits }, open(3));
        assert_eq!(pool.waiting(), 0, "a refused session no longer counts as waiting");
        let (got, ()) = tokio::join!(waiting, async {
            while pool.waiting() == 0 {
                tokio::task::yield_now().await;
            }
            assert_eq!(pool.waiting(), 1, "the session waiting for room is counted");
            if let Some(c) = first {
                assert!(pool.put("mine", c).is_none());
            }
        });
        assert_eq!(got.ok().map(|c| c.0), Some(1));
        assert_eq!(count.get(), 1);
        assert_eq!(pool.waiting(), 0, "nor one that got its connection");
    }

    /// Sessions opening connections at once never pass the limit together: the place is taken
    /// before the login, in one atomic step (ten at once under a limit of two: two open, the
    /// others wait and are told).
    #[tokio::test]
    async fn concurrent_opens_never_pass_the_limit() {
        let count = Arc::new(OpenCount::default());
        let metrics = super::PoolMetrics { count: Arc::clone(&count), ..Default::default() };
        let pool: Pool<&str, Counted> = Pool::new(8, metrics);
        let limits = Limits { max_open: 2, wait: Duration::from_millis(50), per_key: 0 };
        let open = |n: u32| {
            let count = Arc::clone(&count);
            move || {
                let count = Arc::clone(&count);
                async move {
                    // A login takes a while: every session checks the limit before any is open.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    count.opened();
                    Ok(Counted(n, count, None))
                }
            }
        };
        let all = futures::future::join_all((0..10).map(|n| pool.checkout(&"k", limits, open(n)))).await;
        let opened = all.iter().filter(|r| r.is_ok()).count();
        assert_eq!(opened, 2, "{all:?}");
        assert_eq!(count.get(), 2);
        assert!(all.iter().filter_map(|r| r.as_ref().err()).all(|e| matches!(e, BackendError::Full { .. })));
    }

    #[test]
    fn a_pool_key_gives_back_its_user_and_parameters_in_order() {
        let key = PoolKey::new("app", [("database", "app"), ("options", "-c a=1:2"), ("empty", ""), ("10:x", "9:")]);
        assert_eq!(key.user(), "app");
        let params: Vec<_> = key.params().collect();
        assert_eq!(params, [("database", "app"), ("options", "-c a=1:2"), ("empty", ""), ("10:x", "9:")]);
        assert_eq!(PoolKey::new("", Vec::<(String, String)>::new()).params().count(), 0);
    }

    #[test]
    fn pool_keys_differ_when_their_logins_differ() {
        // Lengths keep fields apart: no user or value can pass for a neighbouring field.
        let a = PoolKey::new("ab", [("c", "d")]);
        assert_ne!(a, PoolKey::new("a", [("bc", "d")]));
        assert_ne!(a, PoolKey::new("ab1:c1:d", Vec::<(&str, &str)>::new()));
        assert_ne!(PoolKey::new("u", [("a", "1:b1:c")]), PoolKey::new("u", [("a", ""), ("b", "c")]));
        assert_eq!(a, PoolKey::new("ab", [("c".to_owned(), "d".to_owned())]));
    }
}
