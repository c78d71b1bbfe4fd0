//! The protocol-neutral session core: what a session does around each statement, whatever
//! its wire protocol. It holds the session's two backend connections ([`Slot`]s, one to the
//! primary and one to a replica), the session state they are given, and the session's
//! standing at the gate; it builds the routing input, readies a connection (takes one from the
//! pool, replaces a dead or stale one, replays the session state), applies the fallback rules
//! when a replica cannot be used, and returns connections to their pools. A protocol adapter
//! (`pg/`, `mysql/`) keeps framing, login, what a message means and how an answer ends; it
//! reaches its connections through [`Link`].

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::{debug, warn};

use super::state::{Applied, SessionState};
use super::{Counted, Pair, PrimaryWork, Side};
use crate::backend::BackendError;
use crate::cluster::Cluster;
use crate::pool::PoolKey;
use crate::route::{self, Reason, SessionView, Target};

pub use crate::conn::Held;

/// One backend connection of a session.
pub struct Slot<'a, C> {
    /// The connection.
    pub conn: C,
    /// Which backend of the cluster.
    pub backend: usize,
    /// What it has been given of the session state.
    pub applied: Applied,
    /// It still holds state the session has discarded (`DISCARD ALL` ran elsewhere): replace
    /// it before use.
    pub stale: bool,
    /// Unique among every slot the daemon made: keys per-connection ids (MySQL statement ids).
    pub serial: u64,
    /// Made read-only for maintenance ([`Core::maintenance`]).
    pub maintenance: bool,
    /// A transaction of the session ran more than reads on it (transaction pooling: it is reset
    /// before it goes back, so nothing a write or a function left reaches another session).
    pub wrote: bool,
    /// Keeps the backend's session count.
    _counted: Counted<'a>,
}

impl<'a, C> Slot<'a, C> {
    /// `conn`, a session's connection to `backend`, counted among the backend's sessions.
    pub fn new(cluster: &'a Cluster, backend: usize, conn: C) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self {
            conn,
            backend,
            applied: Applied::default(),
            stale: false,
            serial: NEXT.fetch_add(1, Ordering::Relaxed),
            maintenance: false,
            wrote: false,
            _counted: Counted::new(&cluster.backends[backend].sessions),
        }
    }
}

/// Why an open transaction ended when its server stopped being the primary.
pub const DEPOSED: &str = "the primary changed during this transaction: it was rolled back on the old primary, and \
                           nothing of it was committed";

/// Why an open transaction ended when this instance's fleet lease ran out.
pub const LEASE_LOST: &str = "this sqlswitch instance lost its fleet lease during this transaction: it was rolled \
                              back, and nothing of it was committed";

/// How often an idle session whose state cannot move looks whether the primary changed.
pub const MOVED_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// Where a statement goes: the side, the backend, and why (for the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Which of the session's connections.
    pub side: Side,
    /// Which backend of the cluster.
    pub backend: usize,
    /// Why.
    pub reason: Reason,
}

/// The session's transaction, as the adapter knows it from its server's last answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tx {
    /// No transaction open, and the next statement opens none by itself.
    None,
    /// A transaction is open on the active connection.
    Open,
    /// None is open, but the next statement opens one that later writes may join (MySQL
    /// `autocommit = 0`).
    Implicit,
    /// No transaction is open, but the active connection still owes answers (PostgreSQL
    /// pipelining): the connection stays, but no transaction is at stake.
    Owed,
}

impl Tx {
    /// Whether the active connection must be kept: a transaction is open on it, or it owes
    /// answers.
    pub fn holds_connection(self) -> bool {
        matches!(self, Tx::Open | Tx::Owed)
    }
}

