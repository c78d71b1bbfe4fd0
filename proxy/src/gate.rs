//! The gate sessions pass at each transaction boundary: what a pause or a switchover holds,
//! and the counts of primary work in flight and of held statements that the drain waits on.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::watch;

/// What new work must wait for, set by `pause` and by a switchover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hold {
    /// Every new transaction waits (`pause`).
    pub all: bool,
    /// New primary work waits (switchover); replica reads go on.
    pub primary: bool,
    /// The servers disagree on who the primary is (none, or several, take writes): new primary
    /// work waits, for a limited time, until they agree again.
    pub doubt: bool,
}

/// How a wait at the gate ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The work may start.
    Through,
    /// `max_held` statements wait already: refuse this one.
    Full,
    /// The servers still disagree on the primary: refuse this one.
    Doubt,
}

/// The gate sessions pass at each transaction boundary, and the counts a switchover needs.
pub struct Gate {
    hold: watch::Sender<Hold>,
    /// Sessions with primary work in flight (a transaction, or answers owed).
    pub primary_busy: AtomicUsize,
    /// Batches that waited at the gate, ever.
    pub held_total: AtomicU64,
    /// Batches waiting at the gate now.
    pub held_now: AtomicUsize,
    /// `sqlswitch_statements_held` and `sqlswitch_hold_seconds`, when exported.
    pub metrics: Option<(metrics::Gauge, metrics::Histogram)>,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            hold: watch::Sender::new(Hold::default()),
            primary_busy: AtomicUsize::new(0),
            held_total: AtomicU64::new(0),
            held_now: AtomicUsize::new(0),
            metrics: None,
        }
    }
}

impl Gate {
    /// A gate that exports the statements it holds and how long they waited.
    pub fn with_metrics(held: metrics::Gauge, seconds: metrics::Histogram) -> Self {
        Self { metrics: Some((held, seconds)), ..Self::default() }
    }

    /// Whether work for the primary (or a replica) must wait now.
    pub fn closed(&self, primary: bool) -> bool {
        let h = *self.hold.borrow();
        h.all || (primary && (h.primary || h.doubt))
    }

    /// Waits until work for the primary (or a replica) may start: [`Wait::Through`]. Returns
    /// [`Wait::Full`] at once, without waiting, when `max_held` batches wait already, and
    /// [`Wait::Doubt`] when the servers' disagreement on the primary lasted `doubt_limit`
    /// while it waited: the caller refuses this one.
    pub async fn wait(&self, primary: bool, max_held: usize, doubt_limit: std::time::Duration) -> Wait {
        /// Counts one waiting batch while it lives (also when its session is dropped mid-wait),
        /// and how long it waited.
        struct Held<'a>(&'a Gate, std::time::Instant);
        impl Drop for Held<'_> {
            fn drop(&mut self) {
                self.0.held_now.fetch_sub(1, Ordering::Relaxed);
                if let Some((gauge, seconds)) = &self.0.metrics {
                    gauge.decrement(1.0);
                    seconds.record(self.1.elapsed().as_secs_f64());
                }
            }
        }
        let held = Held(self, std::time::Instant::now());
        if let Some((gauge, _)) = &self.metrics {
            gauge.increment(1.0);
        }
        if self.held_now.fetch_add(1, Ordering::Relaxed) >= max_held {
            return Wait::Full;
        }
        self.held_total.fetch_add(1, Ordering::Relaxed);
        let mut rx = self.hold.subscribe();
        let doubt_over = tokio::time::sleep(doubt_limit);
        tokio::pin!(doubt_over);
        loop {
            let h = *rx.borrow_and_update();
            if !(h.all || (primary && (h.primary || h.doubt))) {
                break;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { break },
                () = &mut doubt_over, if primary && h.doubt && !h.all && !h.primary => return Wait::Doubt,
            }
        }
        drop(held);
        Wait::Through
    }

    /// Changes what is held.
    pub fn set(&self, change: impl FnOnce(&mut Hold)) {
        self.hold.send_modify(change);
    }

    /// What is held now.
    pub fn hold(&self) -> Hold {
        *self.hold.borrow()
    }

    /// Marks a session's primary work as started; with the gate checked after, a switchover
    /// that closes the gate and then waits for `primary_busy` to reach zero cannot miss it.
    pub fn enter_primary(&self) {
        self.primary_busy.fetch_add(1, Ordering::SeqCst);
    }

    /// Marks a session's primary work as finished.
    pub fn leave_primary(&self) {
        self.primary_busy.fetch_sub(1, Ordering::SeqCst);
    }
}
