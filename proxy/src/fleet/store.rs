//! The fleet's link as the cluster's [`RoutingStore`]: a change of primary and the monitor's
//! following are published to etcd and applied by every instance.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Link;
use crate::cluster::{Boxed, Cluster, RoutingStore, RoutingTable};
use crate::replication::ControlConn;

impl RoutingStore for Link {
    fn begin<'a>(
        &'a self,
        kind: &'a str,
        from: usize,
        target: usize,
        timeout: Duration,
    ) -> Boxed<'a, Result<Option<u64>, String>> {
        Box::pin(async move { Link::begin(self, kind, from, target, timeout).await.map(Some) })
    }

    fn acknowledged(&self, generation: u64, deadline: Instant) -> Boxed<'_, Result<usize, String>> {
        Box::pin(Link::acknowledged(self, generation, deadline))
    }

    fn step<'a>(&'a self, step: &'a str) -> Boxed<'a, Result<(), String>> {
        Box::pin(Link::step(self, step))
    }

    fn end(self: Arc<Self>, primary: Option<usize>) -> Boxed<'static, ()> {
        Box::pin(async move {
            Link::end(&self, primary).await;
        })
    }

    fn end_promoted<'a>(self: Arc<Self>, target: usize, conn: &'a mut ControlConn) -> Boxed<'a, Result<(), String>> {
        Box::pin(async move { Link::end_promoted(&self, target, conn).await })
    }

    fn follow<'a>(
        &'a self,
        cluster: &'a Cluster,
        was: usize,
        primary: usize,
        _since: Option<u64>,
    ) -> Boxed<'a, Arc<RoutingTable>> {
        // Every instance sets the group's activation time as it applies the new routing.
        Box::pin(async move {
            Link::follow(self, was, primary).await;
            cluster.table.load_full()
        })
    }

    fn status(&self) -> Value {
        Link::status(self)
    }

    fn as_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}