/// The core of one session over connections of type `C`.
///
/// Its fields are its own: an adapter reads them through accessors and changes them only
/// through the methods that keep the rules (what a statement does to the session state, which
/// connection is active, when a connection is taken, replaced or given back).
pub struct Core<'a, C> {
    /// The cluster the session belongs to.
    cluster: &'a Cluster,
    /// The primary and replica connections.
    slots: Pair<Box<Slot<'a, C>>>,
    /// The connection that ran the last statement (owing answers, or holding the transaction).
    active: Option<Side>,
    /// What moves with the session from connection to connection.
    state: SessionState,
    /// The session is read-only by its user, listener or its own declaration.
    read_only: bool,
    /// Why the cluster's primary cannot be used ([`Cluster::maintenance`]), as it was at the
    /// session's last transaction boundary: a transaction ends as it began.
    maintenance: Option<&'static str>,
    primary_work: PrimaryWork,
    /// Transaction pooling: connections go back to the pool between transactions.
    per_transaction: bool,
    /// The transaction now ending wrote.
    tx_wrote: bool,
    /// Transaction pooling: the connections are kept after a write for the session's next
    /// transaction, if it begins within [`KEEP_AFTER_WRITE`].
    kept: bool,
    /// Counted in `sqlswitch_pinned_sessions` (until it ends).
    pin_counted: bool,
}

impl<C> Drop for Core<'_, C> {
    fn drop(&mut self) {
        self.primary_work.leave(self.cluster);
        if self.pin_counted {
            self.cluster.metrics.pinned.decrement(1.0);
        }
    }
}

impl<'a, C: Link> Core<'a, C> {
    /// A session of `user` on `cluster` with no connection yet.
    pub fn new(cluster: &'a Cluster, read_only: bool, user: &str) -> Self {
        Self {
            cluster,
            slots: Pair::default(),
            active: None,
            state: SessionState::compacting(cluster.config.protocol == sqlswitch_config::Protocol::Postgres),
            read_only,
            maintenance: None,
            primary_work: PrimaryWork::default(),
            per_transaction: cluster.config.pool_mode_of(user) == sqlswitch_config::PoolMode::Transaction,
            tx_wrote: false,
            kept: false,
            pin_counted: false,
        }
    }

