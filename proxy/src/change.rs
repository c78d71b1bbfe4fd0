//! The part every change of primary shares: a switchover, a failover and an upgrade cutover
//! (a switchover to another group) each run through one [`Change`]. [`Change::begin`] holds new
//! primary work (on every instance of a fleet: the change is published first); the command's
//! own steps run while it is held; then it ends one of two ways. [`Change::commit`] swaps the
//! routing table to the new primary, publishes it to the fleet, and releases the held work to
//! it. [`Change::abandon`] releases the held work to the server known to take writes (or, when
//! none is known, leaves the fleet's change published for an instance to resolve from what the
//! servers say). A `Change` dropped without either (a command cancelled or panicking) releases
//! its hold too, and unlocks the fleet's change so that another instance resolves it: no path
//! leaves primary work held for good.
//!
//! The rules that make a change safe live with the steps that need them: the fence covers every
//! open transaction before the final position is read (`switchover`), a promotion is asked for
//! only while this instance's fleet lease holds ([`Change::promoting`]), and a target promoted
//! after the fleet moved on is fenced again and deposed (`fleet::Link::end_promoted`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing::{info, warn};

use crate::cluster::{Cluster, RoutingStore, RoutingTable};
use crate::replication::ControlConn;

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

/// A step of a change of primary that failed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    /// The step: connect, upgrade-check, reverse, promote, drain, fence, writers, catch_up,
    /// sequences, subscription, swap (as in the progress lines).
    pub step: &'static str,
    /// What went wrong.
    pub cause: String,
}

impl StepError {
    /// Step `step` failed with `cause`.
    pub fn new(step: &'static str, cause: impl std::fmt::Display) -> Self {
        Self { step, cause: cause.to_string() }
    }

    /// A `map_err` for step `step`: its cause is the error as written.
    pub fn at<E: std::fmt::Display>(step: &'static str) -> impl FnOnce(E) -> Self {
        move |e| Self::new(step, e)
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.cause)
    }
}

/// Why a switchover or failover did not complete: the step, its cause, and which server is
/// known to take writes now. What the operator reads is its `Display`; the admin answer carries
/// the parts too ([`ChangeError::answer`]).
#[derive(Debug, Clone)]
pub struct ChangeError {
    /// The step that failed; `check` when the command was refused before anything was held.
    pub step: &'static str,
    /// What went wrong.
    pub cause: String,
    /// The server that takes writes now, as far as is known; `None` when nobody can tell (no
    /// server may take writes until the servers say which one is the primary).
    pub known_primary: Option<String>,
    text: String,
}

impl ChangeError {
    /// Refused before anything was held or changed: `cause` is the whole answer, and the
    /// cluster's primary is as it was.
    pub(crate) fn refused(cluster: &Cluster, cause: impl Into<String>) -> Self {
        let cause = cause.into();
        let primary = cluster.backends[cluster.table.load().primary].name.clone();
        Self { step: "check", text: cause.clone(), cause, known_primary: Some(primary) }
    }

    /// Refused before anything was held: the cluster named is not served here.
    pub(crate) fn unknown(cause: String) -> Self {
        Self { step: "check", text: cause.clone(), cause, known_primary: None }
    }

    /// Step `at` failed before anything was held or changed (a precondition, a connection, the
    /// fleet refusing to publish the change): the cluster's primary is as it was.
    pub(crate) fn unchanged(cluster: &Cluster, at: StepError) -> Self {
        let text = at.to_string();
        Self { text, ..Self::refused(cluster, at.cause).at(at.step) }
    }

    /// Step `at` failed after the routing table moved on (a fleet change taken over): the
    /// primary is the one the table names now.
    pub(crate) fn superseded(cluster: &Cluster, kind: &str, at: StepError) -> Self {
        let primary = cluster.backends[cluster.table.load().primary].name.clone();
        let outcome = format!("; {primary} is the primary, as the fleet decided");
        Self::failed(kind, at, Some(primary), &outcome)
    }

