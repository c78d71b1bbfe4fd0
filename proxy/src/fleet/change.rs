//! A change of primary across the fleet: the driver's phases ([`Link::begin`],
//! [`Link::acknowledged`], [`Link::step`], [`Link::end`]), the takeover of a change whose driver
//! is gone, and the operator's way out of a stuck one ([`Link::resolve`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use serde_json::{json, Value};
use tracing::{info, warn};

use super::{lock, timed, unix_ms, Change, Link, RETRY, TAKEN_OVER, TAKEOVER};
use crate::cluster::Failure;
use crate::replication::{ControlConn, Dialect, Role};

/// How the end of a change driven here went ([`Link::end`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Published: every instance routes to the new primary from this generation.
    Published(u64),
    /// Another instance (a takeover) or the operator (`fleet-resolve`) ended the change first,
    /// naming this server the primary.
    TakenOver(String),
    /// Not known yet: etcd was not reached (retried in the background), or the outcome is left
    /// for an instance to resolve from what the servers say.
    Pending,
}

impl Link {
    /// `fleet-resolve CLUSTER BACKEND`: ends a published change of primary that nobody can
    /// finish (its driver gone and its target not answering), naming `primary` as the primary,
    /// by compare-and-swap: every instance stops holding primary work and routes there.
    ///
    /// # Errors
    /// No change is published, or etcd was not reached.
    pub async fn resolve(&self, primary: usize) -> Result<Value, Failure> {
        let name = self.cluster.backends[primary].name.clone();
        let mut ended = None;
        let doc = self
            .publish(|d| {
                let Some(change) = d.change.take() else {
                    return Err("fleet: no change of primary is published".into());
                };
                ended = Some(change);
                d.primary.clone_from(&name);
                Ok(())
            })
            .await?;
        let change = ended.map(|c| format!("the {} from {} to {} driven by {}", c.kind, c.from, c.target, c.by));
        warn!(event = "fleet_resolved", cluster = %self.cluster.config.name, primary = %name, generation = doc.generation, ended = ?change, "fleet: a change of primary was ended by the operator");
        Ok(
            json!({ "ok": true, "cluster": self.cluster.config.name, "primary": name, "generation": doc.generation, "ended": change }),
        )
    }