    /// `side`'s connection, if it has one.
    pub fn slot(&self, side: Side) -> Option<&Slot<'a, C>> {
        self.slots[side].as_deref()
    }

    /// `side`'s connection, if it has one, to run or read on.
    pub fn slot_mut(&mut self, side: Side) -> Option<&mut Slot<'a, C>> {
        self.slots[side].as_deref_mut()
    }

    /// `side`'s connection with the session state, to bring the connection up to it (the
    /// adapter's own per-connection state: prepared statements).
    pub fn slot_with_state(&mut self, side: Side) -> Option<(&mut Slot<'a, C>, &SessionState)> {
        let slot = self.slots[side].as_deref_mut()?;
        Some((slot, &self.state))
    }

    /// The connection that ran the last statement.
    pub fn active(&self) -> Option<Side> {
        self.active
    }

    /// `side` ran the session's last statement (when it has a connection).
    pub fn activate(&mut self, side: Side) {
        if self.slots[side].is_some() {
            self.active = Some(side);
        }
    }

    /// The session state that moves with the session.
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// Takes in the session's first connection (at login or a change of user), as `side`'s
    /// and active.
    pub fn start(&mut self, side: Side, slot: Slot<'a, C>) {
        self.slots[side] = Some(Box::new(slot));
        self.active = Some(side);
    }

    /// Takes `side`'s connection out of the session (to stop it, or because it cannot be used
    /// further); the caller closes it. Unlike [`Core::drop_slot`] the backend is not blamed.
    pub fn take(&mut self, side: Side) -> Option<Box<Slot<'a, C>>> {
        if self.active == Some(side) {
            self.active = None;
        }
        self.slots[side].take()
    }

    /// Both connections, out of the session at its end (the caller closes or pools them).
    pub fn take_all(&mut self) -> Pair<Box<Slot<'a, C>>> {
        self.active = None;
        std::mem::take(&mut self.slots)
    }

    /// Nothing of the session carries over (a change of user; the caller released the
    /// connections first).
    pub fn reset(&mut self, read_only: bool) {
        self.state = SessionState::default();
        self.read_only = read_only;
    }

    /// At a transaction boundary: takes the cluster's maintenance state for what follows.
    pub fn at_boundary(&mut self) {
        self.maintenance = self.cluster.maintenance();
    }

    /// Whether the session runs read-only now: by itself, or because the cluster is in
    /// maintenance (every session then routes as a read-only one, and writes are refused).
    pub fn read_only_now(&self) -> bool {
        self.read_only || self.maintenance.is_some()
    }

    /// The active connection.
    pub fn active_slot(&self) -> Option<&Slot<'a, C>> {
        self.active.and_then(|side| self.slots[side].as_deref())
    }

    /// Where a statement described by `batch` goes, with one load of the routing table.
    pub fn route(&self, batch: &route::Batch, tx: Tx) -> Decision {
        let read_only = self.read_only_now();
        let current_replica = self.slots[Side::Replica].as_ref().map(|s| s.backend);
        let in_tx_on = match tx {
            Tx::Open => Some(match self.active {
                Some(Side::Replica) => Target::Replica(current_replica.unwrap_or(0)),
                _ => Target::Primary,
            }),
            // The statement opens a transaction that later writes may join: the primary.
            Tx::Implicit if !read_only => Some(Target::Primary),
            Tx::Implicit | Tx::None | Tx::Owed => None,
        };
        let session = SessionView {
            read_only,
            pinned: self.state.pinned(),
            in_tx_on,
            last_write: self.state.last_write,
            current_replica,
        };
        let (target, reason, primary) = self.cluster.route(batch, &session);
        match target {
            Target::Primary => Decision { side: Side::Primary, backend: primary, reason },
            Target::Replica(backend) => Decision { side: Side::Replica, backend, reason },
        }
    }

    /// Lets the statement through the gate at a transaction boundary (see
    /// [`PrimaryWork::pass`]): `Ok(true)` at once, `Ok(false)` after a wait (decide again),
    /// `Err(refusal)` when `max_held` statements wait already or the servers still disagree on
    /// the primary.
    pub async fn pass(&mut self, primary: bool, read: bool) -> Result<bool, super::Refusal> {
        self.primary_work.pass(self.cluster, primary, read).await
    }

    /// Lets the statement through the gate only if it is open now (counted in, as
    /// [`Core::pass`] does); `false`, counted out, when it would have to wait.
    pub fn try_pass(&mut self, primary: bool, read: bool) -> bool {
        if self.primary_work.open(self.cluster, primary, read) {
            return true;
        }
        self.primary_work.leave(self.cluster);
        false
    }

    /// Whether the session's primary work is counted in flight (admitted through the gate and
    /// not over): its next batch goes on without the gate.
    pub fn in_primary_work(&self) -> bool {
        self.primary_work.counted
    }

    /// The session's primary work is over (or never started): let a switchover count it out.
    pub fn leave_primary(&mut self) {
        self.primary_work.leave(self.cluster);
    }

    /// Why the session must end now: the primary changed, and its state on the old one cannot
    /// move ([`SessionState::unmovable`]). Others hear it at their next statement; one that
    /// only listens ([`Core::listening`]) looks every [`MOVED_CHECK`] and is told at once.
    pub fn moved_away(&self) -> Option<BackendError> {
        let why = self.state.unmovable()?;
        let slot = self.slots[Side::Primary].as_ref()?;
        (slot.backend != self.primary()).then_some(BackendError::Unmovable(why))
    }

    /// Whether the session waits for notifications (`LISTEN`) that only its primary sends.
    pub fn listening(&self) -> bool {
        self.state.unmovable() == Some(super::state::LISTENING)
    }

    /// The primary's index in the routing table now.
    pub fn primary(&self) -> usize {
        self.cluster.table.load().primary
    }

    /// A write was acknowledged: reads wait for a replica that has it (read-your-writes).
    pub fn wrote(&mut self) {
        self.state.last_write = Some(self.cluster.clock.now());
        self.tx_wrote = true;
    }

    /// Forgets `side`'s connection (it failed) and keeps reads off its replica until the
    /// monitor sees it answer again.
    pub fn drop_slot(&mut self, side: Side) {
        if let Some(slot) = self.slots[side].take() {
            if side == Side::Replica {
                self.cluster.backends[slot.backend].health.mark_failed();
            }
        }
        if self.active == Some(side) {
            self.active = None;
        }
    }

    /// A replica could not be readied for a statement, with error `e`; the statement goes to
    /// the primary instead. When the replica refused the session's own state (a replayed
    /// statement, a prepare, the login), the session, not the replica, is the problem: the
    /// session stays on the primary from now on and the replica serves everyone else.
    /// A replica with no room under `max_backend_connections` is busy, not down: only this
    /// statement goes elsewhere. Otherwise the replica is unavailable and is kept out until
    /// the monitor sees it again.
    pub fn fall_back(&mut self, e: &BackendError) {
        if let BackendError::Full { .. } = e {
            // The replica is busy, not down: it stays in service for everyone else.
            debug!(error = %e, "replica full for this statement; using the primary");
            self.take(Side::Replica);
        } else if matches!(e, BackendError::Refused { .. }) {
            warn!(error = %e, "a replica refused this session's state; the session stays on the primary");
            self.state.pin();
            self.slots[Side::Replica] = None;
            if self.active == Some(Side::Replica) {
                self.active = None;
            }
        } else {
            debug!(error = %e, fault = ?e.fault(), "replica unavailable for this statement; using the primary");
            self.drop_slot(Side::Replica);
        }
    }

    /// Whether a transaction open on `side`'s connection may take its next statement, sent to
    /// `backend`: it lives and dies on the server it began on (README, "Safety of a change of primary"). It
    /// cannot go on when the routing table names another primary (a followed promotion, a
    /// failover, a fleet change), nor when this instance's fleet lease has run out (another
    /// instance may have changed the primary meanwhile).
    ///
    /// # Errors
    /// [`BackendError::Ended`] with the reason.
    pub fn may_go_on(&self, side: Side, backend: usize, tx: Tx) -> Result<(), BackendError> {
        if side != Side::Primary || !tx.holds_connection() || self.active != Some(side) {
            return Ok(());
        }
        let Some(slot) = self.slots[side].as_ref() else { return Ok(()) };
        if slot.backend != backend {
            return Err(BackendError::Ended(DEPOSED));
        }
        // Only a transaction is at stake (answers owed outside one are the gate's business,
        // which lets a fenced instance's reads through).
        if tx == Tx::Open && self.cluster.gate.lease_lost() {
            return Err(BackendError::Ended(LEASE_LOST));
        }
        Ok(())
    }

    /// Whether [`Core::ready`] would find nothing to do: `side` holds a usable connection to
    /// `backend` with the session state replayed and the maintenance setting applied. The
    /// common case, checked without awaiting, so that callers box the rest.
    pub fn settled(&self, side: Side, backend: usize, tx: Tx) -> bool {
        let Some(slot) = &self.slots[side] else { return false };
        if slot.backend != backend || slot.stale {
            return false;
        }
        // A fleet instance past its lease sends nothing more to the primary ([`Core::may_go_on`]).
        if side == Side::Primary && self.cluster.gate.lease_lost() {
            return false;
        }
        let checked = !C::WATCHED || self.active != Some(side);
        if checked && !slot.conn.is_reusable() {
            return false;
        }
        let maintenance = self.maintenance.is_some() && !self.read_only;
        if slot.maintenance != maintenance && !tx.holds_connection() {
            return false;
        }
        self.state.replay.len() <= slot.applied.replayed
    }

    /// Makes sure `side` has a connection to `backend`, with the session state replayed:
    /// keeps the one it has when it is to that backend and usable, else returns it to the
    /// pool and takes another with `open`. `tx` says whether the active connection holds a
    /// transaction: a connection the server closed under it is not replaced (the transaction
    /// is lost, and the client must hear it): [`BackendError::Closed`].
    pub async fn ready<F, Fut>(
        &mut self,
        side: Side,
        backend: usize,
        key: &PoolKey,
        tx: Tx,
        open: F,
    ) -> Result<&mut Slot<'a, C>, BackendError>
    where
        F: FnOnce(usize) -> Fut,
        Fut: Future<Output = Result<C, BackendError>>,
    {
        let active = self.active == Some(side);
        if let Err(e) = self.may_go_on(side, backend, tx) {
            // The connection is closed, not reset (the server rolls the transaction back; a
            // frozen one costs no wait), and nothing of the transaction reaches another server.
            if let Some(slot) = self.slots[side].take() {
                warn!(backend = %self.cluster.backends[slot.backend].name, error = %e, "ending an open transaction");
            }
            self.active = None;
            return Err(e);
        }
        if let Some(why) = self.state.unmovable() {
            if self.slots[side].as_ref().is_some_and(|s| side == Side::Primary && s.backend != backend) {
                return Err(BackendError::Unmovable(why));
            }
        }
        let checked = !C::WATCHED || !active;
        let (replace, dead) = match &self.slots[side] {
            Some(slot) => {
                let dead = checked && !slot.conn.is_reusable();
                (slot.backend != backend || slot.stale || dead, dead)
            }
            None => (true, false),
        };
        if dead && active && tx.holds_connection() {
            self.slots[side] = None;
            self.active = None;
            return Err(BackendError::Closed);
        }
        if replace {
            // Giving a connection back (a reset) is boxed; taking one is not: its login is boxed
            // inside the checkout ([`crate::pool::Pool::checkout`]), and callers box `ready`.
            if let Some(old) = self.slots[side].take() {
                Box::pin(release(self.cluster, *old, key, &self.state)).await;
            }
            if active {
                self.active = None;
            }
            let mut conn = open(backend).await?;
            // A connection another session gave back between transactions may hold its state:
            // the part this session's begins with is kept, anything else is cleared.
            let held = match conn.holds(&self.state.replay) {
                Some(n) => n,
                None => {
                    Box::pin(conn.clear()).await?;
                    0
                }
            };
            self.install(side, backend, conn, held);
        }
        let slot = self.slots[side].as_mut().ok_or_else(|| BackendError::Protocol("no connection".into()))?;
        // Maintenance makes the session's connections read-only (one that is read-only by
        // itself has read-only connections from its login); at its end the setting goes back
        // to the login's, and the session's own state is replayed over it again.
        let maintenance = self.maintenance.is_some() && !self.read_only;
        if slot.maintenance && !maintenance && !tx.holds_connection() {
            slot.conn.set_read_only(false).await?;
            slot.maintenance = false;
            slot.applied.replayed = 0;
        }
        if let Some(missing) = self.state.replay.get(slot.applied.replayed..).filter(|m| !m.is_empty()) {
            slot.conn.replay(missing).await?;
            slot.applied.replayed = self.state.replay.len();
        }
        if maintenance && !slot.maintenance && !tx.holds_connection() {
            slot.conn.set_read_only(true).await?;
            slot.maintenance = true;
        }
        Ok(slot)
    }

    /// Returns every connection to its pool (or closes it), and ends the session's primary
    /// work.
    pub async fn release_all(&mut self, key: &PoolKey) {
        self.leave_primary();
        self.active = None;
        for (_, slot) in std::mem::take(&mut self.slots) {
            let Some(slot) = slot else { continue };
            release(self.cluster, *slot, key, &self.state).await;
        }
    }
}

/// How long giving a connection back may take (its reset: a rollback, `DISCARD ALL`,
/// `COM_RESET_CONNECTION`). A server that does not answer by then (frozen, partitioned) has
/// the connection closed instead: a session never hangs on a server it is leaving.
pub const RELEASE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// Resets `slot`'s connection and returns it to its pool, or closes it when the reset fails or
/// misses [`RELEASE_DEADLINE`].
async fn release<C: Link>(cluster: &Cluster, slot: Slot<'_, C>, key: &PoolKey, state: &SessionState) {
    let name = &cluster.backends[slot.backend].name;
    if tokio::time::timeout(RELEASE_DEADLINE, slot.conn.release(cluster, slot.backend, key, state)).await.is_err() {
        warn!(backend = %name, "a connection's reset did not finish in time; it is closed instead");
    }
}

#[path = "link.rs"]
mod link;
pub use link::Link;
#[path = "pooling.rs"]
mod pooling;
#[path = "timer.rs"]
mod timer;
pub use pooling::KEEP_AFTER_WRITE;
pub use timer::Timer;
#[path = "standing.rs"]
mod standing;
pub use standing::{Note, Refused};

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
