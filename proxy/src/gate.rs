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
    /// Fleet mode: an instance of the fleet changes the primary; new primary work waits on
    /// every instance until the new routing is published.
    pub fleet: bool,
    /// Fleet mode: this instance has not read the fleet's routing yet, or could not renew its
    /// lease: new primary work waits, for a limited time, then is refused as read-only.
    pub fenced: bool,
    /// Fleet mode: the fleet's primary is a server this instance's config does not have: new
    /// primary work waits, for a limited time, then is refused (never sent to the primary this
    /// instance knew, which the fleet has left); reads go on.
    pub foreign: bool,
}

/// How a wait at the gate ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The work may start.
    Through,
    /// `max_held` statements wait already: refuse this one.
    Full,
    /// The servers still disagree on the primary, or this instance is still fenced from its
    /// fleet: refuse this one.
    Doubt,
    /// A change of primary published by the fleet held this for [`Gate::fleet_hold_limit`]: refuse
    /// this one (the change goes on, or `fleet-resolve` ends it).
    FleetStuck,
}

/// How long primary work waits for a change of primary published by the fleet, unless the
/// fleet's config sets it ([`Gate::fleet_hold_limit`]): past it, each waiting statement is
/// refused (a change whose driver is gone and whose target does not answer would otherwise hold
/// writes forever).
pub const FLEET_HOLD_LIMIT: std::time::Duration = std::time::Duration::from_secs(45);

/// Micros since the process's first look at this clock (monotonic: it runs on while the
/// process is stopped, so a lease deadline passes during a `SIGSTOP`).
pub fn now_micros() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
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
    /// Fleet mode: until when ([`now_micros`]) this instance's lease is surely valid; primary
    /// work past it is held as fenced, even before the fleet task notices (a process woken
    /// from `SIGSTOP` runs its sessions first). `u64::MAX` without a fleet.
    pub lease_until: std::sync::atomic::AtomicU64,
    /// Counts this cluster's `pause` and `resume` commands: a pause's timer resumes only if no
    /// later pause or resume of the same cluster came first.
    pub pause_generation: AtomicU64,
    /// How long (micros) primary work waits for a fleet change before it is refused: three
    /// fleet lease TTLs (set at start), [`FLEET_HOLD_LIMIT`] until then.
    pub fleet_hold_limit: AtomicU64,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            hold: watch::Sender::new(Hold::default()),
            primary_busy: AtomicUsize::new(0),
            held_total: AtomicU64::new(0),
            held_now: AtomicUsize::new(0),
            metrics: None,
            lease_until: AtomicU64::new(u64::MAX),
            pause_generation: AtomicU64::new(0),
            fleet_hold_limit: AtomicU64::new(u64::try_from(FLEET_HOLD_LIMIT.as_micros()).unwrap_or(u64::MAX)),
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
        h.all || (primary && (h.primary || h.doubt || h.fleet || h.fenced || h.foreign || self.lease_lost()))
    }

    /// Primary work is held only because this instance is fenced from its fleet (no pause,
    /// switchover or doubt): a read may go through.
    pub fn only_fenced(&self) -> bool {
        let h = *self.hold.borrow();
        !(h.all || h.primary || h.doubt || h.fleet) && (h.fenced || h.foreign || self.lease_lost())
    }

    /// Fleet mode: the lease may have expired (the fleet task sets `fenced` soon after).
    pub fn lease_lost(&self) -> bool {
        let until = self.lease_until.load(Ordering::Relaxed);
        until != u64::MAX && now_micros() > until
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
        let fleet_over =
            tokio::time::sleep(std::time::Duration::from_micros(self.fleet_hold_limit.load(Ordering::Relaxed)));
        tokio::pin!(fleet_over);
        let mut was_refusable = true;
        loop {
            let h = *rx.borrow_and_update();
            // A lost lease the fleet task has not noticed yet: look again shortly.
            let lost = primary && !h.fenced && self.lease_lost();
            if !(h.all || lost || (primary && (h.primary || h.doubt || h.fleet || h.fenced || h.foreign))) {
                break;
            }
            let refusable = primary && (h.doubt || h.fenced || h.foreign || lost) && !h.all && !h.primary && !h.fleet;
            if refusable && !was_refusable {
                // The doubt's time counts from when it became the reason to wait: a statement
                // held by a switchover that then failed gets its full doubt_limit, not none.
                doubt_over.as_mut().reset(tokio::time::Instant::now() + doubt_limit);
            }
            was_refusable = refusable;
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { break },
                () = tokio::time::sleep(std::time::Duration::from_millis(20)), if lost => {}
                () = &mut doubt_over, if refusable => return Wait::Doubt,
                () = &mut fleet_over, if primary && h.fleet && !h.all && !h.primary => return Wait::FleetStuck,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Gate, Wait};

    /// A statement held by a switchover that then fails, leaving the servers in doubt for a
    /// moment, gets the whole doubt limit from then on: not an instant refusal because it had
    /// already waited that long for the switchover.
    #[tokio::test(start_paused = true)]
    async fn the_doubt_limit_counts_from_when_doubt_became_the_reason() {
        let gate = std::sync::Arc::new(Gate::default());
        gate.set(|h| {
            h.primary = true;
            h.doubt = true;
        });
        let waiting = {
            let gate = std::sync::Arc::clone(&gate);
            tokio::spawn(async move { gate.wait(true, 10, Duration::from_secs(1)).await })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        gate.set(|h| h.primary = false);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!waiting.is_finished(), "refused before its doubt limit");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(waiting.await.ok(), Some(Wait::Doubt));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fleet_hold_ends_by_its_limit() {
        let gate = std::sync::Arc::new(Gate::default());
        gate.fleet_hold_limit.store(3_000_000, std::sync::atomic::Ordering::Relaxed);
        gate.set(|h| h.fleet = true);
        let started = tokio::time::Instant::now();
        assert_eq!(gate.wait(true, 10, Duration::from_secs(1)).await, Wait::FleetStuck);
        assert_eq!(started.elapsed().as_secs(), 3);
        assert_eq!(gate.wait(false, 10, Duration::from_secs(1)).await, Wait::Through, "replica work is not held");
    }

    /// A fleet whose primary this instance does not know: writes are refused after the doubt
    /// limit (never sent to the primary this instance knew), reads go through.
    #[tokio::test(start_paused = true)]
    async fn an_unknown_fleet_primary_refuses_writes_and_serves_reads() {
        let gate = Gate::default();
        gate.set(|h| h.foreign = true);
        assert!(gate.closed(true) && !gate.closed(false) && gate.only_fenced());
        let started = tokio::time::Instant::now();
        assert_eq!(gate.wait(true, 10, Duration::from_secs(2)).await, Wait::Doubt);
        assert_eq!(started.elapsed().as_secs(), 2);
        assert_eq!(gate.wait(false, 10, Duration::from_secs(2)).await, Wait::Through);
        gate.set(|h| h.foreign = false);
        assert_eq!(gate.wait(true, 10, Duration::from_secs(2)).await, Wait::Through);
    }
}
