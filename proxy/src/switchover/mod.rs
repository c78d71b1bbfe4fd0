//! Zero-downtime switchover (README, "How to switch over"), for PostgreSQL and MariaDB: hold new
//! primary work, let in-flight primary work finish, fence the old primary, wait for every other
//! transaction there to end, read its final position, wait for the target to replay it, promote it
//! (or check it is already writable), swap the routing table, release, then re-point the other
//! replicas ([`crate::repoint`]). One switchover (or role change) per cluster at a time. A failure
//! before the promotion undoes the fence, resumes on the old primary and changes nothing; after it,
//! the cluster serves from what the servers say, and the answer says which server is writable.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing::{info, warn};

use crate::change::{change_lock, Change, Progress};
use crate::cluster::Cluster;
use crate::cluster::Failure;
use crate::control::Control;
use crate::metrics::millis;
use crate::replication::Dialect;

mod steps;
use steps::Switchover;

pub use crate::change::{ChangeError, Step, StepError};

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
) -> Result<Value, ChangeError> {
    let cluster: Arc<Cluster> = Arc::clone(control.cluster(cluster_name).map_err(ChangeError::unknown)?);
    let target = Control::backend(&cluster, target_name).map_err(|e| ChangeError::refused(&cluster, e))?;
    // One change of primary at a time: a second switchover is refused at once.
    let Some(_changing) = change_lock(&cluster, "switchover").await else {
        let so_far = cluster.progress.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        return Err(ChangeError::refused(
            &cluster,
            format!("a switchover of {cluster_name:?} is already running ({so_far}); wait for it to end and look at `status`"),
        ));
    };
    let old = cluster.table.load().primary;
    if old == target {
        return Err(ChangeError::refused(
            &cluster,
            format!("{target_name:?} is already the primary of {cluster_name:?}"),
        ));
    }
    let (Some(old_to), Some(new_to)) = (cluster.control_target(old), cluster.control_target(target)) else {
        return Err(ChangeError::refused(
            &cluster,
            format!(
                "cluster {cluster_name:?} has no monitor credentials: a switchover needs them to fence and promote"
            ),
        ));
    };
    let mut s = Switchover::prepare(&cluster, (old, target), (&old_to, &new_to), how)
        .await
        .map_err(|e| ChangeError::unchanged(&cluster, e))?;
    let mut progress = Progress::new(&cluster, "switchover_step", report);
    let held_before = cluster.gate.held_total.load(Ordering::Relaxed);

    // 1. Hold new primary work; replica reads go on. Clients' pause starts here. In fleet
    // mode, on every instance: the change is published and each holds.
    let at = Instant::now();
    let change = Change::begin(&cluster, "switchover", old, target, how.timeout)
        .await
        .map_err(|e| ChangeError::unchanged(&cluster, e))?;
    let detail = match change.generation() {
        Some(g) => {
            format!("new primary work waits on every instance of the fleet (generation {g}); replica reads continue")
        }
        None => "new primary work waits; replica reads continue".into(),
    };
    progress.done("hold", at, detail);

    // 2-6. Drain, fence, writers, catch_up, promote (steps.rs).
    if let Err(why) = s.steps(&change, &mut progress).await {
        let (error, known) = s.recover(why).await;
        // The fleet serves from the same primary as this instance; when nobody can tell, the
        // change stays published and an instance resolves it from what the servers say.
        change.abandon(known.then(|| cluster.table.load().primary)).await;
        return Err(error);
    }

    // The way back, while clients are still held: from their first write on, the old primary
    // subscribes to the new one. A failure here leaves the cutover as it is, and is reported.
    let reverse = match &s.reverse_as {
        Some(creds) => {
            let at = Instant::now();
            let sides = crate::upgrade::Sides { cluster: &cluster, old, target, deadline: s.deadline };
            let outcome = crate::upgrade::create_reverse(&sides, &s.subscriptions, creds).await;
            let detail = match &outcome {
                Ok(created) => format!("created {}", created.join(", ")),
                Err(e) => {
                    warn!(cluster = %cluster_name, error = %e, "the way back was not created");
                    format!("NOT created: {e}")
                }
            };
            progress.done("reverse", at, detail.clone());
            json!({ "ok": outcome.is_ok(), "detail": detail })
        }
        None => Value::Null,
    };

    // 7. Swap the routing table (a new group serves from now on: its replicas serve reads once
    // they have replayed a position of the new primary sampled after this moment), and
    // 8. release held work to the new primary (exactly one server takes writes now).
    let at = Instant::now();
    let since = s.cross_group.then(|| cluster.clock.now());
    let (table, pause) = change
        .commit(target, &mut s.new_conn, since)
        .await
        .map_err(|e| ChangeError::superseded(&cluster, "switchover", e))?;
    progress.done("swap", at, format!("routing generation {}", table.generation));
    let at = Instant::now();
    info!(
        event = "switchover_completed",
        cluster = %cluster_name,
        from = %s.old_name,
        to = %target_name,
        generation = table.generation,
        pause_ms = millis(pause),
        "switchover completed"
    );
    let held = cluster.gate.held_total.load(Ordering::Relaxed) - held_before;
    progress.done("release", at, format!("{held} held statement(s) released"));

    // 9. Re-point the other replicas (clients are already served by the new primary).
    let replicas = if s.cross_group {
        // The new group's replicas follow its primary already; the old group is left as it is.
        Vec::new()
    } else if how.repoint && cluster.config.replication.is_some() {
        let mut repoint_step = |at: Instant, detail: String| progress.done("repoint", at, detail);
        crate::repoint::run(&cluster, old, target, &mut s.new_conn, &mut repoint_step).await
    } else {
        crate::repoint::skipped(how.repoint)
    };
    Ok(json!({
        "ok": true,
        "cluster": cluster_name,
        "from": s.old_name,
        "to": target_name,
        "generation": table.generation,
        "steps": progress.values(),
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
