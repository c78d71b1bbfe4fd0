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

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram};
use tokio::sync::oneshot;

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
    /// `pool_shuffle` (tests of transaction pooling): take the idle connection returned
    /// longest ago, and only when another is idle too, else open one while there is room, so
    /// that a session's next transaction runs on another connection than its last.
    pub shuffle: bool,
}

struct Idle<C> {
    worker: usize,
    since: Instant,
    conn: C,
}

/// One key's idle connections, its open ones counted against `pool_size`, and the clients
/// waiting for one.
struct Entry<C> {
    /// Most recently returned last.
    idle: Vec<Idle<C>>,
    /// Open connections of the key that hold a [`Place`].
    open: Arc<OpenCount>,
    /// Clients waiting for one of the key's connections, first come first served: a
    /// connection given back goes to the first of them, with the worker it is registered on.
    waiters: VecDeque<oneshot::Sender<(usize, C)>>,
}

impl<C> Default for Entry<C> {
    fn default() -> Self {
        Self { idle: Vec::new(), open: Arc::default(), waiters: VecDeque::new() }
    }
}

/// A client's turn for one of a key's connections (transaction pooling's `pool_size`).
enum Turn<C> {
    /// An idle one, and the worker it is registered on.
    Idle(usize, C),
    /// Room to open one.
    Room(Place),
    /// Neither: it waits in the key's queue, for a connection or room under the key's count.
    Queued(oneshot::Receiver<(usize, C)>, Arc<OpenCount>),
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
    idle: Mutex<HashMap<K, Entry<C>, foldhash::fast::RandomState>>,
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
        Self { idle: Mutex::new(HashMap::default()), max_idle, gauge: idle, count, waiting, waited, timeouts }
    }

    /// Sessions waiting for room now (on the backend's limit or a key's).
    pub fn waiting(&self) -> usize {
        self.count.waiting() + self.lock().values().map(|e| e.open.waiting()).sum::<usize>()
    }

    /// Whether a client waits for one of `key`'s connections now: a session keeps a
    /// connection past its transaction only when none does.
    pub fn contended(&self, key: &K) -> bool {
        let mut map = self.lock();
        let Some(entry) = map.get_mut(key) else { return false };
        // Clients that stopped waiting (timed out) leave their place at the front.
        while entry.waiters.front().is_some_and(oneshot::Sender::is_closed) {
            entry.waiters.pop_front();
        }
        !entry.waiters.is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Entry<C>, foldhash::fast::RandomState>> {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes the most recently returned connection for `key` that lives on this thread's
    /// worker, or else any, moved to this worker; with `shuffle`, the one returned longest ago,
    /// and only when another is idle too ([`Limits::shuffle`]).
    pub fn take(&self, key: &K, shuffle: bool) -> Option<C> {
        let here = crate::workers::current();
        loop {
            let idle = {
                let mut idle = self.lock();
                let list = &mut idle.get_mut(key)?.idle;
                let at = pick(list, shuffle, here)?;
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
    pub fn put(&self, key: &K, conn: C) -> Option<C>
    where
        K: Clone,
    {
        let worker = crate::workers::current();
        {
            let mut idle = self.lock();
            // The key is cloned only the first time: a transaction's give-back allocates nothing.
            if !idle.contains_key(key) {
                idle.insert(key.clone(), Entry::default());
            }
            let Some(entry) = idle.get_mut(key) else { return Some(conn) };
            // The first client waiting for one of the key's connections takes it.
            let mut conn = conn;
            while let Some(waiter) = entry.waiters.pop_front() {
                match waiter.send((worker, conn)) {
                    Ok(()) => return None,
                    Err((_, back)) => conn = back, // it stopped waiting
                }
            }
            if entry.idle.len() >= self.max_idle {
                return Some(conn);
            }
            entry.idle.push(Idle { worker, since: Instant::now(), conn });
        }
        self.gauge.increment(1.0);
        // A client waiting for room on the backend may close it.
        self.count.room().notify_one();
        None
    }

    /// Under `key`'s `pool_size` (`limits.per_key`): an idle connection if no client waits
    /// before this one, or room to open one, or a place in the key's queue.
    fn turn(&self, key: &K, limits: Limits) -> Turn<C>
    where
        K: Clone,
    {
        let here = crate::workers::current();
        let mut map = self.lock();
        if !map.contains_key(key) {
            map.insert(key.clone(), Entry::default());
        }
        let Some(entry) = map.get_mut(key) else { return Turn::Queued(oneshot::channel().1, Arc::default()) };
        // An idle connection means no client waits: `put` hands each one to the first client
        // still waiting, and a client queues only when none is idle. (No walk over the queue
        // here: with thousands waiting it would cost every transaction.)
        let list = &mut entry.idle;
        if let Some(idle) = pick(list, limits.shuffle, here).map(|at| list.remove(at)) {
            self.gauge.decrement(1.0);
            return Turn::Idle(idle.worker, idle.conn);
        }
        if let Some(place) = entry.open.reserve_owned(limits.per_key) {
            return Turn::Room(place);
        }
        // Shuffling, but no room for another connection: the one idle will do.
        if let Some(idle) = list.pop() {
            self.gauge.decrement(1.0);
            return Turn::Idle(idle.worker, idle.conn);
        }
        let (tx, rx) = oneshot::channel();
        entry.waiters.push_back(tx);
        Turn::Queued(rx, Arc::clone(&entry.open))
    }

    /// The common case of a checkout, without waiting: an idle connection for `key` when one is
    /// there (then no client waits before this one: [`Pool::put`] hands each connection to the
    /// first waiting), picked as [`Pool::checkout`] would. `None`: the caller checks out. One
    /// found unusable is closed in the background.
    pub fn take_idle(&self, key: &K, limits: Limits) -> Option<C>
    where
        C: Send + 'static,
    {
        let conn = self.take(key, limits.shuffle)?;
        if conn.is_reusable() {
            return Some(conn);
        }
        tokio::spawn(conn.close());
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

    /// A connection taken from the pool on `worker`, moved to this one, if it is still usable
    /// (else it is closed).
    async fn usable(&self, worker: usize, conn: C) -> Option<C> {
        let conn = if worker == crate::workers::current() { conn } else { conn.rehome().ok()? };
        if conn.is_reusable() {
            return Some(conn);
        }
        conn.close().await;
        None
    }

    /// Waits in `key`'s queue (`rx`) until a connection is handed over (`Some(Some)`), room is
    /// made under `count` (`Some(None)`: try again), or `deadline` passes (`None`).
    async fn wait_turn(
        &self,
        key: &K,
        mut rx: oneshot::Receiver<(usize, C)>,
        count: &OpenCount,
        deadline: tokio::time::Instant,
    ) -> Option<Option<(usize, C)>>
    where
        K: Clone,
    {
        let room = count.room().notified();
        let waited = tokio::select! {
            got = &mut rx => return Some(got.ok()),
            () = room => Some(None),
            () = tokio::time::sleep_until(deadline) => None,
        };
        // A connection handed over as the wait ended is not lost: taken, or passed on.
        rx.close();
        match rx.try_recv() {
            Ok(got) if waited.is_some() => Some(Some(got)),
            Ok((_, conn)) => {
                if let Some(extra) = self.put(key, conn) {
                    extra.close().await;
                }
                None
            }
            Err(_) => waited,
        }
    }

    /// A session that waited in vain for room under `limit` (`max` connections) is refused.
    fn refused(
        &self,
        waiting: &mut [Option<crate::metrics::Waiting<'_>>; 2],
        started: tokio::time::Instant,
        max: usize,
        limit: &'static str,
        limits: Limits,
    ) -> BackendError {
        self.waited_since(waiting, started);
        self.timeouts.increment(1);
        BackendError::Full { max, limit, waited: limits.wait }
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
        // The key's count, once the client first waits for one of its connections.
        let key_count = std::cell::OnceCell::new();
        // Counted as waiting (for the backend, for the key) from its first wait to its end.
        let mut waiting = [None, None];
        let (place, _reserved) = loop {
            // The key's own limit first: past it, the client waits for one of its connections.
            let place = match limits.per_key {
                1.. => match self.turn(key, limits) {
                    Turn::Idle(worker, conn) => {
                        if let Some(conn) = self.usable(worker, conn).await {
                            self.waited_since(&mut waiting, started);
                            return Ok(conn);
                        }
                        continue;
                    }
                    Turn::Room(place) => Some(place),
                    Turn::Queued(rx, count) => {
                        let count: &OpenCount = key_count.get_or_init(|| count);
                        if waiting[1].is_none() {
                            waiting[1] = Some(count.wait(&self.waiting));
                        }
                        match self.wait_turn(key, rx, count, deadline).await {
                            Some(Some((worker, conn))) => {
                                if let Some(conn) = self.usable(worker, conn).await {
                                    self.waited_since(&mut waiting, started);
                                    return Ok(conn);
                                }
                                continue;
                            }
                            Some(None) => continue,
                            None => {
                                return Err(self.refused(&mut waiting, started, limits.per_key, "pool_size", limits))
                            }
                        }
                    }
                },
                0 => {
                    while let Some(conn) = self.take(key, false) {
                        if conn.is_reusable() {
                            self.waited_since(&mut waiting, started);
                            return Ok(conn);
                        }
                        conn.close().await;
                    }
                    None
                }
            };
            if limits.max_open == 0 {
                break (place, None);
            }
            if let Some(reserved) = self.count.reserve(limits.max_open) {
                break (place, Some(reserved));
            }
            drop(place);
            if let Some(old) = self.evict_oldest() {
                old.close().await;
                continue;
            }
            if waiting[0].is_none() {
                waiting[0] = Some(self.count.wait(&self.waiting));
            }
            let room = self.count.room().notified();
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(self.refused(&mut waiting, started, limits.max_open, "max_backend_connections", limits));
            }
        };
        self.waited_since(&mut waiting, started);
        // Boxed: a login is the largest state of a checkout, and a rare one under transaction
        // pooling, where a checkout is most often a wait for a connection another session
        // gives back.
        let mut conn = match Box::pin(open()).await {
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
                Box::pin(open()).await?
            }
            result => result?,
        };
        if let Some(place) = place {
            conn.hold(place);
        }
        Ok(conn)
    }
}

/// Which of a key's idle connections (most recently returned last) a checkout takes: the most
/// recently returned one registered on this worker (`here`), else the most recently returned;
/// with `shuffle`, the one returned longest ago, and only when another is idle too
/// ([`Limits::shuffle`]).
fn pick<C>(list: &[Idle<C>], shuffle: bool, here: usize) -> Option<usize> {
    if shuffle {
        return (list.len() >= 2).then_some(0);
    }
    list.iter().rposition(|i| i.worker == here).or_else(|| list.len().checked_sub(1))
}

mod key;
pub use key::{Params, PoolKey};

#[cfg(test)]
mod tests;
