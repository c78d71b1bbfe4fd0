//! Transaction pooling in the session core: when a session's connections go back to the pool
//! between its transactions, and how (decision 0020).

use super::{release, Core, Held, Link, Side, Slot, RELEASE_DEADLINE};
use crate::pool::PoolKey;
use crate::session::state::MAX_HELD_STATEMENTS;
use tracing::warn;

/// Transaction pooling: how long a session keeps its connection after a transaction that
/// wrote, waiting for its next one (where a `currval` reads its own value), before it gives the
/// connection back. Past it, as when other clients wait, such a read fails as on a fresh
/// session.
pub const KEEP_AFTER_WRITE: std::time::Duration = std::time::Duration::from_millis(200);

/// Whether a connection holds more named statements than one given back keeps
/// ([`MAX_HELD_STATEMENTS`]): it is fully reset.
fn many_statements<C>(slot: &Slot<'_, C>) -> bool {
    slot.applied.prepared.len() + slot.applied.foreign.len() > MAX_HELD_STATEMENTS
}

impl<C: Link> Core<'_, C> {
    /// At the end of a transaction, with nothing owed: whether the session's connections go
    /// back to the pool now (transaction pooling). Not when the session holds what stays with
    /// its connection (a pin that cannot move, a custom parameter), nor right after a
    /// transaction that wrote while no other client waits for a connection of the session's
    /// key: the connection is kept through the session's next transaction, so that a `currval`
    /// or `lastval` there reads the session's own value, if it begins within
    /// [`KEEP_AFTER_WRITE`] (then [`Core::keeping`]); with clients waiting, or later, it goes back
    /// reset, and such a read fails as on a fresh session: never another session's value.
    pub fn transaction_ended(&mut self, key: &PoolKey) -> bool {
        let wrote = std::mem::take(&mut self.tx_wrote);
        let mut keep = false;
        if let Some(slot) = self.active.and_then(|side| self.slots[side].as_mut()).filter(|_| wrote) {
            slot.wrote = true;
            keep = !self.cluster.backends[slot.backend].contended(key);
        }
        let movable = self.movable();
        self.kept = keep && movable;
        movable && !keep
    }

    /// Keeps the session's connections after a transaction that [`Core::transaction_ended`]
    /// would give back, for a moment ([`KEEP_AFTER_WRITE`]), when no client waits for its
    /// key: what the last statement left on the connection (MySQL's warnings) answers the
    /// next command there.
    pub fn keep_a_moment(&mut self, key: &PoolKey) -> bool {
        let Some(slot) = self.active.and_then(|side| self.slots[side].as_ref()) else { return false };
        self.kept = !self.cluster.backends[slot.backend].contended(key);
        self.kept
    }

    /// Whether the session pools per transaction (its user's or cluster's `pool_mode`).
    pub fn pools_per_transaction(&self) -> bool {
        self.per_transaction
    }

    /// Transaction pooling, between transactions: the session holds no connection now.
    pub fn pooled_out(&self) -> bool {
        self.per_transaction && self.slots[Side::Primary].is_none() && self.slots[Side::Replica].is_none()
    }

    /// Whether the session keeps its connections after a write for a moment
    /// ([`KEEP_AFTER_WRITE`]) and gives them back if its client stays silent.
    pub fn keeping(&self) -> bool {
        self.kept
    }

    /// The client stayed silent for [`KEEP_AFTER_WRITE`] after a write: whether the
    /// connections go back now.
    pub fn keep_expired(&mut self) -> bool {
        std::mem::take(&mut self.kept) && self.movable()
    }

    /// Whether the session's connections may go back between transactions at all.
    fn movable(&self) -> bool {
        self.per_transaction
            && self.state.unmovable().is_none()
            && !self.state.custom_settings
            && (self.slots[Side::Primary].is_some() || self.slots[Side::Replica].is_some())
    }

    /// Gives every connection back to its pool between transactions ([`Core::transaction_ended`]):
    /// as it is, noting the session state and named statements it holds, when the session only
    /// read on it; reset as at a session's end (`DISCARD ALL`, closed if it keeps a temporary
    /// schema), keeping its named statements, when it ran anything else (a write, a function
    /// that may have made a temporary table or set a value, a sequence's `nextval`). Fully
    /// reset, as at a session's end, when it was made read-only for maintenance, is stale, or
    /// holds more than [`MAX_HELD_STATEMENTS`] statements.
    pub async fn give_back_all(&mut self, key: &PoolKey) {
        self.leave_primary();
        self.active = None;
        for (_, slot) in std::mem::take(&mut self.slots) {
            let Some(slot) = slot else { continue };
            if slot.maintenance || slot.stale || many_statements(&slot) || (slot.wrote && self.state.custom_settings) {
                release(self.cluster, *slot, key, &self.state).await;
                continue;
            }
            let held = self.held_by(&slot);
            let Slot { conn, backend, wrote, .. } = *slot;
            let give = conn.give_back(self.cluster, backend, key, held, wrote);
            if tokio::time::timeout(RELEASE_DEADLINE, give).await.is_err() {
                warn!(backend = %self.cluster.backends[backend].name, "giving a connection back did not finish in time; it is closed instead");
            }
        }
    }

    /// [`Core::give_back_all`]'s common case, without awaiting: each connection the session
    /// only read on goes back as it is, now ([`Link::give_back_now`]). Whether none is left
    /// (else `give_back_all` gives back, resetting, the rest).
    pub fn give_back_now(&mut self, key: &PoolKey) -> bool {
        if !C::GIVES_BACK_NOW {
            return false;
        }
        self.leave_primary();
        self.active = None;
        let mut left = false;
        for side in [Side::Primary, Side::Replica] {
            let Some(slot) = self.slots[side].take() else { continue };
            if slot.maintenance || slot.stale || many_statements(&slot) || slot.wrote {
                self.slots[side] = Some(slot);
                left = true;
                continue;
            }
            let held = self.held_by(&slot);
            let Slot { conn, backend, .. } = *slot;
            conn.give_back_now(self.cluster, backend, key, held);
        }
        !left
    }

    /// What a connection given back between transactions holds of the session: its state, as
    /// far as replayed (unless a transaction wrote on it: it is reset), and its named
    /// statements.
    fn held_by(&self, slot: &Slot<'_, C>) -> Held {
        let replay = self.state.replay.shared().filter(|_| slot.applied.replayed > 0 && !slot.wrote);
        Held { replay: replay.map(|s| (s, slot.applied.replayed)), statements: slot.applied.held(&self.state) }
    }

    /// `conn`, just taken from `backend`'s pool and holding the first `held` of the session
    /// state ([`Link::holds`]), becomes `side`'s connection.
    pub(super) fn install(&mut self, side: Side, backend: usize, mut conn: C, held: usize) {
        let statements = conn.take_statements();
        let mut slot = Slot::new(self.cluster, backend, conn);
        slot.applied.replayed = held;
        slot.applied.adopt(statements, &self.state);
        self.slots[side] = Some(Box::new(slot));
    }

    /// Transaction pooling's common case, without awaiting: `conn`, an idle connection just
    /// taken from `backend`'s pool, becomes `side`'s connection when the session has none
    /// there and `conn` holds nothing of another session's that would have to be cleared
    /// first; else it comes back (for the pool: [`Core::ready`] takes it the long way).
    /// What the slot still lacks (state to replay, statements to prepare) is
    /// [`Core::ready`]'s, which finds the slot in place.
    ///
    /// # Errors
    /// `conn` itself, when it cannot be adopted now.
    pub fn adopt_idle(&mut self, side: Side, backend: usize, conn: C) -> Result<(), C> {
        if self.slots[side].is_some() {
            return Err(conn);
        }
        let Some(held) = conn.holds(&self.state.replay) else { return Err(conn) };
        if self.active == Some(side) {
            self.active = None;
        }
        self.install(side, backend, conn, held);
        Ok(())
    }
}
