//! The routing decision, as a pure function of the batch, the session and a snapshot of the
//! backends: no I/O, no locks, unit-tested here. README's "Routing" in code: a batch goes to a
//! replica only when it is provably a read, outside a transaction (or in a `READ ONLY` one that
//! began there), the session is not pinned, a replica is up and within `max_replica_lag`, and
//! that replica has replayed past the session's last write (read-your-writes). Everything else,
//! including everything uncertain, goes to the primary.

/// Where a batch runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The primary.
    Primary,
    /// The replica at this backend index.
    Replica(usize),
}

/// Why, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A provable read, on a replica.
    Read,
    /// A read-only session, on a replica.
    ReadOnlySession,
    /// Not provably a read.
    Write,
    /// Inside a transaction: where the transaction runs.
    Transaction,
    /// The session holds primary-only state (temp table, lock, LISTEN, ...).
    Pinned,
    /// SET and friends run on the primary and are replayed on replicas.
    SessionState,
    /// No replica is up and within the lag limit (or none is monitored).
    NoReplica,
    /// No usable replica has replayed the session's last write yet.
    ReadYourWrites,
}

impl Reason {
    /// Every reason, for registering metrics.
    pub const ALL: [Reason; 8] = [
        Reason::Read,
        Reason::ReadOnlySession,
        Reason::Write,
        Reason::Transaction,
        Reason::Pinned,
        Reason::SessionState,
        Reason::NoReplica,
        Reason::ReadYourWrites,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Read => "read",
            Reason::ReadOnlySession => "read_only_session",
            Reason::Write => "write",
            Reason::Transaction => "transaction",
            Reason::Pinned => "pinned",
            Reason::SessionState => "session_state",
            Reason::NoReplica => "no_replica",
            Reason::ReadYourWrites => "read_your_writes",
        }
    }

    /// Whether a statement can run on a replica for this reason (a read, a read-only session,
    /// a transaction that began there).
    pub fn on_replica(self) -> bool {
        matches!(self, Reason::Read | Reason::ReadOnlySession | Reason::Transaction)
    }

    /// Index into [`Reason::ALL`].
    pub fn index(self) -> usize {
        Reason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// What the session knows about the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Batch {
    /// Every statement in it is provably a read.
    pub read: bool,
    /// It is `BEGIN READ ONLY` / `START TRANSACTION READ ONLY`: the transaction may run on a replica.
    pub begins_read_only_tx: bool,
    /// It changes session state (SET, RESET, PREPARE, ...).
    pub session_state: bool,
}

/// What the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionView {
    /// Read-only session: everything on replicas when possible.
    pub read_only: bool,
    /// Pinned to the primary.
    pub pinned: bool,
    /// A transaction is open on this target.
    pub in_tx_on: Option<Target>,
    /// When the session's last write was acknowledged (clock micros), if ever.
    pub last_write: Option<u64>,
    /// The replica the session already has a connection to.
    pub current_replica: Option<usize>,
}

/// One backend as routing sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendView {
    /// A replica (not the primary).
    pub replica: bool,
    /// Reachable at the last check, and not drained.
    pub up: bool,
    /// Share of reads.
    pub weight: u32,
    /// The newest moment (clock micros) whose primary position this replica has replayed;
    /// 0 when unknown.
    pub caught_up_to: u64,
    /// Replication delay at the last check, in micros.
    pub lag: u64,
}

/// The snapshot a decision reads.
#[derive(Debug, Clone, Copy)]
pub struct Table<'a> {
    /// Every backend of the cluster.
    pub backends: &'a [BackendView],
    /// `max_replica_lag` in micros.
    pub max_lag: u64,
}

