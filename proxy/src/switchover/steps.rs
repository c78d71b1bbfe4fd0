//! The steps of a switchover, in order, each a method of [`Switchover`]: checked and connected
//! before anything is held ([`Switchover::prepare`]), then, while new primary work is held,
//! drain, fence, writers, catch_up (with sequences and subscription for an upgrade cutover)
//! and promote ([`Switchover::steps`]); after a failure, [`Switchover::recover`].

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::warn;

use crate::change::{Change, Progress};
use crate::change::{ChangeError, StepError};
use crate::cluster::change;
use crate::cluster::{BackendState, Cluster};
use crate::replication::{in_force, within};
use crate::replication::{ControlConn, ControlTarget, Dialect, Position, Role};
use crate::upgrade::{Sides, Subscription};
use sqlswitch_config::{Credentials, Fence};

use super::How;

/// How often a step that waits reports how far it is.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// How the switchover's connections are named where the server shows them.
const APPLICATION: &str = "sqlswitch-switchover";

/// A switchover from `old` to `target`: what was found before anything was held, and what has
/// been done since.
pub(super) struct Switchover<'a> {
    pub(super) cluster: &'a Cluster,
    dialect: &'static Dialect,
    pub(super) old: usize,
    pub(super) target: usize,
    pub(super) old_name: String,
    pub(super) target_name: String,
    pub(super) deadline: Instant,
    timeout: Duration,
    old_conn: ControlConn,
    pub(super) new_conn: ControlConn,
    /// The target is a standby: it catches up, then is promoted.
    standby: bool,
    /// The target is another group's: a new group serves from the swap on.
    pub(super) cross_group: bool,
    /// An upgrade cutover: the target's running subscriptions to the old primary.
    pub(super) subscriptions: Vec<Subscription>,
    /// An upgrade cutover that creates the way back, with these credentials.
    pub(super) reverse_as: Option<Credentials>,
    /// The promotion was asked for (past the point of no return).
    promoted: bool,
    /// Subscriptions disabled on the target (enabled again if the cutover fails).
    disabled: Vec<Subscription>,
}

impl<'a> Switchover<'a> {
    /// Connects to both servers and checks the switchover can be done as `how` asks, so an
    /// unreachable server or a refused cutover fails it before anything is held.
    ///
    /// # Errors
    /// Why nothing was changed.
    pub(super) async fn prepare(
        cluster: &'a Cluster,
        (old, target): (usize, usize),
        (old_to, new_to): (&ControlTarget<'_>, &ControlTarget<'_>),
        how: How,
    ) -> Result<Self, StepError> {
        let dialect = Dialect::of(cluster.config.protocol);
        let deadline = Instant::now() + how.timeout;
        let (old_name, target_name) = (cluster.backends[old].name.clone(), cluster.backends[target].name.clone());
        let old_conn = ControlConn::connect(old_to, APPLICATION)
            .await
            .map_err(|e| StepError::new("connect", format!("{old_name}: {e}")))?;
        let mut new_conn = ControlConn::connect(new_to, APPLICATION)
            .await
            .map_err(|e| StepError::new("connect", format!("{target_name}: {e}")))?;
        // A target is a standby by its replication status, not by a read-only setting: a
        // MariaDB replica often runs with `read_only = 0`, and must still catch up before
        // writes move. One with a stopped replication channel is waited for too (and times out
        // cleanly if it never catches up).
        let target_role = within(deadline, new_conn.role(dialect))
            .await
            .map_err(|e| StepError::new("connect", format!("{target_name}: {e}")))?;
        let standby = matches!(target_role, Role::Replica | Role::Stopped);
        if standby && !how.promote {
            return Err(StepError::new(
                "promote",
                format!("{target_name} is a standby; add `promote`, or promote it first"),
            ));
        }
        let mut s = Self {
            cluster,
            dialect,
            old,
            target,
            old_name,
            target_name,
            deadline,
            timeout: how.timeout,
            old_conn,
            new_conn,
            standby,
            cross_group: cluster.backends[target].group_id != cluster.backends[old].group_id,
            subscriptions: Vec::new(),
            reverse_as: None,
            promoted: false,
            disabled: Vec::new(),
        };
        // Another group's primary, or a logical subscriber: an upgrade cutover, checked first.
        if dialect.logical && !standby {
            s.check_cutover(how).await?;
        }
        s.check_reverse(how)?;
        Ok(s)
    }

