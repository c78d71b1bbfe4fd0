//! Zero-downtime switchover (PRODUCT.md section 6), for PostgreSQL and MariaDB: hold new primary work, let
//! in-flight primary work finish, fence the old primary and read its final position, wait for
//! the target to replay it, promote it (or check it is already writable), swap the routing
//! table, release. Any failure before the swap undoes the fence, resumes on the old primary and
//! changes nothing; the answer names the step that failed and why.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing::{info, warn};

use crate::backend::BackendError;
use crate::cluster::Cluster;
use crate::control::{change, millis, Control, Failure};
use crate::replication::{ControlConn, Dialect};

/// One completed step, for the live report.
#[derive(Debug, Clone)]
pub struct Step {
    /// Its name: hold, drain, fence, catch_up, promote, swap, release.
    pub name: &'static str,
    /// How long it took.
    pub took: Duration,
    /// What it found or did.
    pub detail: String,
}

impl Step {
    /// As one JSON progress line.
    pub fn json(&self) -> Value {
        json!({ "progress": { "step": self.name, "ms": self.took.as_secs_f64() * 1000.0, "detail": self.detail } })
    }
}

/// Switches `cluster_name`'s primary to `target_name`. `report` sees each step as it completes.
///
/// # Errors
/// The step that failed and why; the cluster then serves as before.
pub async fn run(
    control: &Control,
    cluster_name: &str,
    target_name: &str,
    promote: bool,
    timeout: Duration,
    report: &mut (dyn FnMut(&Step) + Send),
) -> Result<Value, Failure> {
    let cluster: Arc<Cluster> = Arc::clone(control.cluster(cluster_name)?);
    let target = Control::backend(&cluster, target_name)?;
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
    let deadline = Instant::now() + timeout;
    let started = Instant::now();
    let held_before = cluster.gate.held_total.load(Ordering::Relaxed);
    let mut steps: Vec<Step> = Vec::new();
    let mut done = |steps: &mut Vec<Step>, name, at: Instant, detail: String| {
        let step = Step { name, took: at.elapsed(), detail };
        info!(cluster = %cluster_name, step = name, ms = step.took.as_secs_f64() * 1000.0, detail = %step.detail, "switchover step");
        report(&step);
        steps.push(step);
    };

    // Connections first, so an unreachable server fails the switchover before anything is held.
    let old_name = cluster.backends[old].name.clone();
    let mut old_conn =
        ControlConn::connect(&old_target, APPLICATION).await.map_err(|e| fail("connect", &old_name, &e))?;
    let mut new_conn =
        ControlConn::connect(&new_target, APPLICATION).await.map_err(|e| fail("connect", target_name, &e))?;

    // 1. Hold new primary work; replica reads go on.
    let at = Instant::now();
    cluster.gate.set(|h| h.primary = true);
    done(&mut steps, "hold", at, "new primary work waits; replica reads continue".into());

    let outcome = async {
        // 2. Let in-flight primary work finish.
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
        done(&mut steps, "drain", at, "no primary work in flight".into());

        // 3. Fence the old primary and read its final position.
        let at = Instant::now();
        old_conn.exec_all(dialect.fence).await.map_err(|e| fail("fence", &old_name, &e))?;
        let final_text = old_conn.value(dialect.position).await.map_err(|e| format!("fence: {e}"))?;
        let final_pos = dialect
            .primary_position(&final_text)
            .ok_or_else(|| format!("fence: cannot compare position {final_text:?}"))?;
        done(&mut steps, "fence", at, format!("old primary read-only; final position {final_text}"));

        // 4. Wait until the target has applied it (a target that is already writable, such as a
        // logical-replication subscriber, has no comparable position).
        let at = Instant::now();
        let standby =
            new_conn.value(dialect.is_standby).await.map_err(|e| format!("catch_up: {e}"))? == dialect.standby_answer;
        if standby {
            loop {
                let text = new_conn.value(dialect.replayed).await.map_err(|e| format!("catch_up: {e}"))?;
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
            done(&mut steps, "catch_up", at, format!("{target_name} applied {final_text}"));
        } else {
            done(&mut steps, "catch_up", at, format!("{target_name} is not a standby: nothing to apply"));
        }

        // 5. Promote, or check it is already writable; either way, clear any fence of ours.
        let at = Instant::now();
        if standby {
            if !promote {
                return Err(format!("promote: {target_name} is a standby; add `promote`, or promote it first"));
            }
            new_conn.exec_all(dialect.promote).await.map_err(|e| fail("promote", target_name, &e))?;
        }
        new_conn.exec_all(dialect.unfence).await.map_err(|e| fail("promote", target_name, &e))?;
        let still_standby =
            new_conn.value(dialect.is_standby).await.map_err(|e| format!("promote: {e}"))? == dialect.standby_answer;
        if still_standby {
            return Err(format!("promote: {target_name} is still not writable"));
        }
        let what = if standby { "promoted" } else { "already writable" };
        done(&mut steps, "promote", at, format!("{target_name} {what}"));
        Ok(final_pos)
    }
    .await;

    if let Err(why) = outcome {
        // Undo the fence, resume on the old primary, change nothing.
        if let Err(e) = old_conn.exec_all(dialect.unfence).await {
            warn!(cluster = %cluster_name, error = %e, "could not undo the fence of the old primary");
        }
        cluster.gate.set(|h| h.primary = false);
        warn!(cluster = %cluster_name, error = %why, "switchover failed; the old primary serves on");
        return Err(format!("switchover failed at {why}; {} is still the primary", cluster.backends[old].name));
    }

    // 6. Swap the routing table.
    let at = Instant::now();
    let table = change(&cluster, |t| t.primary = target);
    done(&mut steps, "swap", at, format!("routing generation {}", table.generation));

    // 7. Release held work to the new primary.
    let at = Instant::now();
    cluster.gate.set(|h| h.primary = false);
    let pause = started.elapsed();
    let held = cluster.gate.held_total.load(Ordering::Relaxed) - held_before;
    done(&mut steps, "release", at, format!("{held} held statement(s) released"));
    let steps: Vec<Value> = steps
        .iter()
        .map(|s| json!({ "step": s.name, "ms": s.took.as_secs_f64() * 1000.0, "detail": s.detail }))
        .collect();
    Ok(json!({
        "ok": true,
        "cluster": cluster_name,
        "from": cluster.backends[old].name,
        "to": target_name,
        "generation": table.generation,
        "steps": steps,
        "pause_ms": millis(pause),
        "held": held,
    }))
}

/// How the switchover's connections are named where the server shows them.
const APPLICATION: &str = "sqlswitch-switchover";

fn fail(step: &str, backend: &str, e: &BackendError) -> Failure {
    format!("{step}: {backend}: {e}")
}
