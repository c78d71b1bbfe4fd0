//! Transaction pooling in the session core: when a session's connections go back to the pool
//! between its transactions, and how (decision 0020).

use super::{release, Core, Link, Side, Slot, RELEASE_DEADLINE};
use crate::pool::PoolKey;
use tracing::warn;

impl<C: Link> Core<'_, C> {
    /// At the end of a transaction, with nothing owed: whether the session's connections go
    /// back to the pool now (transaction pooling). Not when the session holds what stays with
    /// its connection (a pin that cannot move, named prepared statements, a custom parameter),
    /// nor right after a transaction that wrote: the connection is kept through the session's
    /// next transaction, so that a `currval` or `lastval` there reads the session's own value.
    pub fn transaction_ended(&mut self) -> bool {
        let wrote = std::mem::take(&mut self.tx_wrote);
        if let Some(slot) = self.active.and_then(|side| self.slots[side].as_mut()).filter(|_| wrote) {
            slot.wrote = true;
        }
        self.per_transaction
            && !wrote
            && self.state.unmovable().is_none()
            && !self.state.has_statements()
            && !self.state.custom_settings
            && (self.slots[Side::Primary].is_some() || self.slots[Side::Replica].is_some())
    }

    /// Gives every connection back to its pool between transactions ([`Core::transaction_ended`]):
    /// as it is, noting the session state it holds, when the session only read on it; reset as
    /// at a session's end (`DISCARD ALL`, closed if it keeps a temporary schema) when it ran
    /// anything else (a write, a function that may have made a temporary table or set a value,
    /// a sequence's `nextval`), or was made read-only for maintenance, or is stale.
    pub async fn give_back_all(&mut self, key: &PoolKey) {
        self.leave_primary();
        self.active = None;
        let shared = self.state.replay.shared();
        for (_, slot) in std::mem::take(&mut self.slots) {
            let Some(slot) = slot else { continue };
            if slot.maintenance || slot.stale || slot.wrote {
                release(self.cluster, *slot, key, &self.state).await;
                continue;
            }
            let held = shared.clone().filter(|_| slot.applied.replayed > 0).map(|s| (s, slot.applied.replayed));
            let Slot { conn, backend, .. } = *slot;
            let give = conn.give_back(self.cluster, backend, key, held);
            if tokio::time::timeout(RELEASE_DEADLINE, give).await.is_err() {
                warn!(backend = %self.cluster.backends[backend].name, "giving a connection back did not finish in time; it is closed instead");
            }
        }
    }
}