    /// The upgrade cutover's own checks (`upgrade-check`): no data lost, nothing broken unless
    /// `force`, the way back possible when asked for, the target alone in its group.
    async fn check_cutover(&mut self, how: How) -> Result<(), StepError> {
        let (cluster, old, target) = (self.cluster, self.old, self.target);
        let (name, target_name) = (&cluster.config.name, &self.target_name);
        let sides = Sides { cluster, old, target, deadline: self.deadline };
        let check = crate::upgrade::check(&sides).await.map_err(|e| StepError::new("upgrade-check", e))?;
        if !self.cross_group && check.subscriptions.is_empty() {
            return Ok(());
        }
        let losses: Vec<&str> = check.losses().iter().map(|f| f.what.as_str()).collect();
        if !losses.is_empty() {
            return Err(StepError::new(
                "upgrade-check",
                format!(
                    "the cutover to {target_name} would lose data, nothing was changed (`force` does \
                 not override this): {} (`upgrade-check {name} {target_name}` says what to do)",
                    losses.join("; ")
                ),
            ));
        }
        let blocking: Vec<&str> = check.blocking().iter().map(|f| f.what.as_str()).collect();
        if !blocking.is_empty() && !how.force {
            return Err(StepError::new(
                "upgrade-check",
                format!(
                    "the cutover to {target_name} would break, nothing was changed: {} \
                 (`upgrade-check {name} {target_name}` says what to do; `force` cuts over anyway)",
                    blocking.join("; ")
                ),
            ));
        }
        if let (true, Some(why)) = (how.reverse, &check.no_reverse) {
            return Err(StepError::new(
                "reverse",
                format!("the way back cannot be created, nothing was changed: {why}"),
            ));
        }
        // Only running subscriptions can be waited for (`force` past a disabled one).
        self.subscriptions = check.subscriptions.into_iter().filter(|s| s.enabled).collect();
        if self.subscriptions.is_empty() || self.cross_group {
            return Ok(());
        }
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
            .filter(|(i, _)| table.states.get(*i).is_some_and(|s| *s != BackendState::Removed))
            .map(|(_, b)| b.name.as_str())
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        Err(StepError::new(
            "upgrade-check",
            format!(
            "{target_name} is a logical-replication subscriber in the serving group, beside {}: put it (and its own \
             standbys) in a group of its own (`group = \"new\"` in its [[cluster.backend]]) and reload; nothing was \
             changed",
            others.join(", ")
        ),
        ))
    }

    /// `reverse` is possible: an upgrade cutover, with `replication` credentials.
    fn check_reverse(&mut self, how: How) -> Result<(), StepError> {
        if !how.reverse {
            return Ok(());
        }
        if self.subscriptions.is_empty() {
            return Err(StepError::new(
                "reverse",
                format!("{} is not a logical-replication subscriber of {}", self.target_name, self.old_name),
            ));
        }
        let Some(creds) = self.cluster.config.replication.clone() else {
            return Err(StepError::new(
                "reverse",
                "the cluster has no `replication` credentials for the old primary to subscribe with",
            ));
        };
        self.reverse_as = Some(creds);
        Ok(())
    }

    /// The steps while new primary work is held, up to the promotion: returns the old
    /// primary's final position.
    ///
    /// # Errors
    /// The step that failed, as `step: why`.
    pub(super) async fn steps(
        &mut self,
        change: &Change<'_>,
        progress: &mut Progress<'_>,
    ) -> Result<Position, StepError> {
        self.drain(change, progress).await?;
        self.fence(progress).await?;
        self.writers(progress).await?;
        let at = Instant::now();
        let old_name = self.old_name.clone();
        let final_text = within(self.deadline, self.old_conn.value(self.dialect.position))
            .await
            .map_err(|e| StepError::new("catch_up", e))?;
        let final_pos = self.dialect.primary_position(&final_text).ok_or_else(|| {
            StepError::new("catch_up", format!("cannot compare position {final_text:?} of {old_name}"))
        })?;
        if !self.subscriptions.is_empty() {
            self.catch_up_logical(change, progress, &final_pos, &final_text).await?;
        } else if self.standby {
            self.catch_up_standby(&final_pos, &final_text).await?;
            progress.done("catch_up", at, format!("{} applied {final_text}", self.target_name));
        } else {
            progress.done("catch_up", at, format!("{} is not a standby: nothing to apply", self.target_name));
        }
        self.promote(change, progress).await?;
        Ok(final_pos)
    }

