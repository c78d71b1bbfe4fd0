//! Open connections per backend: what `max_backend_connections` counts, reserves and waits on.

use std::sync::atomic::{AtomicUsize, Ordering};

use metrics::Gauge;
use tokio::sync::Notify;

use super::BackendMetrics;

/// Open connections to one backend (sessions', pooled and the monitor's), and a signal when
/// one closes or goes idle: what `max_backend_connections` counts and waits on.
#[derive(Debug, Default)]
pub struct OpenCount {
    open: AtomicUsize,
    room: Notify,
    waiting: AtomicUsize,
}

impl OpenCount {
    /// Sessions waiting for room now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Takes a place for a connection about to be opened, if fewer than `max` are open or
    /// being opened: one atomic step, so sessions opening at once never pass `max` together.
    /// The place is given back when the returned value drops (the new connection, once open,
    /// counts itself).
    pub fn reserve(&self, max: usize) -> Option<Reserved<'_>> {
        self.take_one(max).then(|| Reserved(self))
    }

    /// As [`OpenCount::reserve`], for a place that lives as long as the connection it was
    /// taken for (`pool_size`: connections per pool key), given back when it drops.
    pub fn reserve_owned(self: &std::sync::Arc<Self>, max: usize) -> Option<Place> {
        self.take_one(max).then(|| Place(std::sync::Arc::clone(self)))
    }

    fn take_one(&self, max: usize) -> bool {
        let mut n = self.open.load(Ordering::Relaxed);
        loop {
            if n >= max {
                return false;
            }
            match self.open.compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
    }

    /// Counts a session waiting for room, here and in `gauge`, while the returned guard lives.
    pub fn wait<'a>(&'a self, gauge: &'a Gauge) -> Waiting<'a> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        gauge.increment(1.0);
        Waiting(&self.waiting, gauge)
    }

    /// Connections open now.
    pub fn get(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// One more is open.
    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
    }

    /// Signalled when one closes or goes idle.
    pub fn room(&self) -> &Notify {
        &self.room
    }

    /// One closed: a client waiting for room may go on.
    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.room.notify_one();
    }
}

/// A place taken for a connection being opened ([`OpenCount::reserve`]).
pub struct Reserved<'a>(&'a OpenCount);

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        self.0.closed();
    }
}

/// A connection's place under a pool key's `pool_size` ([`OpenCount::reserve_owned`]): the
/// connection keeps it for its whole life.
#[derive(Debug)]
pub struct Place(std::sync::Arc<OpenCount>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.closed();
    }
}

/// A session counted as waiting for room ([`OpenCount::wait`]) while it lives.
pub struct Waiting<'a>(&'a AtomicUsize, &'a Gauge);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
        self.1.decrement(1.0);
    }
}

/// Counts one open backend connection in `sqlswitch_backend_connections{state="open"}` for as
/// long as it lives, and holds its place under its pool key's `pool_size`, if it has one.
pub struct OpenGuard(Gauge, std::sync::Arc<OpenCount>, Option<Place>);

impl OpenGuard {
    /// Counts one more open connection.
    pub fn new(metrics: &BackendMetrics) -> Self {
        metrics.open.increment(1.0);
        metrics.count.opened();
        Self(metrics.open.clone(), std::sync::Arc::clone(&metrics.count), None)
    }

    /// Keeps the connection's place under its pool key's limit.
    pub fn hold(&mut self, place: Place) {
        self.2 = Some(place);
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
        self.1.closed();
    }
}
