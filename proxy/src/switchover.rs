//! Zero-downtime switchover (README, "How to switch over"), for PostgreSQL and MariaDB: hold new primary
//! work, let in-flight primary work finish, fence the old primary, wait for every other
//! transaction there to end, read its final position, wait for the target to replay it,
//! promote it (or check it is already writable), swap the routing table, release, then re-point
//! the other replicas ([`crate::repoint`]). One switchover (or role change) per cluster at a
//! time. A failure before the promotion undoes the fence, resumes on the old primary and
//! changes nothing; after it, the cluster serves from what the servers say, and the answer says
//! which server is writable.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing::{info, warn};

use crate::backend::BackendError;
use crate::change::Change;
use crate::cluster::Cluster;
use crate::control::{change, millis, Control, Failure};
use crate::replication::{ControlConn, Dialect, Role};
use sqlswitch_config::Fence;

/// One completed step, for the live report.
#[derive(Debug, Clone)]
pub struct Step {
    /// Its name: hold, drain, fence, writers, catch_up, promote, swap, release, repoint.
    pub name: &'static str,
    /// How long it took.
    pub took: Duration,
    /// What it found or did.
    pub detail: String,
}

impl Step {
    /// As one JSON progress line.
    pub fn json(&self) -> Value {
        json!({ "progress": self.value() })
    }

    /// As an entry of the answer's `steps`.
    pub fn value(&self) -> Value {
        json!({ "step": self.name, "ms": self.took.as_secs_f64() * 1000.0, "detail": self.detail })
    }
}

/// How to switch over.
#[derive(Debug, Clone, Copy)]
pub struct How {
    /// Promote a target that is a standby.
    pub promote: bool,
    /// Re-point the other replicas at the new primary (needs `replication` credentials).
    pub repoint: bool,
    /// Deadline for everything up to the release.
    pub timeout: Duration,
    /// Cut over to a logical-replication subscriber even though `upgrade-check` finds what
    /// would break.
    pub force: bool,
    /// After a cutover to a logical subscriber, create the way back before releasing clients
    /// (needs `replication` credentials).
    pub reverse: bool,
}

impl How {
    /// A switchover that promotes a standby target and re-points the replicas, within
    /// `timeout`: what `switchover CLUSTER BACKEND promote timeout=...` asks for.
    pub const fn promoting(timeout: Duration) -> Self {
        Self { promote: true, repoint: true, timeout, force: false, reverse: false }
    }
}