    /// First phase of a change of primary (`kind`: switchover or failover) driven here: takes
    /// the fleet's lock and publishes the change, so that every instance holds new primary
    /// work. Returns its generation, for [`Link::acknowledged`].
    ///
    /// # Errors
    /// This instance is fenced or behind, etcd is not reached, or another change runs.
    pub async fn begin(&self, kind: &str, from: usize, target: usize, timeout: Duration) -> Result<u64, Failure> {
        if self.cluster.gate.hold().fenced || self.cluster.gate.lease_lost() {
            return Err(format!(
                "fleet: instance {:?} is fenced (its lease is not renewed): run the {kind} on an instance that is not",
                self.shared.instance
            ));
        }
        let (mut client, lease) = self.client()?;
        let ttl = self.shared.config.ttl;
        let (from_name, target_name) = (&self.cluster.backends[from].name, &self.cluster.backends[target].name);
        let value = json!({ "by": self.shared.instance, "kind": kind, "target": target_name, "since_ms": unix_ms() });
        let key = self.key("lock");
        let take = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value.to_string(), Some(PutOptions::new().with_lease(lease)))])
            .or_else([TxnOp::get(key.clone(), None)]);
        let taken = timed(ttl, client.txn(take)).await.map_err(|e| format!("fleet: {e}"))?;
        if !taken.succeeded() {
            let holder = lock(&self.state).lock.clone().unwrap_or_else(|| "another instance".into());
            return Err(format!(
                "fleet: a change of primary is already running ({holder}); wait for it to end and look at `status`"
            ));
        }
        let me = self.shared.instance.clone();
        let published = self
            .publish(|d| {
                if let Some(c) = &d.change {
                    return Err(format!("fleet: a {} to {} driven by {} is running", c.kind, c.target, c.by));
                }
                if d.primary != *from_name {
                    return Err(format!(
                        "fleet: this instance had not applied the fleet's routing yet (the primary is {}); try again",
                        d.primary
                    ));
                }
                d.change = Some(Change {
                    kind: kind.to_owned(),
                    by: me.clone(),
                    from: from_name.clone(),
                    target: target_name.clone(),
                    step: "hold".into(),
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                });
                Ok(())
            })
            .await;
        match published {
            Ok(doc) => Ok(doc.generation),
            Err(e) => {
                self.unlock().await;
                Err(e)
            }
        }
    }

    /// Waits until every live instance has acknowledged the hold of `generation` (an instance
    /// whose lease expires meanwhile is no longer waited for). Returns how many did.
    ///
    /// # Errors
    /// `deadline` passed first; the names of the instances still busy.
    pub async fn acknowledged(&self, generation: u64, deadline: Instant) -> Result<usize, Failure> {
        loop {
            let members = self.members().await?;
            let busy: Vec<&str> =
                members.iter().filter(|(_, m)| m.acked < generation).map(|(n, _)| n.as_str()).collect();
            if busy.is_empty() {
                return Ok(members.len());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "instance(s) {} still had primary work in flight at the deadline",
                    busy.join(", ")
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Records the step of the change driven here (`promote`: the point past which an instance
    /// taking over finishes it rather than rolling it back).
    ///
    /// # Errors
    /// etcd is not reached, or the change was taken over.
    pub async fn step(&self, step: &str) -> Result<(), Failure> {
        let me = self.shared.instance.clone();
        self.publish(|d| match &mut d.change {
            Some(c) if c.by == me => {
                c.step = step.to_owned();
                Ok(())
            }
            _ => Err("fleet: the change was taken over by another instance".into()),
        })
        .await?;
        // The lock must still be this session's: a session that ended (and its lease with it)
        // may see its change taken over once that lease expires.
        let (mut client, lease) = self.client()?;
        let got = timed(self.shared.config.ttl, client.get(self.key("lock"), None))
            .await
            .map_err(|e| format!("fleet: {e}"))?;
        if got.kvs().first().is_none_or(|kv| kv.lease() != lease) {
            return Err(
                "fleet: this instance lost the fleet's lock (its etcd session was renewed); nothing was promoted"
                    .into(),
            );
        }
        Ok(())
    }

    /// Second phase: publishes `primary` as the primary and ends the change driven here, then
    /// releases the lock; every instance releases its held work on this generation. With
    /// `None` the outcome is unknown: the change stays published for an instance to resolve
    /// from what the servers say. Retried in the background while etcd is not reached.
    pub async fn end(self: &Arc<Self>, primary: Option<usize>) -> Ended {
        let name = primary.map(|p| self.cluster.backends[p].name.clone());
        match self.finish(name.as_deref()).await {
            Ok(ended) => ended,
            Err(e) => {
                warn!(cluster = %self.cluster.config.name, error = %e, "fleet: the end of the change was not published; trying again");
                let link = Arc::clone(self);
                let until = Instant::now() + self.shared.config.ttl * 3;
                tokio::spawn(async move {
                    while Instant::now() < until {
                        tokio::time::sleep(RETRY).await;
                        if link.finish(name.as_deref()).await.is_ok() {
                            return;
                        }
                    }
                });
                Ended::Pending
            }
        }
    }

    /// [`Link::end`] of a change whose `target` this instance promoted (`conn` is a control
    /// connection to it). If the change was taken over meanwhile (this instance was stopped or
    /// cut off past its lease, and another rolled the change back, or the operator resolved it)
    /// and the fleet serves from another server, the target is a second writable server that
    /// nobody routes to: it is fenced again and deposed (never followed), and the change fails.
    ///
    /// # Errors
    /// The change was taken over to another primary: what became of the target.
    pub async fn end_promoted(self: &Arc<Self>, target: usize, conn: &mut ControlConn) -> Result<(), Failure> {
        let name = self.cluster.backends[target].name.clone();
        let Ended::TakenOver(primary) = self.end(Some(target)).await else { return Ok(()) };
        if primary == name {
            return Ok(());
        }
        let dialect = Dialect::of(self.cluster.config.protocol);
        let deadline = Instant::now() + self.cluster.config.connect_timeout;
        let fenced = crate::replication::within(deadline, conn.exec_all(dialect.fence)).await;
        self.cluster.backends[target].health.deposed.store(true, std::sync::atomic::Ordering::Relaxed);
        let what = match fenced {
            Ok(()) => format!(
                "{name} is fenced again and deposed (never followed; `rejoin` it once it streams from {primary})"
            ),
            Err(e) => format!("fencing {name} failed ({e}): fence it by hand; it is deposed, never followed"),
        };
        warn!(event = "fleet_change_lost", cluster = %self.cluster.config.name, target = %name, primary = %primary, what = %what,
            "fleet: the change driven here was taken over before its end was published");
        Err(format!(
            "fleet: the change was taken over while this instance was stopped or cut off past its lease (the fleet \
             serves from {primary}); {name} was promoted after that: {what}"
        ))
    }

    async fn finish(&self, primary: Option<&str>) -> Result<Ended, Failure> {
        let Some(name) = primary else {
            self.unlock().await;
            return Ok(Ended::Pending);
        };
        let me = &self.shared.instance;
        let mut theirs = None;
        let outcome = self
            .publish(|d| match &d.change {
                Some(c) if c.by == *me => {
                    d.change = None;
                    d.primary = name.to_owned();
                    Ok(())
                }
                _ => {
                    theirs = Some(d.primary.clone());
                    Err(TAKEN_OVER.into())
                }
            })
            .await;
        match outcome {
            Ok(doc) => {
                self.unlock().await;
                Ok(Ended::Published(doc.generation))
            }
            Err(e) if e == TAKEN_OVER => {
                // A lock still on this session's lease would hold off every later change.
                self.unlock().await;
                Ok(Ended::TakenOver(theirs.unwrap_or_default()))
            }
            Err(e) => Err(e),
        }
    }

    pub(super) async fn unlock(&self) {
        let Ok((mut client, lease)) = self.client() else { return };
        // Only a lock of this session's lease.
        let txn = Txn::new()
            .when([Compare::lease(self.key("lock"), CompareOp::Equal, lease)])
            .and_then([TxnOp::delete(self.key("lock"), None)]);
        let _ = timed(self.shared.config.ttl, client.txn(txn)).await;
    }

    /// A change is published and nobody holds the lock: its driver died.
    pub(super) fn orphaned(&self) -> bool {
        let st = lock(&self.state);
        st.lock.is_none() && st.doc.as_ref().is_some_and(|d| d.change.is_some())
    }

    /// Resolves a change whose driver died: finishes it when it reached `promote` and the
    /// target answers as a primary; rolls it back (unfences the old primary) when it did not
    /// reach `promote`, or the target is still a standby; leaves it held when the target does
    /// not answer (never a guess).
    pub(super) async fn take_over(self: Arc<Self>) {
        let Some(change) = lock(&self.state).doc.as_ref().and_then(|d| d.change.clone()) else { return };
        let Ok((mut client, lease)) = self.client() else { return };
        let key = self.key("lock");
        let value = json!({ "by": self.shared.instance, "kind": format!("takeover of the {} by {}", change.kind, change.by), "target": change.target, "since_ms": unix_ms() });
        let take = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, value.to_string(), Some(PutOptions::new().with_lease(lease)))]);
        if !timed(self.shared.config.ttl, client.txn(take)).await.is_ok_and(|r| r.succeeded()) {
            return;
        }
        let cluster = &self.cluster;
        let name = &cluster.config.name;
        let dialect = Dialect::of(cluster.config.protocol);
        let find = |n: &str| cluster.backends.iter().position(|b| b.name == n);
        let (Some(from), Some(target)) = (find(&change.from), find(&change.target)) else {
            warn!(cluster = %name, "fleet: the change names backends this instance does not have; left to another");
            self.unlock().await;
            return;
        };
        let deadline = Instant::now() + cluster.config.connect_timeout * 2;
        let role = |i: usize| async move {
            let to = cluster.control_target(i).ok_or("no monitor credentials")?;
            let mut conn = crate::replication::within(deadline, ControlConn::connect(&to, TAKEOVER)).await?;
            let role = crate::replication::within(deadline, conn.role(dialect)).await?;
            Ok::<_, String>((role, conn))
        };
        let forward = if change.step == "promote" {
            match role(target).await {
                Ok((Role::Writable | Role::ReadOnly | Role::Subscriber, mut conn)) => {
                    let _ = crate::replication::within(deadline, conn.exec_all(dialect.unfence)).await;
                    true
                }
                Ok(_) => false,
                Err(e) => {
                    warn!(cluster = %name, target = %change.target, error = %e, "fleet: the driver of the change is gone and its target does not answer: primary work stays held until it does");
                    self.unlock().await;
                    return;
                }
            }
        } else {
            false
        };
        if !forward {
            // The old primary takes writes again (if it answers; if not, it is as before).
            if let Ok((_, mut conn)) = role(from).await {
                if crate::replication::within(deadline, conn.exec_all(dialect.unfence)).await.is_ok() {
                    let _ = crate::replication::in_force(&mut conn, dialect, false, deadline).await;
                }
            }
        }
        let primary = if forward { &change.target } else { &change.from };
        let published = self
            .publish(|d| {
                if d.change.as_ref() != Some(&change) {
                    return Err("the change ended meanwhile".into());
                }
                d.change = None;
                d.primary.clone_from(primary);
                Ok(())
            })
            .await;
        let word = if forward { "finished" } else { "rolled back" };
        match published {
            Ok(doc) => {
                info!(event = "fleet_takeover", cluster = %name, kind = %change.kind, driver = %change.by, outcome = word, primary = %primary, generation = doc.generation, "fleet: the driver of a change of primary is gone; this instance {word} it");
            }
            Err(e) => warn!(cluster = %name, error = %e, "fleet: taking over the change failed"),
        }
        self.unlock().await;
    }
}
