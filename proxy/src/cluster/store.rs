//! Where a cluster's changes of primary are decided and made known: by this instance alone
//! ([`Local`]), or through the fleet's shared routing in etcd (`fleet::Link`), which every
//! instance of the fleet applies. A change of primary (`change::Change`) and the monitor
//! following the servers go through [`RoutingStore`] and never ask which one they have.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{change, Cluster, RoutingTable};
use crate::replication::ControlConn;

/// A future a [`RoutingStore`] returns.
pub type Boxed<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The phases of a change of primary, and the monitor's following, as a routing store makes
/// them: at once here ([`Local`]), or published to every instance and acknowledged by them.
pub trait RoutingStore: Send + Sync {
    /// A change of primary (`kind`: switchover or failover) from backend `from` to `target`
    /// begins: every instance is to hold new primary work (this one already does). Returns the
    /// generation the change was published at; `None` when there is nobody to tell.
    ///
    /// # Errors
    /// It could not be published (another change runs, this instance is fenced, etcd is not
    /// reached).
    fn begin<'a>(
        &'a self,
        kind: &'a str,
        from: usize,
        target: usize,
        timeout: Duration,
    ) -> Boxed<'a, Result<Option<u64>, String>>;

    /// Waits until every instance holds the change published at `generation`, with no primary
    /// work in flight; returns how many do.
    ///
    /// # Errors
    /// An instance did not say so by `deadline`.
    fn acknowledged(&self, generation: u64, deadline: Instant) -> Boxed<'_, Result<usize, String>>;

    /// Records the step the change driven here has reached (`promote`: past it, an instance
    /// taking over finishes the change rather than rolling it back).
    ///
    /// # Errors
    /// It could not be recorded, or the change was taken over.
    fn step<'a>(&'a self, step: &'a str) -> Boxed<'a, Result<(), String>>;

    /// Ends the change driven here with `primary` as the primary, or, with `None`, leaves its
    /// outcome to be resolved from what the servers say.
    fn end(self: Arc<Self>, primary: Option<usize>) -> Boxed<'static, ()>;

    /// Ends the change driven here with `target` (promoted; `conn` a control connection to
    /// it) as the primary.
    ///
    /// # Errors
    /// The change was taken over meanwhile and another server serves: what became of `target`.
    fn end_promoted<'a>(self: Arc<Self>, target: usize, conn: &'a mut ControlConn) -> Boxed<'a, Result<(), String>>;

    /// The monitor found that `primary` alone takes writes in `cluster`, judging against `was`:
    /// the routing follows (from `since`, when a new group serves). Returns the routing table
    /// after it.
    fn follow<'a>(
        &'a self,
        cluster: &'a Cluster,
        was: usize,
        primary: usize,
        since: Option<u64>,
    ) -> Boxed<'a, Arc<RoutingTable>>;

    /// Its part of `status` (`null` for [`Local`]).
    fn status(&self) -> Value;

    /// Itself, to be downcast by the fleet's own commands (`fleet-resolve`).
    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;
}

/// This instance alone decides: a change is made by swapping the routing table.
pub struct Local;

impl RoutingStore for Local {
    fn begin<'a>(&'a self, _: &'a str, _: usize, _: usize, _: Duration) -> Boxed<'a, Result<Option<u64>, String>> {
        Box::pin(async { Ok(None) })
    }

    fn acknowledged(&self, _generation: u64, _deadline: Instant) -> Boxed<'_, Result<usize, String>> {
        Box::pin(async { Ok(1) })
    }

    fn step<'a>(&'a self, _step: &'a str) -> Boxed<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    fn end(self: Arc<Self>, _primary: Option<usize>) -> Boxed<'static, ()> {
        Box::pin(async {})
    }

    fn end_promoted<'a>(self: Arc<Self>, _target: usize, _conn: &'a mut ControlConn) -> Boxed<'a, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    fn follow<'a>(
        &'a self,
        cluster: &'a Cluster,
        _was: usize,
        primary: usize,
        since: Option<u64>,
    ) -> Boxed<'a, Arc<RoutingTable>> {
        let table = change(cluster, |t| {
            t.primary = primary;
            if let Some(since) = since {
                t.since = since;
            }
        });
        Box::pin(async move { table })
    }

    fn status(&self) -> Value {
        Value::Null
    }

    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}