/// Switches `cluster_name`'s primary to `target_name`. `report` sees each step as it completes.
///
/// # Errors
/// The step that failed and why, and which server takes writes now.
pub async fn run(
    control: &Control,
    cluster_name: &str,
    target_name: &str,
    how: How,
    report: &mut (dyn FnMut(&Step) + Send),
) -> Result<Value, Failure> {
    let cluster: Arc<Cluster> = Arc::clone(control.cluster(cluster_name)?);
    let target = Control::backend(&cluster, target_name)?;
    // One change of primary at a time: a second switchover is refused at once.
    let Some(_changing) = change_lock(&cluster, "switchover").await else {
        let so_far = lock(&cluster.progress).clone();
        return Err(format!(
            "a switchover of {cluster_name:?} is already running ({so_far}); wait for it to end and look at `status`"
        ));
    };
    let old = cluster.table.load().primary;
    if old == target {
        return Err(format!("{target_name:?} is already the primary of {cluster_name:?}"));
    }
    let (Some(old_target), Some(new_target)) = (cluster.control_target(old), cluster.control_target(target)) else {
        return Err(format!(
            "cluster {cluster_name:?} has no monitor credentials: a switchover needs them to fence and promote"
        ));
    };
    let dialect = Dialect::of(cluster.config.protocol);
    let timeout = how.timeout;
    let deadline = Instant::now() + timeout;
    let held_before = cluster.gate.held_total.load(Ordering::Relaxed);
    let mut steps: Vec<Step> = Vec::new();
    // A step done (recorded in the answer), or one still going (`None`: reported only).
    let mut done = |steps: Option<&mut Vec<Step>>, name, at: Instant, detail: String| {
        let step = Step { name, took: at.elapsed(), detail };
        report(&step);
        let Some(steps) = steps else { return };
        info!(event = "switchover_step", cluster = %cluster_name, step = name, ms = step.took.as_secs_f64() * 1000.0, detail = %step.detail, "switchover step");
        let mut progress = lock(&cluster.progress);
        if !progress.is_empty() {
            progress.push_str(", ");
        }
        progress.push_str(&format!("{name} done"));
        steps.push(step);
    };

    // Connections first, so an unreachable server fails the switchover before anything is held.
    let old_name = cluster.backends[old].name.clone();
    let mut old_conn =
        ControlConn::connect(&old_target, APPLICATION).await.map_err(|e| fail("connect", &old_name, &e))?;
    let mut new_conn =
        ControlConn::connect(&new_target, APPLICATION).await.map_err(|e| fail("connect", target_name, &e))?;
    // A target is a standby by its replication status, not by a read-only setting: a MariaDB
    // replica often runs with `read_only = 0`, and must still catch up before writes move.
    // One with a stopped replication channel is waited for too (and times out cleanly if it
    // never catches up).
    let target_role =
        within(deadline, new_conn.role(dialect)).await.map_err(|e| format!("connect: {target_name}: {e}"))?;
    let standby = matches!(target_role, Role::Replica | Role::Stopped);
    if standby && !how.promote {
        return Err(format!("promote: {target_name} is a standby; add `promote`, or promote it first"));
    }
    // Another group's primary, or a logical subscriber: an upgrade cutover, checked first.
    let cross_group = cluster.backends[target].group_id != cluster.backends[old].group_id;
    let mut subscriptions = Vec::new();
    if dialect.logical && !standby {
        let sides = crate::upgrade::Sides { cluster: &cluster, old, target, deadline };
        let check = crate::upgrade::check(&sides).await.map_err(|e| format!("upgrade-check: {e}"))?;
        if cross_group || !check.subscriptions.is_empty() {
            let losses: Vec<&str> = check.losses().iter().map(|f| f.what.as_str()).collect();
            if !losses.is_empty() {
                return Err(format!(
                    "upgrade-check: the cutover to {target_name} would lose data, nothing was changed (`force` does \
                     not override this): {} (`upgrade-check {cluster_name} {target_name}` says what to do)",
                    losses.join("; ")
                ));
            }
            let blocking: Vec<&str> = check.blocking().iter().map(|f| f.what.as_str()).collect();
            if !blocking.is_empty() && !how.force {
                return Err(format!(
                    "upgrade-check: the cutover to {target_name} would break, nothing was changed: {} \
                     (`upgrade-check {cluster_name} {target_name}` says what to do; `force` cuts over anyway)",
                    blocking.join("; ")
                ));
            }
            if let (true, Some(why)) = (how.reverse, &check.no_reverse) {
                return Err(format!("reverse: the way back cannot be created, nothing was changed: {why}"));
            }
            // Only running subscriptions can be waited for (`force` past a disabled one).
            subscriptions = check.subscriptions.into_iter().filter(|s| s.enabled).collect();
        }
    }
    let logical = !subscriptions.is_empty();
    if logical && !cross_group {
        // The old primary's standbys would stay in the serving group, following a fenced
        // primary: their positions are not comparable with the new primary's, and their reads
        // would be stale for good.
        let group = cluster.backends[old].group_id;
        let table = cluster.table.load();
        let others: Vec<&str> = cluster
            .backends
            .iter()
            .enumerate()
            .filter(|(i, b)| *i != old && *i != target && b.group_id == group)
            .filter(|(i, _)| table.states.get(*i).is_some_and(|s| *s != crate::cluster::BackendState::Removed))
            .map(|(_, b)| b.name.as_str())
            .collect();
        if !others.is_empty() {
            return Err(format!(
                "{target_name} is a logical-replication subscriber in the serving group, beside {}: put it (and \
                 its own standbys) in a group of its own (`group = \"new\"` in its [[cluster.backend]]) and reload; \
                 nothing was changed",
                others.join(", ")
            ));
        }
    }
    if how.reverse && !logical {
        return Err(format!(
            "reverse: {target_name} is not a logical-replication subscriber of {}",
            cluster.backends[old].name
        ));
    }
    let reverse_as = match (how.reverse, cluster.config.replication.clone()) {
        (true, None) => {
            return Err(
                "reverse: the cluster has no `replication` credentials for the old primary to subscribe with".into()
            )
        }
        (true, creds) => creds,
        (false, _) => None,
    };

    // 1. Hold new primary work; replica reads go on. Clients' pause starts here. In fleet
    // mode, on every instance: the change is published and each holds.
    let at = Instant::now();
    let change = Change::begin(&cluster, "switchover", old, target, how.timeout).await?;
    let detail = match change.generation() {
        Some(g) => {
            format!("new primary work waits on every instance of the fleet (generation {g}); replica reads continue")
        }
        None => "new primary work waits; replica reads continue".into(),
    };
    done(Some(&mut steps), "hold", at, detail);

    let mut promoted = false;
    let mut disabled: Vec<crate::upgrade::Subscription> = Vec::new();
    let outcome = async {
        // 2. Let in-flight primary work finish (in fleet mode, each instance says when its own
        // has; one whose lease expires is no longer waited for).
        let at = Instant::now();
        if let Some(instances) = change.acknowledged(deadline).await? {
            done(Some(&mut steps), "acknowledged", at, format!("{instances} instance(s) hold, with no primary work in flight"));
        }
        let at = Instant::now();
        loop {
            let busy = cluster.gate.primary_busy.load(Ordering::SeqCst);
            if busy == 0 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!("drain: {busy} session(s) still had primary work in flight after {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        done(Some(&mut steps), "drain", at, "no primary work in flight".into());

        // 3. Fence the old primary, and see the fence in force (PostgreSQL's reload only signals).
        let at = Instant::now();
        within(deadline, old_conn.exec_all(dialect.fence)).await.map_err(|e| format!("fence: {old_name}: {e}"))?;
        in_force(&mut old_conn, dialect, true, deadline).await.map_err(|e| format!("fence: {old_name}: {e}"))?;
        done(Some(&mut steps), "fence", at, format!("{old_name} refuses new writes"));

        // 4. Every transaction that could still commit on the old primary ends (sessions that
        // did not come through sqlswitch, or users the fence does not stop).
        let at = Instant::now();
        let (ended, not_ended) = if cluster.config.fence == Fence::Terminate {
            end_other_sessions(&mut old_conn, dialect, deadline)
                .await
                .map_err(|e| format!("writers: {old_name}: {e}"))?
        } else {
            (0, None)
        };
        let mut open = String::from("?");
        loop {
            match within(deadline, old_conn.value(dialect.open_writers)).await {
                Ok(n) if n == "0" => break,
                Ok(n) => open = n,
                Err(e) if Instant::now() < deadline => return Err(format!("writers: {old_name}: {e}")),
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                let hint = match &not_ended {
                    Some(e) => format!("ending them failed: {e}"),
                    None if cluster.config.fence == Fence::Terminate => "they were ended and still run".to_owned(),
                    None => "fence = \"terminate\" ends them".to_owned(),
                };
                return Err(format!(
                    "writers: {open} other transaction(s) still open on {old_name} after {timeout:?} ({hint})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let detail = match ended {
            0 => "no other transaction open".to_owned(),
            n => format!("ended {n} other session(s) (fence = \"terminate\"); no other transaction open"),
        };
        done(Some(&mut steps), "writers", at, detail);

        // 5. Read the final position, and wait until the target has applied it (a target that
        // is already writable, such as a logical-replication subscriber, has no comparable
        // position).
        let at = Instant::now();
        let final_text =
            within(deadline, old_conn.value(dialect.position)).await.map_err(|e| format!("catch_up: {e}"))?;
        let final_pos = dialect
            .primary_position(&final_text)
            .ok_or_else(|| format!("catch_up: cannot compare position {final_text:?}"))?;
        if logical {
            let final_lsn = final_pos.total();
            let mut reported = Instant::now();
            let mut behind = final_lsn;
            loop {
                let now = crate::upgrade::caught_up(&mut old_conn, &mut new_conn, &subscriptions, final_lsn, deadline);
                match now.await {
                    Ok(0) => break,
                    Ok(n) => behind = n,
                    Err(e) if Instant::now() < deadline => return Err(format!("catch_up: {e}")),
                    Err(_) => {}
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "catch_up: the subscription(s) of {target_name} still had {behind} bytes of {final_text} to apply after {timeout:?}"
                    ));
                }
                if reported.elapsed() >= PROGRESS_EVERY {
                    reported = Instant::now();
                    done(None, "catch_up", at, format!("{behind} bytes still to apply"));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let names: Vec<&str> = subscriptions.iter().map(|s| s.name.as_str()).collect();
            done(Some(&mut steps), "catch_up", at, format!("{target_name} applied {final_text} ({})", names.join(", ")));

            // Sequences are not replicated: copy each value, and then stop the subscriptions.
            let at = Instant::now();
            let sides = crate::upgrade::Sides { cluster: &cluster, old, target, deadline };
            let mut set = 0;
            let mut news = Vec::new();
            for database in crate::upgrade::databases(&subscriptions) {
                let (mut old_db, mut new_db) = sides.connect(database).await.map_err(|e| format!("sequences: {e}"))?;
                set += crate::upgrade::sync_sequences(&mut old_db, &mut new_db, cluster.config.sequence_margin, deadline)
                    .await
                    .map_err(|e| format!("sequences: {database}: {e}"))?;
                news.push((database, new_db));
            }
            let margin = cluster.config.sequence_margin;
            done(Some(&mut steps), "sequences", at, format!("{set} sequence(s) set on {target_name} (sequence_margin {margin})"));
            let at = Instant::now();
            // The point of no return: an instance taking over from here finishes the cutover.
            change.promoting().await?;
            for sub in &subscriptions {
                let Some((_, new_db)) = news.iter_mut().find(|(d, _)| *d == sub.database) else { continue };
                crate::upgrade::set_enabled(new_db, sub, false, deadline)
                    .await
                    .map_err(|e| format!("subscription: {}: {e}", sub.name))?;
                disabled.push(sub.clone());
            }
            done(Some(&mut steps), "subscription", at, format!("disabled {} on {target_name}", names.join(", ")));
        } else if standby {
            loop {
                let text =
                    within(deadline, new_conn.value(dialect.replayed)).await.map_err(|e| format!("catch_up: {e}"))?;
                let replayed = dialect
                    .primary_position(&text)
                    .ok_or_else(|| format!("catch_up: cannot compare position {text:?}"))?;
                if replayed.covers(&final_pos) {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!("catch_up: {target_name} applied {text} of {final_text} within {timeout:?}"));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            done(Some(&mut steps), "catch_up", at, format!("{target_name} applied {final_text}"));
        } else {
            done(Some(&mut steps), "catch_up", at, format!("{target_name} is not a standby: nothing to apply"));
        }

        // 6. Promote, or check it is already writable; either way, clear any fence of ours.
        let at = Instant::now();
        change.promoting().await?;
        if standby {
            promoted = true;
            within(deadline, new_conn.exec_all(dialect.promote))
                .await
                .map_err(|e| format!("promote: {target_name}: {e}"))?;
        }
        within(deadline, new_conn.exec_all(dialect.unfence))
            .await
            .map_err(|e| format!("promote: {target_name}: {e}"))?;
        // Lifted for every session of the target (a fenced target: switching back after an
        // upgrade cutover), before any client is released to it.
        in_force(&mut new_conn, dialect, false, deadline).await.map_err(|e| format!("promote: {target_name}: {e}"))?;
        let role = within(deadline, new_conn.role(dialect)).await.map_err(|e| format!("promote: {e}"))?;
        // A logical subscriber (an upgrade target) takes writes with its subscription running.
        if !matches!(role, Role::Writable | Role::Subscriber) {
            return Err(format!("promote: {target_name} is {} after promotion, not writable", role.name()));
        }
        let what = if standby { "promoted" } else if logical { "takes writes (subscription disabled)" } else { "already writable" };
        done(Some(&mut steps), "promote", at, format!("{target_name} {what}"));
        Ok(final_pos)
    }
    .await;

    if let Err(why) = outcome {
        let why = enable_again(&cluster, old, target, &disabled, why).await;
        let (answer, known) = recover(&cluster, &mut old_conn, &mut new_conn, old, target, promoted, &why).await;
        // The fleet serves from the same primary as this instance; when nobody can tell, the
        // change stays published and an instance resolves it from what the servers say.
        change.abandon(known.then(|| cluster.table.load().primary)).await;
        return Err(answer);
    }

    // The way back, while clients are still held: from their first write on, the old primary
    // subscribes to the new one. A failure here leaves the cutover as it is, and is reported.
    let reverse = match &reverse_as {
        Some(creds) => {
            let at = Instant::now();
            let sides = crate::upgrade::Sides { cluster: &cluster, old, target, deadline };
            let outcome = crate::upgrade::create_reverse(&sides, &subscriptions, creds).await;
            let detail = match &outcome {
                Ok(created) => format!("created {}", created.join(", ")),
                Err(e) => {
                    warn!(cluster = %cluster_name, error = %e, "the way back was not created");
                    format!("NOT created: {e}")
                }
            };
            done(Some(&mut steps), "reverse", at, detail.clone());
            json!({ "ok": outcome.is_ok(), "detail": detail })
        }
        None => Value::Null,
    };

    // 7. Swap the routing table.
    let at = Instant::now();
    // A new group serves from now on: its replicas serve reads once they have replayed a
    // position of the new primary sampled after this moment.
    let now = cluster.clock.now();
    // 8. ... and release held work to the new primary (exactly one server takes writes now).
    let (table, pause) = change.commit(target, &mut new_conn, cross_group.then_some(now)).await?;
    done(Some(&mut steps), "swap", at, format!("routing generation {}", table.generation));
    let at = Instant::now();
    info!(
        event = "switchover_completed",
        cluster = %cluster_name,
        from = %cluster.backends[old].name,
        to = %target_name,
        generation = table.generation,
        pause_ms = millis(pause),
        "switchover completed"
    );
    let held = cluster.gate.held_total.load(Ordering::Relaxed) - held_before;
    done(Some(&mut steps), "release", at, format!("{held} held statement(s) released"));

    // 9. Re-point the other replicas (clients are already served by the new primary).
    let replicas = if cross_group {
        // The new group's replicas follow its primary already; the old group is left as it is.
        Vec::new()
    } else if how.repoint && cluster.config.replication.is_some() {
        let mut repoint_step = |at: Instant, detail: String| done(Some(&mut steps), "repoint", at, detail);
        crate::repoint::run(&cluster, old, target, &mut new_conn, &mut repoint_step).await
    } else {
        crate::repoint::skipped(how.repoint)
    };
    let steps: Vec<Value> = steps.iter().map(Step::value).collect();
    Ok(json!({
        "ok": true,
        "cluster": cluster_name,
        "from": cluster.backends[old].name,
        "to": target_name,
        "generation": table.generation,
        "steps": steps,
        "pause_ms": millis(pause),
        "held": held,
        "replicas": replicas,
        "reverse": reverse,
    }))
}

/// `upgrade-check CLUSTER BACKEND`: the read-only report before a cutover to a logical
/// subscriber ([`crate::upgrade::check`]).
///
/// # Errors
/// No such cluster or backend, not PostgreSQL, no monitor credentials, or a server could not be
/// asked.
pub async fn upgrade_check(
    control: &Control,
    cluster_name: &str,
    target_name: &str,
    timeout: Duration,
) -> Result<Value, Failure> {
    let cluster = control.cluster(cluster_name)?;
    let target = Control::backend(cluster, target_name)?;
    if !Dialect::of(cluster.config.protocol).logical {
        return Err("upgrade-check is for PostgreSQL logical-replication subscribers; a MariaDB/MySQL upgrade is a \
                    switchover to a replica that runs the new version"
            .into());
    }
    let old = cluster.table.load().primary;
    if old == target {
        return Err(format!("{target_name:?} is already the primary of {cluster_name:?}"));
    }
    if cluster.config.monitor.is_none() {
        return Err(format!("cluster {cluster_name:?} has no monitor credentials: the check runs as the monitor user"));
    }
    let sides = crate::upgrade::Sides { cluster, old, target, deadline: Instant::now() + timeout };
    let check = crate::upgrade::check(&sides).await?;
    Ok(check.json(cluster_name, &cluster.backends[old].name, target_name))
}

/// After a failed step: before a promotion, undo the fence and resume on the old primary;
/// after one, ask both servers and serve from what they say (never two writable primaries).
/// Returns the answer's text, naming which server takes writes now.
async fn recover(
    cluster: &Cluster,
    old_conn: &mut ControlConn,
    new_conn: &mut ControlConn,
    old: usize,
    target: usize,
    promoted: bool,
    why: &str,
) -> (String, bool) {
    let dialect = Dialect::of(cluster.config.protocol);
    let (old_name, target_name) = (&cluster.backends[old].name, &cluster.backends[target].name);
    let name = &cluster.config.name;
    let deadline = Instant::now() + cluster.config.connect_timeout;
    let target_role = if promoted { within(deadline, new_conn.role(dialect)).await.ok() } else { None };
    let known = !(promoted && target_role.is_none());
    let answer = if promoted && target_role.is_none() {
        // Nobody can tell whether the promotion happened: take no guess. The old primary stays
        // fenced (writes are refused by it, none lost); the monitor follows the servers once
        // exactly one takes writes.
        format!("switchover failed at {why}; {target_name} did not answer after its promotion was asked for: no server is known to take writes, {old_name} stays fenced; see `status`")
    } else if matches!(target_role, Some(Role::Writable | Role::ReadOnly | Role::Subscriber)) {
        // The target left recovery: it is the primary now, whatever failed after. The old one
        // stays fenced.
        change(cluster, |t| t.primary = target);
        let role = target_role.map_or("?", Role::name);
        format!("switchover failed at {why}, after {target_name} was promoted: {target_name} is the primary now ({role}); {old_name} stays fenced")
    } else {
        if let Err(e) = within(deadline, old_conn.exec_all(dialect.unfence)).await {
            warn!(cluster = %name, error = %e, "could not undo the fence of the old primary");
            return (
                format!("switchover failed at {why}; undoing the fence of {old_name} failed too ({e}): no server may take writes, see `status`"),
                known,
            );
        }
        // Held work resumes on it: every session of it takes the reload first.
        if let Err(e) = in_force(old_conn, dialect, false, deadline).await {
            warn!(cluster = %name, error = %e, "the old primary's fence is not seen lifted yet");
        }
        format!("switchover failed at {why}; {old_name} is still the primary and takes writes")
    };
    warn!(event = "switchover_failed", cluster = %name, error = %why, "switchover failed");
    (answer, known)
}

/// After a cutover failed past the step that disabled subscriptions: enable them again, so that
/// the old primary, which takes writes again, still feeds the new cluster. Returns `why`, with
/// what could not be undone.
async fn enable_again(
    cluster: &Cluster,
    old: usize,
    target: usize,
    disabled: &[crate::upgrade::Subscription],
    why: String,
) -> String {
    let deadline = Instant::now() + cluster.config.connect_timeout;
    let sides = crate::upgrade::Sides { cluster, old, target, deadline };
    let mut failed = Vec::new();
    for sub in disabled {
        let enabled = match sides.connect(&sub.database).await {
            Ok((_, mut new_db)) => crate::upgrade::set_enabled(&mut new_db, sub, true, deadline).await,
            Err(e) => Err(e),
        };
        if let Err(e) = enabled {
            failed.push(format!("{}: {e}", sub.name));
        }
    }
    if failed.is_empty() {
        why
    } else {
        format!(
            "{why} (and enabling the subscription again failed: {}; ALTER SUBSCRIPTION ... ENABLE by hand)",
            failed.join("; ")
        )
    }
}

/// Waits until the fence is in force (`fenced`) or lifted on `conn`'s server. PostgreSQL's
/// reload only signals: once this session has taken it, the postmaster has signalled every
/// session, and each takes it before its next statement.
pub(crate) async fn in_force(
    conn: &mut ControlConn,
    dialect: &Dialect,
    fenced: bool,
    deadline: Instant,
) -> Result<(), String> {
    let want = if fenced { "on" } else { "off" };
    loop {
        let now = within(deadline, conn.value(dialect.fenced)).await?;
        if now == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let what = if fenced { "still takes writes" } else { "still refuses writes" };
            return Err(format!("{what} at the command's deadline"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Ends every other client session on the fenced old primary; returns how many, and the
/// first refusal to end one (a privilege the monitor user lacks).
async fn end_other_sessions(
    conn: &mut ControlConn,
    dialect: &Dialect,
    deadline: Instant,
) -> Result<(usize, Option<String>), String> {
    let rows = within(deadline, conn.exec(dialect.other_sessions)).await?;
    let (mut ended, mut refused) = (0, None);
    for id in rows.into_iter().filter_map(|r| r.into_iter().next().flatten()) {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        match within(deadline, conn.exec(&(dialect.end_session)(&id))).await {
            Ok(_) => ended += 1,
            // A session that ended meanwhile is not an error; a refusal is kept for the answer.
            Err(e) => {
                refused.get_or_insert(e);
            }
        }
    }
    Ok((ended, refused))
}

/// Holds the cluster's change lock for a switchover or failover, and its progress text, which
/// a second one is told; the text is cleared when this ends.
pub(crate) struct Changing<'a> {
    _lock: tokio::sync::MutexGuard<'a, ()>,
    progress: &'a std::sync::Mutex<String>,
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        lock(self.progress).clear();
    }
}

/// Takes the cluster's change lock for `what`: at once when free; after a short wait when the
/// monitor holds it (it does for a moment when it follows the servers); `None` when another
/// switchover or failover runs.
pub(crate) async fn change_lock<'a>(cluster: &'a Cluster, what: &str) -> Option<Changing<'a>> {
    let guard = match cluster.changing.try_lock() {
        Ok(guard) => guard,
        Err(_) if !lock(&cluster.progress).is_empty() => return None,
        Err(_) => tokio::time::timeout(LOCK_WAIT, cluster.changing.lock()).await.ok()?,
    };
    *lock(&cluster.progress) = format!("{what} started");
    Some(Changing { _lock: guard, progress: &cluster.progress })
}

/// Runs a control statement within a command's deadline.
pub(crate) async fn within<T, E: std::fmt::Display>(
    deadline: Instant,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), f).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("timed out (the command's deadline)".to_owned()),
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How long a switchover or failover waits for the cluster's change lock: the monitor holds it
/// for a moment when it follows the servers; a running switchover holds it far longer, and
/// then the second one is refused.
pub(crate) const LOCK_WAIT: Duration = Duration::from_millis(500);

/// How often a step that waits reports how far it is.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// How the switchover's connections are named where the server shows them.
const APPLICATION: &str = "sqlswitch-switchover";

fn fail(step: &str, backend: &str, e: &BackendError) -> Failure {
    format!("{step}: {backend}: {e}")
}