impl Table<'_> {
    /// Whether backend `i` may serve reads; a backend the table does not cover may not.
    fn usable(&self, i: usize) -> bool {
        self.backends
            .get(i)
            .is_some_and(|b| b.replica && b.up && b.weight > 0 && b.caught_up_to > 0 && b.lag <= self.max_lag)
    }

    fn caught_up_to(&self, i: usize) -> u64 {
        self.backends.get(i).map_or(0, |b| b.caught_up_to)
    }

    fn weight(&self, i: usize) -> u64 {
        self.backends.get(i).map_or(0, |b| u64::from(b.weight))
    }
}

/// Decides where a batch runs. `pick` in `[0, 1)` chooses among replicas by weight.
pub fn route(batch: &Batch, s: &SessionView, t: &Table<'_>, pick: f64) -> (Target, Reason) {
    if let Some(owner) = s.in_tx_on {
        return (owner, Reason::Transaction);
    }
    let wants_replica = if s.read_only {
        true
    } else if s.pinned {
        return (Target::Primary, Reason::Pinned);
    } else if batch.session_state {
        return (Target::Primary, Reason::SessionState);
    } else {
        batch.read || batch.begins_read_only_tx
    };
    if !wants_replica {
        return (Target::Primary, Reason::Write);
    }
    let fresh = |i: usize| s.read_only || s.last_write.is_none_or(|w| t.caught_up_to(i) > w);
    let usable = (0..t.backends.len()).filter(|&i| t.usable(i));
    let mut any_usable = false;
    let mut total = 0u64;
    for i in usable.clone() {
        any_usable = true;
        if fresh(i) {
            total += t.weight(i);
        }
    }
    if !any_usable {
        return (Target::Primary, Reason::NoReplica);
    }
    if total == 0 {
        return (Target::Primary, Reason::ReadYourWrites);
    }
    let reason = if s.read_only { Reason::ReadOnlySession } else { Reason::Read };
    if let Some(current) = s.current_replica {
        if t.usable(current) && fresh(current) {
            return (Target::Replica(current), reason);
        }
    }
    // Weighted choice: walk the cumulative weights to `pick * total`.
    let mut point = (pick.clamp(0.0, 0.999_999) * total as f64) as u64;
    let mut last = None;
    for i in usable.filter(|&i| fresh(i)) {
        let w = t.weight(i);
        last = Some(i);
        if point < w {
            return (Target::Replica(i), reason);
        }
        point -= w;
    }
    last.map_or((Target::Primary, Reason::NoReplica), |i| (Target::Replica(i), reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRIMARY: BackendView = BackendView { replica: false, up: true, weight: 1, caught_up_to: 0, lag: 0 };
    const NOW: u64 = 10_000_000;

    /// A replica caught up to `caught_up_to`, checked just now.
    fn replica(caught_up_to: u64) -> BackendView {
        BackendView { replica: true, up: true, weight: 1, caught_up_to, lag: NOW.saturating_sub(caught_up_to) }
    }

    fn table(backends: &[BackendView]) -> Table<'_> {
        Table { backends, max_lag: 1_000_000 }
    }

    const READ: Batch = Batch { read: true, begins_read_only_tx: false, session_state: false };
    const WRITE: Batch = Batch { read: false, begins_read_only_tx: false, session_state: false };

    #[test]
    fn reads_go_to_a_fresh_replica_and_writes_to_the_primary() {
        let b = [PRIMARY, replica(9_900_000), replica(9_950_000)];
        let s = SessionView::default();
        assert!(matches!(route(&READ, &s, &table(&b), 0.0), (Target::Replica(1), Reason::Read)));
        assert!(matches!(route(&READ, &s, &table(&b), 0.9), (Target::Replica(2), Reason::Read)));
        assert_eq!(route(&WRITE, &s, &table(&b), 0.0), (Target::Primary, Reason::Write));
    }

    #[test]
    fn transactions_pins_and_session_state_stay_put() {
        let b = [PRIMARY, replica(9_900_000)];
        let in_tx = SessionView { in_tx_on: Some(Target::Replica(1)), ..Default::default() };
        assert_eq!(route(&WRITE, &in_tx, &table(&b), 0.0), (Target::Replica(1), Reason::Transaction));
        let pinned = SessionView { pinned: true, ..Default::default() };
        assert_eq!(route(&READ, &pinned, &table(&b), 0.0), (Target::Primary, Reason::Pinned));
        let set = Batch { session_state: true, ..READ };
        assert_eq!(route(&set, &SessionView::default(), &table(&b), 0.0), (Target::Primary, Reason::SessionState));
        let begin_ro = Batch { begins_read_only_tx: true, ..WRITE };
        assert_eq!(route(&begin_ro, &SessionView::default(), &table(&b), 0.0), (Target::Replica(1), Reason::Read));
    }

    #[test]
    fn lagging_down_and_unknown_replicas_get_no_reads() {
        let s = SessionView::default();
        let lagging = [PRIMARY, replica(8_000_000)];
        assert_eq!(route(&READ, &s, &table(&lagging), 0.0), (Target::Primary, Reason::NoReplica));
        let down = [PRIMARY, BackendView { up: false, ..replica(9_999_999) }];
        assert_eq!(route(&READ, &s, &table(&down), 0.0), (Target::Primary, Reason::NoReplica));
        let unknown = [PRIMARY, replica(0)];
        assert_eq!(route(&READ, &s, &table(&unknown), 0.0), (Target::Primary, Reason::NoReplica));
        let weightless = [PRIMARY, BackendView { weight: 0, ..replica(9_999_999) }];
        assert_eq!(route(&READ, &s, &table(&weightless), 0.0), (Target::Primary, Reason::NoReplica));
    }

    #[test]
    fn read_your_writes_needs_a_replica_caught_up_past_the_write() {
        let b = [PRIMARY, replica(9_900_000), replica(9_990_000)];
        let wrote = SessionView { last_write: Some(9_950_000), ..Default::default() };
        assert_eq!(route(&READ, &wrote, &table(&b), 0.0), (Target::Replica(2), Reason::Read));
        let wrote_later = SessionView { last_write: Some(9_995_000), ..Default::default() };
        assert_eq!(route(&READ, &wrote_later, &table(&b), 0.0), (Target::Primary, Reason::ReadYourWrites));
        // The same instant is not "after" the write.
        let same = SessionView { last_write: Some(9_990_000), ..Default::default() };
        assert_eq!(route(&READ, &same, &table(&b), 0.0).0, Target::Primary);
    }

    #[test]
    fn the_current_replica_is_kept_while_it_is_usable() {
        let b = [PRIMARY, replica(9_900_000), replica(9_950_000)];
        let s = SessionView { current_replica: Some(2), ..Default::default() };
        assert_eq!(route(&READ, &s, &table(&b), 0.0), (Target::Replica(2), Reason::Read));
        let lagging = [PRIMARY, replica(9_900_000), replica(1)];
        assert_eq!(route(&READ, &s, &table(&lagging), 0.99), (Target::Replica(1), Reason::Read));
    }

    #[test]
    fn read_only_sessions_use_replicas_for_everything_and_ignore_their_writes() {
        let b = [PRIMARY, replica(9_900_000)];
        let s = SessionView { read_only: true, last_write: Some(u64::MAX), ..Default::default() };
        assert_eq!(route(&WRITE, &s, &table(&b), 0.0), (Target::Replica(1), Reason::ReadOnlySession));
        let lagging = [PRIMARY, replica(1)];
        assert_eq!(route(&READ, &s, &table(&lagging), 0.0), (Target::Primary, Reason::NoReplica));
    }

    #[test]
    fn weights_share_the_reads() {
        let b = [PRIMARY, BackendView { weight: 3, ..replica(9_999_000) }, replica(9_999_000)];
        let s = SessionView::default();
        let picks: Vec<_> = (0..8).map(|k| route(&READ, &s, &table(&b), f64::from(k) / 8.0).0).collect();
        let first = picks.iter().filter(|t| **t == Target::Replica(1)).count();
        assert_eq!(first, 6, "{picks:?}");
    }
}
