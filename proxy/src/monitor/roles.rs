//! Following the servers: every backend is asked its role, and the routing table follows
//! the one server that takes writes, or stays as it is while the servers disagree.

use super::*;

impl Monitor {
    /// Follows the servers: the config's `role` is a starting hint, the servers are the truth.
    /// Every backend is asked what it is ([`Role`]), all at once. When exactly one takes writes
    /// and follows no other, it is the primary: a switchover or failover that happened while
    /// sqlswitch was down, or one made by other tooling (Patroni, repmgr, orchestrator, by
    /// hand) while it runs, is followed. When none or several do, the routing table stays as it
    /// is, and `status`, the log and the metrics say why ("no primary", "split brain"): never a
    /// guess. The servers are asked without holding the cluster's change lock (an unreachable
    /// one may take `connect_timeout`); the answers are acted on only if no switchover or
    /// other change happened meanwhile.
    pub(super) async fn follow_the_servers(&mut self) {
        let cluster = Arc::clone(&self.cluster);
        if cluster.changing.try_lock().is_err() {
            return; // a switchover or failover runs: it changes the primary itself
        }
        let dialect = Dialect::of(cluster.config.protocol);
        let table = cluster.table.load_full();
        let current = table.primary;
        let Roles { mut writable, elsewhere, roles, answered } = self.ask_roles(&cluster, &table, dialect).await;
        let name = |i: usize| cluster.backends.at(i).map_or("?", |b| b.name.as_str()).to_owned();
        let unknown: Vec<String> = roles
            .iter()
            .zip(&answered)
            .enumerate()
            .filter(|(_, (_, ok))| !**ok)
            .map(|(i, (r, _))| format!("{}: {r}", name(i)))
            .collect();
        // Act only on answers that still describe the table: a change that landed while they
        // were asked (a switchover) makes them stale.
        let Ok(_changing) = cluster.changing.try_lock() else { return };
        if cluster.table.load().generation != table.generation {
            return;
        }
        // The serving group has no writable server and every one of it answered (a fenced old
        // primary after an upgrade cutover, when sqlswitch restarts with the old group listed
        // first), and exactly one server of another group takes writes: that group serves.
        let group_answered = answered.iter().enumerate().all(|(i, ok)| *ok || !cluster.in_active_group(&table, i));
        if let ([], [only], true) = (writable.as_slice(), elsewhere.as_slice(), group_answered) {
            let only = *only;
            let since = cluster.clock.now();
            // A fleet follows together (the group's activation time is set as it applies).
            let table = cluster.store().follow(&cluster, current, only, Some(since)).await;
            cluster.metrics.role_changes.increment(1);
            info!(
                event = "role_change",
                cluster = %cluster.config.name,
                primary = %name(only),
                group = %cluster.backends[only].group,
                was = %name(current),
                generation = table.generation,
                "no server of the serving group takes writes and one of another group does (an upgrade cutover \
                 done before a restart): that group serves now"
            );
            writable.push(only);
        }
        let current = cluster.table.load().primary;
        // Deposed primaries are never followed: their history may have diverged.
        let deposed = |i: &usize| cluster.backends.at(*i).is_some_and(|b| b.health.deposed.load(Ordering::Relaxed));
        let (stale, writable): (Vec<usize>, Vec<usize>) = writable.into_iter().partition(deposed);
        // Another server is followed only when the primary is known not to take writes (it
        // answered: fenced, or a replica now), or has been silent for several rounds.
        let primary_answered = answered.get(current).copied().unwrap_or(false);
        self.silent_rounds = if primary_answered { 0 } else { self.silent_rounds.saturating_add(1) };
        // A silent primary may have acknowledged writes: another server is followed only if it
        // replayed the primary's last sample (`failover` accepts a loss; following never does).
        let covers = |i: usize| {
            let last = self.acknowledged.get(cluster.backends[i].group_id).and_then(Option::as_ref);
            match (last, self.replayed.get(i).and_then(Option::as_ref)) {
                (None, _) => true,
                // PostgreSQL: a standby that lost its primary streams nothing (timeline 0 in
                // its samples): its WAL position alone says what it has of the old timeline.
                (Some(last), Some(pos)) if !dialect.whole_records => pos.total() >= last.total(),
                (Some(last), Some(pos)) => pos.covers(last),
                (Some(_), None) => false,
            }
        };
        let problem = match writable.as_slice() {
            [only] if *only == current && stale.is_empty() => None,
            [only] if *only == current => Some(Problem::Deposed(stale.iter().map(|i| name(*i)).collect())),
            [only] if !primary_answered && self.silent_rounds < SILENT_ROUNDS => {
                Some(Problem::Waiting { candidate: name(*only), lacks_writes: false })
            }
            [only] if !primary_answered && !covers(*only) => {
                Some(Problem::Waiting { candidate: name(*only), lacks_writes: true })
            }
            [only] => {
                let only = *only;
                let table = cluster.store().follow(&cluster, current, only, None).await;
                cluster.metrics.role_changes.increment(1);
                info!(
                    event = "role_change",
                    cluster = %cluster.config.name,
                    primary = %name(only),
                    was = %name(current),
                    generation = table.generation,
                    unanswered = ?unknown,
                    "the servers say another backend is the primary (it alone takes writes): following them"
                );
                None
            }
            [] if !stale.is_empty() => Some(Problem::OnlyDeposed(stale.iter().map(|i| name(*i)).collect())),
            // The primary did not answer the monitor (down, or the monitor cannot log in).
            [] if !answered.get(current).copied().unwrap_or(false) => Some(Problem::PrimaryUnknown(name(current))),
            [] => Some(Problem::NoPrimary),
            several => Some(Problem::SplitBrain(several.iter().map(|i| name(*i)).collect())),
        };
        record(&cluster, problem, writable.len(), roles, &unknown);
    }

