//! `failover CLUSTER [BACKEND]` (README, "How to switch over"): the primary is gone. Refused while
//! it answers (that is a `switchover`). Promotes the given replica, or the most advanced one that
//! answers (the largest received position), fences nothing that cannot be reached, swaps the
//! routing table, and re-points the other replicas ([`crate::repoint`]). The answer states the last
//! position the old primary was known to have and how much of it the new primary lacks (bytes of
//! WAL for PostgreSQL, transactions for MariaDB/MySQL): the possible data loss.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing::{info, warn};

use crate::change::Change;
use crate::change::Progress;
use crate::change::{ChangeError, StepError};
use crate::cluster::{BackendState, Cluster};
use crate::control::Control;
use crate::metrics::millis;
use crate::replication::within;
use crate::replication::{ControlConn, Dialect, Position, Role};
use crate::switchover::Step;

/// How the failover's connections are named where the server shows them.
const APPLICATION: &str = "sqlswitch-failover";

/// Promotes `target_name` (or the most advanced replica) of `cluster_name`, whose primary does
/// not answer. `report` sees each step as it completes.
///
/// # Errors
/// Why nothing was changed, or the step that failed.
pub async fn run(
    control: &Control,
    cluster_name: &str,
    target_name: Option<&str>,
    repoint: bool,
    timeout: Duration,
    report: &mut (dyn FnMut(&Step) + Send),
) -> Result<Value, ChangeError> {
    let cluster: Arc<Cluster> = Arc::clone(control.cluster(cluster_name).map_err(ChangeError::unknown)?);
    let refused = |cause: String| ChangeError::refused(&cluster, cause);
    let wanted = target_name.map(|name| Control::backend(&cluster, name)).transpose().map_err(refused)?;
    let Some(_changing) = crate::change::change_lock(&cluster, "failover").await else {
        return Err(refused(format!(
            "a switchover of {cluster_name:?} is running; wait for it to end and look at `status`"
        )));
    };
    let dialect = Dialect::of(cluster.config.protocol);
    let table = cluster.table.load_full();
    let old = table.primary;
    let old_name = cluster.backends[old].name.clone();
    if wanted == Some(old) {
        return Err(refused(format!("{old_name:?} is the primary of {cluster_name:?}")));
    }
    if let Some(w) = wanted.filter(|w| cluster.backends[*w].group_id != cluster.backends[old].group_id) {
        return Err(refused(format!(
            "{:?} is in group {:?}, not the serving group {:?}: a failover promotes a replica of the lost primary; \
             move to another group with `switchover`",
            cluster.backends[w].name, cluster.backends[w].group, cluster.backends[old].group
        )));
    }
    let deadline = Instant::now() + timeout;
    let mut progress = Progress::new(&cluster, "failover_step", report);

    // 1. The old primary must not answer: a failover of a running primary would split the brain.
    let at = Instant::now();
    let (last_known, last_text) = old_is_gone(&cluster, old, dialect).await.map_err(refused)?;
    progress.done("check", at, format!("{old_name} does not answer; its last known position {last_text}"));

    // 2. The target: the given replica, or the most advanced one that answers.
    let at = Instant::now();
    let (target, mut new_conn, pos, pos_text, skipped) = choose(&cluster, &table, wanted, dialect)
        .await
        .map_err(|e| ChangeError::unchanged(&cluster, StepError::new("choose", e)))?;
    let target_name = cluster.backends[target].name.clone();
    let writable = pos == Position::default();
    let pos_total = if writable { cluster.backends[target].health.lsn.load(Ordering::Relaxed) } else { pos.total() };
    // A lower bound: the old primary may have acknowledged more after the monitor's last look.
    let behind = last_known.saturating_sub(pos_total);
    let unit = match cluster.config.protocol {
        sqlswitch_config::Protocol::Postgres => "bytes of WAL",
        sqlswitch_config::Protocol::Mysql => "transactions",
    };
    progress.done(
        "choose",
        at,
        format!(
            "{target_name} has {pos_text}; possible loss: at least {behind} {unit} behind {old_name}'s last known \
             position (measured against the monitor's last sample of it)"
        ),
    );

    // 3. Promote it; 4. swap and release held primary work.
    let at = Instant::now();
    let failed = |e: StepError| {
        warn!(event = "failover_failed", cluster = %cluster_name, error = %e, "failover failed");
        let at = StepError { cause: format!("{target_name}: {}", e.cause), ..e };
        ChangeError::failed("failover", at, None, "; no server is known to take writes")
    };
    // Every instance of a fleet holds new primary work first.
    let change = match Change::begin(&cluster, "failover", old, target, timeout).await {
        Ok(change) => change,
        Err(e) => {
            cluster.metrics.count_change(true, None);
            return Err(failed(e));
        }
    };
    let promoted = async {
        change.acknowledged(deadline).await?;
        change.promoting().await?;
        let promote = StepError::at("promote");
        if !writable {
            within(deadline, new_conn.exec_all(dialect.promote)).await.map_err(promote)?;
        }
        within(deadline, new_conn.exec_all(dialect.unfence)).await.map_err(StepError::at("promote"))?;
        let role = within(deadline, new_conn.role(dialect)).await.map_err(StepError::at("promote"))?;
        if role != Role::Writable {
            return Err(StepError::new("promote", format!("is {} after promotion, not writable", role.name())));
        }
        Ok(())
    }
    .await;
    if let Err(e) = promoted {
        let answer = failed(e);
        change.abandon(Some(old)).await;
        return Err(answer);
    }
    progress.done("promote", at, format!("{target_name} promoted"));
    let at = Instant::now();
    let (table, pause) = change
        .commit(target, &mut new_conn, None)
        .await
        .map_err(|e| ChangeError::superseded(&cluster, "failover", e))?;
    progress.done("swap", at, format!("routing generation {}", table.generation));
    info!(
        event = "failover_completed",
        cluster = %cluster_name,
        from = %old_name,
        to = %target_name,
        generation = table.generation,
        possible_loss = behind,
        "failover completed"
    );

    // 5. Re-point the other replicas.
    let replicas = if repoint && cluster.config.replication.is_some() {
        let mut step = |at: Instant, detail: String| progress.done("repoint", at, detail);
        crate::repoint::run(&cluster, old, target, &mut new_conn, &mut step).await
    } else {
        crate::repoint::skipped(repoint)
    };
    Ok(json!({
        "ok": true,
        "cluster": cluster_name,
        "from": old_name,
        "to": target_name,
        "generation": table.generation,
        "old_last_known_position": last_text,
        "new_position": pos_text,
        "possible_loss": behind,
        "possible_loss_unit": unit,
        "unreachable": skipped,
        "steps": progress.values(),
        "pause_ms": millis(pause),
        "replicas": replicas,
    }))
}