    /// Lets in-flight primary work finish (in fleet mode, each instance says when its own has;
    /// one whose lease expires is no longer waited for).
    async fn drain(&mut self, change: &Change<'_>, progress: &mut Progress<'_>) -> Result<(), StepError> {
        let at = Instant::now();
        if let Some(instances) = change.acknowledged(self.deadline).await? {
            progress.done("acknowledged", at, format!("{instances} instance(s) hold, with no primary work in flight"));
        }
        let at = Instant::now();
        loop {
            let busy = self.cluster.gate.primary_busy.load(Ordering::SeqCst);
            if busy == 0 {
                break;
            }
            if Instant::now() >= self.deadline {
                let timeout = self.timeout;
                return Err(StepError::new(
                    "drain",
                    format!("{busy} session(s) still had primary work in flight after {timeout:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        progress.done("drain", at, "no primary work in flight".into());
        Ok(())
    }

    /// Fences the old primary, and sees the fence in force (PostgreSQL's reload only signals).
    async fn fence(&mut self, progress: &mut Progress<'_>) -> Result<(), StepError> {
        let at = Instant::now();
        let (old_name, deadline) = (&self.old_name, self.deadline);
        within(deadline, self.old_conn.exec_all(self.dialect.fence))
            .await
            .map_err(|e| StepError::new("fence", format!("{old_name}: {e}")))?;
        in_force(&mut self.old_conn, self.dialect, true, deadline)
            .await
            .map_err(|e| StepError::new("fence", format!("{old_name}: {e}")))?;
        progress.done("fence", at, format!("{old_name} refuses new writes"));
        Ok(())
    }

    /// Every transaction that could still commit on the old primary ends (sessions that did
    /// not come through sqlswitch, or users the fence does not stop).
    async fn writers(&mut self, progress: &mut Progress<'_>) -> Result<(), StepError> {
        let at = Instant::now();
        let (old_name, deadline, dialect) = (self.old_name.clone(), self.deadline, self.dialect);
        let terminate = self.cluster.config.fence == Fence::Terminate;
        let (ended, not_ended) = if terminate {
            end_other_sessions(&mut self.old_conn, dialect, deadline)
                .await
                .map_err(|e| StepError::new("writers", format!("{old_name}: {e}")))?
        } else {
            (0, None)
        };
        let mut open = String::from("?");
        loop {
            match within(deadline, self.old_conn.value(dialect.open_writers)).await {
                Ok(n) if n == "0" => break,
                Ok(n) => open = n,
                Err(e) if Instant::now() < deadline => {
                    return Err(StepError::new("writers", format!("{old_name}: {e}")))
                }
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                let hint = match &not_ended {
                    Some(e) => format!("ending them failed: {e}"),
                    None if terminate => "they were ended and still run".to_owned(),
                    None => "fence = \"terminate\" ends them".to_owned(),
                };
                let timeout = self.timeout;
                return Err(StepError::new(
                    "writers",
                    format!("{open} other transaction(s) still open on {old_name} after {timeout:?} ({hint})"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let detail = match ended {
            0 => "no other transaction open".to_owned(),
            n => format!("ended {n} other session(s) (fence = \"terminate\"); no other transaction open"),
        };
        progress.done("writers", at, detail);
        Ok(())
    }

    /// Waits until the standby target has replayed the old primary's final position.
    async fn catch_up_standby(&mut self, final_pos: &Position, final_text: &str) -> Result<(), StepError> {
        loop {
            let text = within(self.deadline, self.new_conn.value(self.dialect.replayed))
                .await
                .map_err(|e| StepError::new("catch_up", e))?;
            let replayed = self
                .dialect
                .primary_position(&text)
                .ok_or_else(|| StepError::new("catch_up", format!("cannot compare position {text:?}")))?;
            if replayed.covers(final_pos) {
                return Ok(());
            }
            if Instant::now() >= self.deadline {
                let (target_name, timeout) = (&self.target_name, self.timeout);
                return Err(StepError::new(
                    "catch_up",
                    format!("{target_name} applied {text} of {final_text} within {timeout:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// An upgrade cutover: waits until the target's subscriptions have applied the final
    /// position, copies the sequences (they are not replicated), then, past the point of no
    /// return, disables the subscriptions.
    async fn catch_up_logical(
        &mut self,
        change: &Change<'_>,
        progress: &mut Progress<'_>,
        final_pos: &Position,
        final_text: &str,
    ) -> Result<(), StepError> {
        let at = Instant::now();
        let (deadline, target_name) = (self.deadline, self.target_name.clone());
        let final_lsn = final_pos.total();
        let mut reported = Instant::now();
        let mut behind = final_lsn;
        loop {
            let subs = &self.subscriptions;
            let now = crate::upgrade::caught_up(&mut self.old_conn, &mut self.new_conn, subs, final_lsn, deadline);
            match now.await {
                Ok(0) => break,
                Ok(n) => behind = n,
                Err(e) if Instant::now() < deadline => return Err(StepError::new("catch_up", e)),
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                let timeout = self.timeout;
                return Err(StepError::new("catch_up", format!(
                    "the subscription(s) of {target_name} still had {behind} bytes of {final_text} to apply after {timeout:?}"
                )));
            }
            if reported.elapsed() >= PROGRESS_EVERY {
                reported = Instant::now();
                progress.going("catch_up", at, format!("{behind} bytes still to apply"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let names: Vec<String> = self.subscriptions.iter().map(|s| s.name.clone()).collect();
        progress.done("catch_up", at, format!("{target_name} applied {final_text} ({})", names.join(", ")));

        let at = Instant::now();
        let sides = Sides { cluster: self.cluster, old: self.old, target: self.target, deadline };
        let mut set = 0;
        let mut news = Vec::new();
        let margin = self.cluster.config.sequence_margin;
        for database in crate::upgrade::databases(&self.subscriptions) {
            let (mut old_db, mut new_db) = sides.connect(database).await.map_err(|e| StepError::new("sequences", e))?;
            set += crate::upgrade::sync_sequences(&mut old_db, &mut new_db, margin, deadline)
                .await
                .map_err(|e| StepError::new("sequences", format!("{database}: {e}")))?;
            news.push((database.to_owned(), new_db));
        }
        progress.done("sequences", at, format!("{set} sequence(s) set on {target_name} (sequence_margin {margin})"));
        let at = Instant::now();
        // The point of no return: an instance taking over from here finishes the cutover.
        change.promoting().await?;
        for sub in &self.subscriptions {
            let Some((_, new_db)) = news.iter_mut().find(|(d, _)| *d == sub.database) else { continue };
            crate::upgrade::set_enabled(new_db, sub, false, deadline)
                .await
                .map_err(|e| StepError::new("subscription", format!("{}: {e}", sub.name)))?;
            self.disabled.push(sub.clone());
        }
        progress.done("subscription", at, format!("disabled {} on {target_name}", names.join(", ")));
        Ok(())
    }

    /// Promotes the target, or checks it is already writable; either way, clears any fence of
    /// ours, and sees it lifted for every session of the target before any client goes there.
    async fn promote(&mut self, change: &Change<'_>, progress: &mut Progress<'_>) -> Result<(), StepError> {
        let at = Instant::now();
        let (deadline, dialect, target_name) = (self.deadline, self.dialect, self.target_name.clone());
        let failed = |e: String| StepError::new("promote", format!("{target_name}: {e}"));
        change.promoting().await?;
        if self.standby {
            self.promoted = true;
            within(deadline, self.new_conn.exec_all(dialect.promote)).await.map_err(failed)?;
        }
        within(deadline, self.new_conn.exec_all(dialect.unfence)).await.map_err(failed)?;
        // Lifted for every session of the target (a fenced target: switching back after an
        // upgrade cutover), before any client is released to it.
        in_force(&mut self.new_conn, dialect, false, deadline).await.map_err(failed)?;
        let role = within(deadline, self.new_conn.role(dialect)).await.map_err(|e| StepError::new("promote", e))?;
        // A logical subscriber (an upgrade target) takes writes with its subscription running.
        if !matches!(role, Role::Writable | Role::Subscriber) {
            return Err(failed(format!("is {} after promotion, not writable", role.name())));
        }
        let what = if self.standby {
            "promoted"
        } else if !self.subscriptions.is_empty() {
            "takes writes (subscription disabled)"
        } else {
            "already writable"
        };
        progress.done("promote", at, format!("{target_name} {what}"));
        Ok(())
    }

    /// After a failed step: enables again the subscriptions a cutover disabled; then, before a
    /// promotion, undoes the fence and resumes on the old primary; after one, asks the target
    /// and serves from what it says (never two writable primaries). Returns the error, naming
    /// which server takes writes now, and whether the routing table's primary is known to be
    /// right (the fleet's change then ends with it).
    pub(super) async fn recover(&mut self, why: StepError) -> (ChangeError, bool) {
        let why = self.enable_again(why).await;
        let (cluster, dialect) = (self.cluster, self.dialect);
        let (old_name, target_name) = (&self.old_name, &self.target_name);
        let name = &cluster.config.name;
        let deadline = Instant::now() + cluster.config.connect_timeout;
        let target_role = if self.promoted { within(deadline, self.new_conn.role(dialect)).await.ok() } else { None };
        let known = !(self.promoted && target_role.is_none());
        warn!(event = "switchover_failed", cluster = %name, error = %why, "switchover failed");
        let (primary, outcome) = if !known {
            // Nobody can tell whether the promotion happened: take no guess. The old primary
            // stays fenced (writes are refused by it, none lost); the monitor follows the
            // servers once exactly one takes writes.
            (None, format!("; {target_name} did not answer after its promotion was asked for: no server is known to take writes, {old_name} stays fenced; see `status`"))
        } else if matches!(target_role, Some(Role::Writable | Role::ReadOnly | Role::Subscriber)) {
            // The target left recovery: it is the primary now, whatever failed after. The old
            // one stays fenced.
            change(cluster, |t| t.primary = self.target);
            let role = target_role.map_or("?", Role::name);
            (Some(target_name), format!(", after {target_name} was promoted: {target_name} is the primary now ({role}); {old_name} stays fenced"))
        } else if let Err(e) = within(deadline, self.old_conn.exec_all(dialect.unfence)).await {
            warn!(cluster = %name, error = %e, "could not undo the fence of the old primary");
            (
                None,
                format!("; undoing the fence of {old_name} failed too ({e}): no server may take writes, see `status`"),
            )
        } else {
            // Held work resumes on it: every session of it takes the reload first.
            if let Err(e) = in_force(&mut self.old_conn, dialect, false, deadline).await {
                warn!(cluster = %name, error = %e, "the old primary's fence is not seen lifted yet");
            }
            (Some(old_name), format!("; {old_name} is still the primary and takes writes"))
        };
        (ChangeError::failed("switchover", why, primary.cloned(), &outcome), known)
    }

    /// After a cutover failed past the step that disabled subscriptions: enable them again, so
    /// that the old primary, which takes writes again, still feeds the new cluster. Returns
    /// `why`, with what could not be undone.
    async fn enable_again(&mut self, mut why: StepError) -> StepError {
        let deadline = Instant::now() + self.cluster.config.connect_timeout;
        let sides = Sides { cluster: self.cluster, old: self.old, target: self.target, deadline };
        let mut failed = Vec::new();
        for sub in &self.disabled {
            let enabled = match sides.connect(&sub.database).await {
                Ok((_, mut new_db)) => crate::upgrade::set_enabled(&mut new_db, sub, true, deadline).await,
                Err(e) => Err(e),
            };
            if let Err(e) = enabled {
                failed.push(format!("{}: {e}", sub.name));
            }
        }
        if !failed.is_empty() {
            why.cause = format!(
                "{} (and enabling the subscription again failed: {}; ALTER SUBSCRIPTION ... ENABLE by hand)",
                why.cause,
                failed.join("; ")
            );
        }
        why
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
