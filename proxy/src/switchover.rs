//! Zero-downtime switchover (PRODUCT.md section 6), for PostgreSQL: hold new primary work, let
//! in-flight primary work finish, fence the old primary and read its final position, wait for
//! the target to replay it, promote it (or check it is already writable), swap the routing
//! table, release. Any failure before the swap undoes the fence, resumes on the old primary and
//! changes nothing; the answer names the step that failed and why.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing::{info, warn};

use crate::control::{change, millis, Control, Failure};
use crate::monitor::{parse_lsn, record_boundary};
use crate::pg::backend::{BackendConn, BackendError, Login};

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
    let cluster = Arc::clone(control.cluster(cluster_name)?);
    let target = Control::backend(&cluster, target_name)?;
    let old = cluster.table.load().primary;
    if old == target {
        return Err(format!("{target_name:?} is already the primary of {cluster_name:?}"));
    }
    let Some(monitor) = cluster.config.monitor.clone() else {
        return Err(format!(
            "cluster {cluster_name:?} has no monitor credentials: a switchover needs them to fence and promote"
        ));
    };
    let params = vec![
        ("database".to_owned(), "postgres".to_owned()),
        ("application_name".to_owned(), "sqlswitch-switchover".to_owned()),
    ];
    let login = Login { user: &monitor.user, password: monitor.password.expose(), params: &params };
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
    let connect = |i: usize| {
        let b = &cluster.backends[i];
        BackendConn::connect(&b.address, &login, cluster.config.connect_timeout, &b.metrics)
    };
    let mut old_conn = connect(old).await.map_err(|e| fail("connect", &cluster.backends[old].name, &e))?;
    let mut new_conn = connect(target).await.map_err(|e| fail("connect", target_name, &e))?;

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
        old_conn
            .simple_query("ALTER SYSTEM SET default_transaction_read_only = on")
            .await
            .map_err(|e| fail("fence", &cluster.backends[old].name, &e))?;
        old_conn
            .simple_query("SELECT pg_reload_conf()")
            .await
            .map_err(|e| fail("fence", &cluster.backends[old].name, &e))?;
        let final_lsn = query_lsn(&mut old_conn, "SELECT pg_current_wal_insert_lsn()::text")
            .await
            .map_err(|e| format!("fence: {e}"))?;
        let final_lsn = record_boundary(final_lsn);
        done(&mut steps, "fence", at, format!("old primary read-only; final position {}", lsn_text(final_lsn)));

        // 4. Wait until the target has replayed it (a target already out of recovery, such as a
        // logical-replication subscriber, has no comparable position).
        let at = Instant::now();
        let in_recovery =
            query_bool(&mut new_conn, "SELECT pg_is_in_recovery()").await.map_err(|e| format!("catch_up: {e}"))?;
        if in_recovery {
            loop {
                let replayed = query_lsn(&mut new_conn, "SELECT pg_last_wal_replay_lsn()::text")
                    .await
                    .map_err(|e| format!("catch_up: {e}"))?;
                if replayed >= final_lsn {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "catch_up: {target_name} replayed {} of {} within {timeout:?}",
                        lsn_text(replayed),
                        lsn_text(final_lsn)
                    ));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            done(&mut steps, "catch_up", at, format!("{target_name} replayed {}", lsn_text(final_lsn)));
        } else {
            done(&mut steps, "catch_up", at, format!("{target_name} is not in recovery: nothing to replay"));
        }

        // 5. Promote, or check it is already writable; either way, clear any fence of ours.
        let at = Instant::now();
        if in_recovery {
            if !promote {
                return Err(format!("promote: {target_name} is a standby; add `promote`, or promote it first"));
            }
            let ok =
                query_bool(&mut new_conn, "SELECT pg_promote(true, 60)").await.map_err(|e| format!("promote: {e}"))?;
            if !ok {
                return Err(format!("promote: {target_name} did not finish promotion within 60 s"));
            }
        }
        new_conn
            .simple_query("ALTER SYSTEM RESET default_transaction_read_only")
            .await
            .map_err(|e| fail("promote", target_name, &e))?;
        new_conn.simple_query("SELECT pg_reload_conf()").await.map_err(|e| fail("promote", target_name, &e))?;
        let writable =
            !query_bool(&mut new_conn, "SELECT pg_is_in_recovery()").await.map_err(|e| format!("promote: {e}"))?;
        if !writable {
            return Err(format!("promote: {target_name} is still in recovery"));
        }
        let what = if in_recovery { "promoted" } else { "already writable" };
        done(&mut steps, "promote", at, format!("{target_name} {what}"));
        Ok(final_lsn)
    }
    .await;

    if let Err(why) = outcome {
        // Undo the fence, resume on the old primary, change nothing.
        if let Err(e) = unfence(&mut old_conn).await {
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

fn fail(step: &str, backend: &str, e: &BackendError) -> Failure {
    format!("{step}: {backend}: {e}")
}

async fn unfence(conn: &mut BackendConn) -> Result<(), BackendError> {
    conn.simple_query("ALTER SYSTEM RESET default_transaction_read_only").await?;
    conn.simple_query("SELECT pg_reload_conf()").await.map(drop)
}

async fn first_value(conn: &mut BackendConn, sql: &str) -> Result<String, String> {
    let rows = conn.simple_query(sql).await.map_err(|e| e.to_string())?;
    rows.into_iter().next().and_then(|r| r.into_iter().next().flatten()).ok_or_else(|| format!("{sql}: no value"))
}

async fn query_lsn(conn: &mut BackendConn, sql: &str) -> Result<u64, String> {
    let text = first_value(conn, sql).await?;
    parse_lsn(&text).ok_or_else(|| format!("{sql}: not a WAL position: {text}"))
}

async fn query_bool(conn: &mut BackendConn, sql: &str) -> Result<bool, String> {
    Ok(first_value(conn, sql).await? == "t")
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}