    fn at(mut self, step: &'static str) -> Self {
        self.step = step;
        self
    }

    /// A `kind` ("switchover", "failover") failed at `at`; `outcome` says what that left (the
    /// primary now, what stays fenced), `known_primary` names the server that takes writes.
    pub(crate) fn failed(kind: &str, at: StepError, known_primary: Option<String>, outcome: &str) -> Self {
        let text = format!("{kind} failed at {at}{outcome}");
        Self { step: at.step, cause: at.cause, known_primary, text }
    }

    /// The admin command's answer.
    pub fn answer(&self) -> Value {
        json!({ "ok": false, "error": self.text, "step": self.step, "cause": self.cause, "primary": self.known_primary })
    }
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for ChangeError {}

/// A change of primary that holds new primary work until it ends.
pub(crate) struct Change<'a> {
    cluster: &'a Cluster,
    /// Where the change is published: the fleet, or this instance alone.
    store: Arc<dyn RoutingStore>,
    /// The generation the change was published at (`None`: nobody else to tell).
    generation: Option<u64>,
    /// Counted as a failover (or a switchover) in the metrics.
    failover: bool,
    started: Instant,
    /// Still holding new primary work (and, in fleet mode, the fleet's change open).
    held: bool,
}

impl<'a> Change<'a> {
    /// Holds new primary work for a `kind` ("switchover", "failover") from backend `old` to
    /// `target`: here at once, and in fleet mode on every instance once the change is
    /// published (within `timeout`). Replica reads go on. The clients' pause starts here.
    ///
    /// # Errors
    /// The fleet could not publish the change (another is running, etcd unreachable); nothing
    /// stays held.
    pub(crate) async fn begin(
        cluster: &'a Cluster,
        kind: &str,
        old: usize,
        target: usize,
        timeout: Duration,
    ) -> Result<Self, StepError> {
        cluster.gate.set(|h| h.primary = true);
        let store = cluster.store();
        let mut change = Self {
            cluster,
            store: Arc::clone(&store),
            generation: None,
            failover: kind == "failover",
            started: Instant::now(),
            held: true,
        };
        match store.begin(kind, old, target, timeout).await {
            Ok(generation) => change.generation = generation,
            Err(e) => {
                change.release();
                return Err(StepError::new("hold", e));
            }
        }
        Ok(change)
    }

    /// The fleet generation the change was published at (`None` outside fleet mode).
    pub(crate) fn generation(&self) -> Option<u64> {
        self.generation
    }

    /// Fleet mode: waits until every live instance holds, with no primary work in flight;
    /// returns how many did (`None` outside fleet mode).
    ///
    /// # Errors
    /// An instance did not say so by `deadline`.
    pub(crate) async fn acknowledged(&self, deadline: Instant) -> Result<Option<usize>, StepError> {
        match self.generation {
            Some(generation) => {
                self.store.acknowledged(generation, deadline).await.map(Some).map_err(StepError::at("acknowledged"))
            }
            None => Ok(None),
        }
    }

    /// Right before a promotion is asked for (the point of no return). Fleet mode: records the
    /// step, so an instance taking over finishes the change rather than rolling it back, and
    /// checks this instance's lease still holds: an instance taking over finds the driver gone
    /// only once that lease has expired, a margin after this check.
    ///
    /// # Errors
    /// The step could not be recorded, or the lease ran out: nothing may be promoted.
    pub(crate) async fn promoting(&self) -> Result<(), StepError> {
        self.store.step("promote").await.map_err(StepError::at("promote"))?;
        if self.cluster.gate.lease_lost() {
            return Err(StepError::new("promote", "this instance's fleet lease ran out; nothing was promoted"));
        }
        Ok(())
    }

