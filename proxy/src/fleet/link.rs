//! A cluster's link to the fleet: its keys in etcd, joining, applying the routing document as
//! it changes, acknowledging a change of primary, and publishing changes made here.

use super::*;

impl Link {
    pub(super) fn key(&self, what: &str) -> String {
        format!("{}/{}/{what}", self.shared.config.prefix, self.cluster.config.name)
    }

    pub(super) fn member_key(&self) -> String {
        self.key(&format!("instances/{}", self.shared.instance))
    }

    pub(super) fn client(&self) -> Result<(Client, i64), Failure> {
        lock(&self.shared.session).clone().ok_or_else(|| {
            format!("fleet: etcd is not reached from instance {:?}; the routing was not changed", self.shared.instance)
        })
    }

    /// Reads the routing at joining (creating it from this instance's table when the fleet has
    /// none yet), the lock and the members; applies the routing. Returns etcd's revision.
    pub(super) async fn join(&self, client: &mut Client) -> Result<i64, String> {
        let ttl = self.shared.config.ttl;
        let key = self.key("routing");
        let initial = serde_json::to_string(&self.routing_of(&self.cluster.table.load(), 1)).unwrap_or_default();
        // Created only if absent: the first instance of a new fleet writes what it sees.
        let create = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), initial, None)]);
        timed(ttl, client.txn(create)).await.map_err(|e| format!("routing: {e}"))?;
        let prefix = format!("{}/{}/", self.shared.config.prefix, self.cluster.config.name);
        let all = timed(ttl, client.get(prefix, Some(GetOptions::new().with_prefix())))
            .await
            .map_err(|e| format!("routing: {e}"))?;
        {
            let mut st = lock(&self.state);
            // etcd may have been restored with lower revisions: what it has now is the truth.
            st.revision = 0;
            st.lock = None;
            st.instances.clear();
        }
        for kv in all.kvs() {
            self.event(&String::from_utf8_lossy(kv.key()), true, kv.value(), kv.mod_revision());
        }
        if lock(&self.state).doc.is_none() {
            return Err(format!("routing: {key} holds no routing sqlswitch can read"));
        }
        Ok(all.header().map_or(0, etcd_client::ResponseHeader::revision))
    }

    /// A key under the prefix changed.
    pub(super) fn event(&self, key: &str, put: bool, value: &[u8], revision: i64) {
        let Some(rest) = key.strip_prefix(&format!("{}/{}/", self.shared.config.prefix, self.cluster.config.name))
        else {
            return;
        };
        if rest == "routing" && put {
            match serde_json::from_slice::<Routing>(value) {
                Ok(doc) => self.apply(doc, revision),
                Err(e) => {
                    warn!(cluster = %self.cluster.config.name, error = %e, "fleet: the routing in etcd cannot be read; the last one stays")
                }
            }
        } else if rest == "lock" {
            lock(&self.state).lock = put.then(|| String::from_utf8_lossy(value).into_owned());
        } else if let Some(name) = rest.strip_prefix("instances/") {
            let mut st = lock(&self.state);
            if put {
                if let Ok(m) = serde_json::from_slice::<Member>(value) {
                    st.instances.insert(name.to_owned(), m);
                }
            } else {
                st.instances.remove(name);
            }
            self.metrics.instances.set(st.instances.len() as f64);
        }
    }

    /// The shared routing of `table`.
    pub(super) fn routing_of(&self, table: &RoutingTable, generation: u64) -> Routing {
        let draining = (0..self.cluster.backends.len())
            .filter(|i| table.states.get(*i) == Some(&BackendState::Draining))
            .map(|i| self.cluster.backends[i].name.clone())
            .collect();
        Routing {
            generation,
            primary: self.cluster.backends[table.primary].name.clone(),
            mode: mode_name(table.mode).to_owned(),
            detached: table.detached,
            draining,
            change: None,
        }
    }

    /// Applies a routing generation to the local table and gate (idempotent: an older or the
    /// same revision is ignored).
    pub(super) fn apply(&self, doc: Routing, revision: i64) {
        let mut st = lock(&self.state);
        if revision <= st.revision {
            return;
        }
        st.revision = revision;
        let cluster = &self.cluster;
        let primary = cluster.backends.iter().position(|b| b.name == doc.primary);
        if primary.is_none() {
            warn!(cluster = %cluster.config.name, primary = %doc.primary, "fleet: the routing names a primary this instance's config does not have; primary work is refused here until it names one this instance has");
        }
        let now = cluster.clock.now();
        let before = cluster.table.load().primary;
        let table = crate::cluster::change(cluster, |t| {
            if let Some(p) = primary {
                if cluster.backends[p].group_id != cluster.backends[t.primary].group_id {
                    t.since = now;
                }
                t.primary = p;
            }
            t.mode = if doc.mode == "read-only" { Mode::ReadOnly } else { Mode::ReadWrite };
            t.detached = doc.detached;
            for (i, state) in t.states.iter_mut().enumerate() {
                if *state != BackendState::Removed {
                    let drained = cluster.backends.at(i).is_some_and(|b| doc.draining.contains(&b.name));
                    *state = if drained { BackendState::Draining } else { BackendState::Enabled };
                }
            }
        });
        let holding = doc.change.is_some();
        if let Some(change) = &doc.change {
            // Held statements wait as long as the change may take, never forever.
            let ttl = self.shared.config.ttl;
            let limit = (Duration::from_millis(change.timeout_ms) + ttl * 2).max(ttl * 3);
            let micros = u64::try_from(limit.as_micros()).unwrap_or(u64::MAX);
            cluster.gate.fleet_hold_limit.store(micros, std::sync::atomic::Ordering::Relaxed);
        }
        let moved = primary.is_some_and(|p| p != before);
        if moved && !holding {
            // The fleet changed the primary: what this instance's monitor doubted (the old one
            // fenced, the new one not yet writable) is settled; it checks again at its next tick.
            lock(&cluster.discovery).problem = None;
        }
        cluster.gate.set(|h| {
            h.fleet = holding;
            h.foreign = primary.is_none();
            if moved && !holding {
                h.doubt = false;
            }
        });
        if holding && st.acked < doc.generation {
            // Acknowledged once this instance's primary work in flight has finished.
            let generation = doc.generation;
            let link = super::link_of(&self.cluster);
            tokio::spawn(async move {
                if let Some(link) = link {
                    link.acknowledge(generation).await;
                }
            });
        }
        info!(
            event = "fleet_routing",
            cluster = %cluster.config.name,
            generation = doc.generation,
            primary = %doc.primary,
            mode = %doc.mode,
            change = ?doc.change.as_ref().map(|c| (&c.kind, &c.target, &c.step)),
            table = table.generation,
            "fleet: routing applied"
        );
        self.metrics.generation.set(doc.generation as f64);
        st.doc = Some(doc);
        drop(st);
        let link = super::link_of(&self.cluster);
        tokio::spawn(async move {
            if let Some(link) = link {
                link.report().await;
            }
        });
    }

    /// Waits until no primary work of this instance is in flight, then says so in etcd.
    pub(super) async fn acknowledge(&self, generation: u64) {
        loop {
            if lock(&self.state).doc.as_ref().is_none_or(|d| d.change.is_none()) {
                return;
            }
            if self.cluster.gate.primary_busy.load(Ordering::SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        {
            let mut st = lock(&self.state);
            st.acked = st.acked.max(generation);
        }
        self.report().await;
    }

    /// Writes this instance's member key (on its lease).
    pub(super) async fn report(&self) {
        let Ok((mut client, lease)) = self.client() else { return };
        let member = {
            let st = lock(&self.state);
            Member {
                generation: st.doc.as_ref().map_or(0, |d| d.generation),
                acked: st.acked,
                fenced: self.cluster.gate.hold().fenced,
                renewed_ms: self.shared.renewed_ms.load(Ordering::Relaxed),
                ttl_ms: crate::metrics::millis(self.shared.config.ttl),
            }
        };
        let value = serde_json::to_string(&member).unwrap_or_default();
        let put = client.put(self.member_key(), value, Some(PutOptions::new().with_lease(lease)));
        if let Err(e) = timed(self.shared.config.ttl / 4, put).await {
            warn!(cluster = %self.cluster.config.name, error = %e, "fleet: could not write this instance's key");
        }
    }

    /// Changes the shared routing by compare-and-swap on its revision (again on a conflict),
    /// and applies the result here at once. `edit` may refuse.
    pub(super) async fn publish(
        &self,
        mut edit: impl FnMut(&mut Routing) -> Result<(), Failure>,
    ) -> Result<Routing, Failure> {
        let (mut client, _) = self.client()?;
        let ttl = self.shared.config.ttl;
        let key = self.key("routing");
        for _ in 0..20 {
            let got = timed(ttl, client.get(key.clone(), None)).await.map_err(|e| format!("fleet: {e}"))?;
            let Some(kv) = got.kvs().first() else { return Err(format!("fleet: {key} is missing in etcd")) };
            let doc: Routing = serde_json::from_slice(kv.value()).map_err(|e| format!("fleet: {key}: {e}"))?;
            let mut next = doc.clone();
            edit(&mut next)?;
            if next == doc {
                return Ok(doc);
            }
            next.generation = doc.generation + 1;
            let value = serde_json::to_string(&next).map_err(|e| e.to_string())?;
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision())])
                .and_then([TxnOp::put(key.clone(), value, None)]);
            let done = timed(ttl, client.txn(txn)).await.map_err(|e| format!("fleet: {e}"))?;
            if done.succeeded() {
                let revision = done.header().map_or(0, etcd_client::ResponseHeader::revision);
                self.apply(next.clone(), revision);
                return Ok(next);
            }
        }
        Err("fleet: the routing kept changing under this change; try again".into())
    }

    /// `mode`, `detach`/`attach`, `drain`/`enable` in fleet mode: published, then waited for on
    /// every live instance (up to a few seconds). Returns the answer's fleet part.
    pub async fn change(&self, edit: impl Fn(&mut Routing) + Send) -> Result<Value, Failure> {
        let at = Instant::now();
        let doc = self
            .publish(|d| {
                if let Some(c) = &d.change {
                    return Err(format!(
                        "fleet: a {} to {} driven by {} is running; try again after it",
                        c.kind, c.target, c.by
                    ));
                }
                edit(d);
                Ok(())
            })
            .await?;
        let (applied, live) = self.wait_applied(doc.generation, Instant::now() + PROPAGATION).await;
        Ok(json!({
            "generation": doc.generation,
            "applied_by": applied,
            "instances": live,
            "propagation_ms": at.elapsed().as_secs_f64() * 1000.0,
        }))
    }

    /// Waits until every live instance applies `generation` (or `deadline`); returns how many
    /// do, and how many are live.
    pub(super) async fn wait_applied(&self, generation: u64, deadline: Instant) -> (usize, usize) {
        loop {
            let members = self.members().await.unwrap_or_default();
            let applied = members.values().filter(|m| m.generation >= generation).count();
            if applied == members.len() || Instant::now() >= deadline {
                return (applied, members.len());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Every live instance's key, read from etcd.
    pub(super) async fn members(&self) -> Result<BTreeMap<String, Member>, Failure> {
        let (mut client, _) = self.client()?;
        let prefix = self.key("instances/");
        let got = timed(self.shared.config.ttl, client.get(prefix.clone(), Some(GetOptions::new().with_prefix())))
            .await
            .map_err(|e| format!("fleet: {e}"))?;
        Ok(got
            .kvs()
            .iter()
            .filter_map(|kv| {
                let name = String::from_utf8_lossy(kv.key()).strip_prefix(&prefix)?.to_owned();
                Some((name, serde_json::from_slice(kv.value()).ok()?))
            })
            .collect())
    }

    /// The monitor found that `primary` alone takes writes, judging against `was` as the
    /// primary: the fleet follows (unless a change of primary is in progress, which publishes
    /// its own outcome). A compare-and-swap on `was`: if the fleet's primary is another by now
    /// (an instance that sees the servers differently followed first), nothing is published,
    /// so two instances with asymmetric reachability cannot flip the fleet back and forth.
    pub async fn follow(&self, was: usize, primary: usize) {
        let name = self.cluster.backends[primary].name.clone();
        let was_name = self.cluster.backends[was].name.clone();
        let outcome = self
            .publish(|d| {
                if d.change.is_some() {
                    return Err("a change of primary is in progress".into());
                }
                if d.primary != was_name {
                    return Err(format!("the fleet's primary is {} now, not {was_name}", d.primary));
                }
                d.primary.clone_from(&name);
                Ok(())
            })
            .await;
        if let Err(e) = outcome {
            warn!(cluster = %self.cluster.config.name, primary = %name, error = %e, "fleet: the primary the servers name was not published (the monitor tries again)");
        }
    }

    /// The fleet's part of `status`.
    pub fn status(&self) -> Value {
        let st = lock(&self.state);
        let now = unix_ms();
        let gate = &self.cluster.gate;
        let left = gate.lease_until.load(Ordering::Relaxed).saturating_sub(crate::gate::now_micros()) / 1000;
        let instances: Vec<Value> = st
            .instances
            .iter()
            .map(|(name, m)| {
                json!({
                    "name": name,
                    "generation": m.generation,
                    "acked": m.acked,
                    "fenced": m.fenced,
                    "lease_left_ms": (m.renewed_ms + m.ttl_ms).saturating_sub(now),
                })
            })
            .collect();
        json!({
            "instance": self.shared.instance,
            "generation": st.doc.as_ref().map(|d| d.generation),
            "fenced": gate.hold().fenced || gate.lease_lost(),
            // The fleet's primary, when this instance's config does not have it.
            "foreign_primary": st.doc.as_ref().map(|d| &d.primary).filter(|_| gate.hold().foreign),
            "lease_left_ms": left,
            "change": st.doc.as_ref().and_then(|d| d.change.clone()),
            "lock": st.lock,
            "instances": instances,
        })
    }
}