/// Checks that the old primary `old` does not answer; returns its last known position (as a
/// number and as text).
///
/// # Errors
/// No monitor credentials, or it answers: then it is a switchover's business.
async fn old_is_gone(cluster: &Cluster, old: usize, dialect: &Dialect) -> Result<(u64, String), String> {
    let (cluster_name, old_name) = (&cluster.config.name, &cluster.backends[old].name);
    let to = cluster.control_target(old).ok_or_else(|| {
        format!("cluster {cluster_name:?} has no monitor credentials: a failover needs them to promote")
    })?;
    let reached = tokio::time::timeout(cluster.config.connect_timeout, async {
        let mut conn = ControlConn::connect(&to, APPLICATION).await.map_err(|e| e.to_string())?;
        conn.role(dialect).await
    })
    .await
    .unwrap_or_else(|_| Err("timed out".into()));
    if let Ok(role) = reached {
        return Err(format!(
            "{old_name} answers (it is {}): use `switchover` to move the primary while it runs",
            role.name()
        ));
    }
    let last_known = cluster.backends[old].health.lsn.load(Ordering::Relaxed);
    let last_text = match cluster.config.protocol {
        // As PostgreSQL writes an LSN.
        sqlswitch_config::Protocol::Postgres => format!("{:X}/{:X}", last_known >> 32, last_known & 0xFFFF_FFFF),
        sqlswitch_config::Protocol::Mysql => format!("{last_known} transactions (GTID sequence numbers summed)"),
    };
    Ok((last_known, last_text))
}

/// The failover's target: the replica the operator named, or the most advanced one of the
/// serving group that answers (on a tie, the first in the config), with a control connection
/// to it, its position (as text too) and the candidates skipped, with why.
///
/// # Errors
/// No replica can be promoted.
async fn choose(
    cluster: &Cluster,
    table: &crate::cluster::RoutingTable,
    wanted: Option<usize>,
    dialect: &Dialect,
) -> Result<(usize, ControlConn, Position, String, Vec<String>), String> {
    let old = table.primary;
    let mut candidates: Vec<(usize, ControlConn, Position, String)> = Vec::new();
    let mut skipped = Vec::new();
    for i in 0..cluster.backends.len() {
        let live = table.states.get(i).is_some_and(|s| *s != BackendState::Removed);
        // Only the serving group's replicas follow the old primary.
        let other_group = cluster.backends[i].group_id != cluster.backends[old].group_id;
        if i == old || !live || other_group || wanted.is_some_and(|w| w != i) {
            continue;
        }
        let name = cluster.backends[i].name.clone();
        // A server the operator names may already take writes (promoted by other tooling, or
        // by hand): it is adopted as it is, its position the last the monitor saw it replay.
        match candidate(cluster, i, dialect, wanted == Some(i)).await {
            Ok((conn, pos, text)) => candidates.push((i, conn, pos, text)),
            Err(e) => skipped.push(format!("{name}: {e}")),
        }
    }
    let best = candidates
        .iter()
        .enumerate()
        // The most advanced; on a tie, the first in the config.
        .max_by(|(ia, a), (ib, b)| a.2.total().cmp(&b.2.total()).then(ib.cmp(ia)))
        .map(|(at, _)| at);
    let Some(best) = best else {
        return Err(format!("no replica can be promoted: {}", skipped.join("; ")));
    };
    let (target, new_conn, pos, pos_text) = candidates.swap_remove(best);
    Ok((target, new_conn, pos, pos_text, skipped))
}

/// A control connection to replica `i` and what it will have once promoted (its received
/// position: [`Dialect::received`]). With `writable_too`, a server that already takes writes
/// is a candidate too, with an empty position (the caller takes the monitor's last look).
async fn candidate(
    cluster: &Cluster,
    i: usize,
    dialect: &Dialect,
    writable_too: bool,
) -> Result<(ControlConn, Position, String), String> {
    let to = cluster.control_target(i).ok_or("no monitor credentials")?;
    let answer = tokio::time::timeout(cluster.config.connect_timeout, async {
        let mut conn = ControlConn::connect(&to, APPLICATION).await.map_err(|e| e.to_string())?;
        let role = conn.role(dialect).await?;
        if writable_too && role == Role::Writable {
            return Ok((conn, Position::default(), "taken writes already (promoted elsewhere)".to_owned()));
        }
        if role != Role::Replica {
            return Err(format!("not a replica (it is {})", role.name()));
        }
        let text = conn.value(dialect.received).await?;
        let pos = dialect.primary_position(&text).ok_or_else(|| format!("cannot compare position {text:?}"))?;
        Ok((conn, pos, text))
    })
    .await;
    answer.unwrap_or_else(|_| Err("timed out".into()))
}