    /// Makes `target` (promoted, `conn` a control connection to it) the primary: publishes it
    /// to the fleet, swaps the routing table (setting its `since` when a new group serves from
    /// now on), clears the servers' disagreement and releases the held work to it. Returns the
    /// new table and the clients' pause.
    ///
    /// # Errors
    /// Fleet mode: the change was taken over meanwhile to another primary (`target` is fenced
    /// again and deposed); the hold is released to the fleet's primary.
    pub(crate) async fn commit(
        mut self,
        target: usize,
        conn: &mut ControlConn,
        since: Option<u64>,
    ) -> Result<(Arc<RoutingTable>, Duration), StepError> {
        // Published: every instance releases its held work to the new primary.
        if let Err(e) = Arc::clone(&self.store).end_promoted(target, conn).await {
            self.cluster.metrics.count_change(self.failover, None);
            self.release();
            return Err(StepError::new("swap", e));
        }
        let table = crate::cluster::change(self.cluster, |t| {
            t.primary = target;
            if let Some(since) = since {
                t.since = since;
            }
        });
        lock(&self.cluster.discovery).problem = None;
        self.cluster.gate.set(|h| {
            h.primary = false;
            h.doubt = false;
        });
        self.held = false;
        let pause = self.started.elapsed();
        self.cluster.metrics.count_change(self.failover, Some(pause));
        Ok((table, pause))
    }

    /// Ends a change that failed: `primary` is the server known to take writes now (the
    /// routing table already names it), or `None` when nobody can tell (then, in fleet mode,
    /// the change stays published and an instance resolves it from what the servers say).
    /// Releases the held work.
    pub(crate) async fn abandon(mut self, primary: Option<usize>) {
        self.cluster.metrics.count_change(self.failover, None);
        Arc::clone(&self.store).end(primary).await;
        self.release();
    }

    fn release(&mut self) {
        self.generation = None;
        self.cluster.gate.set(|h| h.primary = false);
        self.held = false;
    }
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        warn!(cluster = %self.cluster.config.name, "a change of primary ended without an outcome: held work is released");
        self.cluster.gate.set(|h| h.primary = false);
        if self.generation.take().is_some() {
            // Unlocked with no outcome: another instance resolves it from the servers.
            tokio::spawn(Arc::clone(&self.store).end(None));
        }
    }
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

/// How long a switchover or failover waits for the cluster's change lock: the monitor holds it
/// for a moment when it follows the servers; a running switchover holds it far longer, and
/// then the second one is refused.
pub(crate) const LOCK_WAIT: Duration = Duration::from_millis(500);

/// The steps of a change so far: each is reported as it completes (the admin command's live
/// lines), logged, added to the cluster's progress text (what a second command is told), and
/// kept for the answer.
pub(crate) struct Progress<'r> {
    cluster: &'r Cluster,
    /// The log event of a step (`switchover_step`, `failover_step`).
    event: &'static str,
    steps: Vec<Step>,
    report: &'r mut (dyn FnMut(&Step) + Send),
}

impl<'r> Progress<'r> {
    pub(crate) fn new(cluster: &'r Cluster, event: &'static str, report: &'r mut (dyn FnMut(&Step) + Send)) -> Self {
        Self { cluster, event, steps: Vec::new(), report }
    }

    /// Step `name`, begun `at`, is done.
    pub(crate) fn done(&mut self, name: &'static str, at: Instant, detail: String) {
        let step = Step { name, took: at.elapsed(), detail };
        (self.report)(&step);
        info!(event = self.event, cluster = %self.cluster.config.name, step = name, ms = step.took.as_secs_f64() * 1000.0, detail = %step.detail, "{} step", self.event.trim_end_matches("_step"));
        let mut progress = lock(&self.cluster.progress);
        if !progress.is_empty() {
            progress.push_str(", ");
        }
        progress.push_str(&format!("{name} done"));
        self.steps.push(step);
    }

    /// Step `name`, begun `at`, goes on: reported, not recorded.
    pub(crate) fn going(&mut self, name: &'static str, at: Instant, detail: String) {
        (self.report)(&Step { name, took: at.elapsed(), detail });
    }

    /// The steps done, for the answer.
    pub(crate) fn values(&self) -> Vec<serde_json::Value> {
        self.steps.iter().map(Step::value).collect()
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
