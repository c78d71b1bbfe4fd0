//! The part every change of primary shares: a switchover, a failover and an upgrade cutover
//! (a switchover to another group) each run through one [`Change`]. [`Change::begin`] holds new
//! primary work (on every instance of a fleet: the change is published first); the command's
//! own steps run while it is held; then it ends one of two ways. [`Change::commit`] swaps the
//! routing table to the new primary, publishes it to the fleet, and releases the held work to
//! it. [`Change::abandon`] releases the held work to the server known to take writes (or, when
//! none is known, leaves the fleet's change published for an instance to resolve from what the
//! servers say). A `Change` dropped without either (a command cancelled or panicking) releases
//! its hold too, and unlocks the fleet's change so that another instance resolves it: no path
//! leaves primary work held for good.
//!
//! The rules that make a change safe live with the steps that need them: the fence covers every
//! open transaction before the final position is read (`switchover`), a promotion is asked for
//! only while this instance's fleet lease holds ([`Change::promoting`]), and a target promoted
//! after the fleet moved on is fenced again and deposed (`fleet::Link::end_promoted`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::cluster::{Cluster, RoutingTable};
use crate::control::Failure;
use crate::fleet::Link;
use crate::replication::ControlConn;

/// A change of primary that holds new primary work until it ends.
pub(crate) struct Change<'a> {
    cluster: &'a Cluster,
    /// Fleet mode: the link the change is published through, with its generation.
    fleet: Option<(Arc<Link>, u64)>,
    /// Counted as a failover (or a switchover) in the metrics.
    failover: bool,
    started: Instant,
    /// Still holding new primary work (and, in fleet mode, the fleet's change open).
    held: bool,
}

impl<'a> Change<'a> {
    /// Holds new primary work for a `kind` ("switchover", "failover") from backend `old` to
    /// `target`: here at once, and in fleet mode on every instance once the change is
    /// published (within `timeout`). Replica reads go on. The clients' pause starts here.
    ///
    /// # Errors
    /// The fleet could not publish the change (another is running, etcd unreachable); nothing
    /// stays held.
    pub(crate) async fn begin(
        cluster: &'a Cluster,
        kind: &str,
        old: usize,
        target: usize,
        timeout: Duration,
    ) -> Result<Self, Failure> {
        cluster.gate.set(|h| h.primary = true);
        let mut change =
            Self { cluster, fleet: None, failover: kind == "failover", started: Instant::now(), held: true };
        if let Some(link) = cluster.fleet.get() {
            // On an error, dropping `change` releases the hold.
            let generation = link.begin(kind, old, target, timeout).await?;
            change.fleet = Some((Arc::clone(link), generation));
        }
        Ok(change)
    }

    /// The fleet generation the change was published at (`None` outside fleet mode).
    pub(crate) fn generation(&self) -> Option<u64> {
        self.fleet.as_ref().map(|(_, g)| *g)
    }

    /// Fleet mode: waits until every live instance holds, with no primary work in flight;
    /// returns how many did (`None` outside fleet mode).
    ///
    /// # Errors
    /// An instance did not say so by `deadline`.
    pub(crate) async fn acknowledged(&self, deadline: Instant) -> Result<Option<usize>, Failure> {
        match &self.fleet {
            Some((link, generation)) => link.acknowledged(*generation, deadline).await.map(Some),
            None => Ok(None),
        }
    }

    /// Right before a promotion is asked for (the point of no return). Fleet mode: records the
    /// step, so an instance taking over finishes the change rather than rolling it back, and
    /// checks this instance's lease still holds: an instance taking over finds the driver gone
    /// only once that lease has expired, a margin after this check.
    ///
    /// # Errors
    /// The step could not be recorded, or the lease ran out: nothing may be promoted.
    pub(crate) async fn promoting(&self) -> Result<(), Failure> {
        let Some((link, _)) = &self.fleet else { return Ok(()) };
        link.step("promote").await?;
        if self.cluster.gate.lease_lost() {
            return Err("promote: this instance's fleet lease ran out; nothing was promoted".into());
        }
        Ok(())
    }

    /// Makes `target` (promoted, `conn` a control connection to it) the primary: publishes it
    /// to the fleet, swaps the routing table (setting its `since` when a new group serves from
    /// now on), clears the servers' disagreement and releases the held work to it. Returns the
    /// new table and the clients' pause.
    ///
    /// # Errors
    /// Fleet mode: the change was taken over meanwhile to another primary (`target` is fenced
    /// again and deposed); the hold is released to the fleet's primary.
    pub(crate) async fn commit(
        mut self,
        target: usize,
        conn: &mut ControlConn,
        since: Option<u64>,
    ) -> Result<(Arc<RoutingTable>, Duration), Failure> {
        if let Some((link, _)) = &self.fleet {
            // Published: every instance releases its held work to the new primary.
            if let Err(e) = link.end_promoted(target, conn).await {
                self.cluster.metrics.count_change(self.failover, None);
                self.release();
                return Err(format!("swap: {e}"));
            }
        }
        let table = crate::control::change(self.cluster, |t| {
            t.primary = target;
            if let Some(since) = since {
                t.since = since;
            }
        });
        lock(&self.cluster.discovery).problem = None;
        self.cluster.gate.set(|h| {
            h.primary = false;
            h.doubt = false;
        });
        self.held = false;
        let pause = self.started.elapsed();
        self.cluster.metrics.count_change(self.failover, Some(pause));
        Ok((table, pause))
    }

    /// Ends a change that failed: `primary` is the server known to take writes now (the
    /// routing table already names it), or `None` when nobody can tell (then, in fleet mode,
    /// the change stays published and an instance resolves it from what the servers say).
    /// Releases the held work.
    pub(crate) async fn abandon(mut self, primary: Option<usize>) {
        self.cluster.metrics.count_change(self.failover, None);
        if let Some((link, _)) = self.fleet.take() {
            link.end(primary).await;
        }
        self.release();
    }

    fn release(&mut self) {
        self.fleet = None;
        self.cluster.gate.set(|h| h.primary = false);
        self.held = false;
    }
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        warn!(cluster = %self.cluster.config.name, "a change of primary ended without an outcome: held work is released");
        self.cluster.gate.set(|h| h.primary = false);
        if let Some((link, _)) = self.fleet.take() {
            // Unlocked with no outcome: another instance resolves it from the servers.
            tokio::spawn(async move {
                link.end(None).await;
            });
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