    /// Asks every live backend its role at once (a control connection each, kept for the
    /// monitor's checks); `current` is the routing table's primary.
    async fn ask_roles(
        &mut self,
        cluster: &Arc<Cluster>,
        table: &crate::cluster::RoutingTable,
        dialect: &Dialect,
    ) -> Roles {
        let current = table.primary;
        // The connections stay open for the monitor's own checks that follow.
        self.conns.resize_with(cluster.backends.len(), || None);
        let live = |i: usize| table.states.get(i).is_some_and(|s| *s != crate::cluster::BackendState::Removed);
        let asks = self.conns.iter_mut().enumerate().map(|(i, slot)| async move {
            if !live(i) {
                return Err("removed".to_owned());
            }
            let conn = connected(slot, cluster, i).await.map_err(|e| e.text)?;
            let answer = tokio::time::timeout(cluster.config.connect_timeout, conn.role(dialect)).await;
            let answer = answer.unwrap_or(Err("timed out".into()));
            if answer.is_err() {
                *slot = None;
            }
            answer
        });
        let answers = futures::future::join_all(asks).await;
        let mut writable = Vec::new();
        // Writable servers of other groups (a new cluster whose subscription was disabled).
        let mut elsewhere = Vec::new();
        let mut roles = Vec::new();
        let mut answered = Vec::new();
        for (i, answer) in answers.into_iter().enumerate() {
            answered.push(answer.is_ok());
            match answer {
                Ok(role) => {
                    // A logical subscriber is an upgrade target, not a second primary; once a
                    // switchover made it the primary, it is the one that takes writes. Another
                    // group's servers are another cluster: they never count.
                    let ours = matches!(role, Role::Subscriber | Role::Stopped) && i == current;
                    let serving = cluster.in_active_group(table, i);
                    if serving && (role == Role::Writable || ours) {
                        writable.push(i);
                    } else if !serving && role == Role::Writable {
                        elsewhere.push(i);
                    }
                    if let Some(b) = cluster.backends.at(i) {
                        b.health.follows_none.store(role != Role::Replica, Ordering::Relaxed);
                        if role == Role::Replica && b.health.deposed.swap(false, Ordering::Relaxed) {
                            info!(event = "rejoined", cluster = %cluster.config.name, backend = %b.name,
                                "a deposed primary streams from a primary again: it may be followed again");
                        }
                    }
                    roles.push(role.name().to_owned());
                }
                Err(e) => roles.push(format!("unknown: {e}")),
            }
        }
        Roles { writable, elsewhere, roles, answered }
    }
}

/// What the servers said about their roles, asked all at once.
struct Roles {
    /// The serving group's servers that take writes (a logical subscriber that is the primary
    /// counts).
    writable: Vec<usize>,
    /// Other groups' servers that take writes.
    elsewhere: Vec<usize>,
    /// Each backend's role, or why it is unknown.
    roles: Vec<String>,
    /// Which backends answered.
    answered: Vec<bool>,
}

/// Records the outcome of a role round: the servers' disagreement (`problem`), logged when
/// it changes, holds primary work while it lasts; the gauges of how many take writes.
fn record(cluster: &Cluster, problem: Option<Problem>, writable: usize, roles: Vec<String>, unknown: &[String]) {
    let name = |i: usize| cluster.backends.at(i).map_or("?", |b| b.name.as_str()).to_owned();
    // While the servers disagree, primary work waits (and is refused after a while): never
    // a write on a server that may not be the primary.
    let doubt = problem.as_ref().is_some_and(Problem::holds);
    let mut seen = cluster.discovery.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if problem.is_some() && problem != seen.problem {
        warn!(
            event = "primary_doubt",
            cluster = %cluster.config.name,
            primary = %name(cluster.table.load().primary),
            unanswered = ?unknown,
            primary_work_waits = doubt,
            "{}: the routing table stays as it is",
            problem.as_ref().map(ToString::to_string).unwrap_or_default()
        );
    } else if problem.is_none() && seen.problem.is_some() {
        info!(event = "primary_agreed", cluster = %cluster.config.name, primary = %name(cluster.table.load().primary), "exactly one backend takes writes again");
    }
    if cluster.gate.hold().doubt != doubt {
        cluster.gate.set(|h| h.doubt = doubt);
    }
    cluster.metrics.primary_known.set(if writable == 1 { 1.0 } else { 0.0 });
    cluster.metrics.split_brain.set(if writable > 1 { 1.0 } else { 0.0 });
    seen.roles = roles;
    seen.problem = problem;
}
