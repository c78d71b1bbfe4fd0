//! What both protocols' sessions share: the two backend connections a session may hold (one
//! to the primary, one to a replica), the per-backend count of session connections, and the
//! session state carried from one connection to another ([`state`]).

pub mod core;
pub mod state;

use crate::cluster::Cluster;
use crate::gate::Wait;

/// Which of the session's two backend connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The connection to the primary.
    Primary,
    /// The connection to a replica.
    Replica,
}

impl Side {
    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Primary => Side::Replica,
            Side::Replica => Side::Primary,
        }
    }
}

/// One value per [`Side`]: a session's two backend connections. Indexed by the side itself,
/// so no index can be out of bounds.
#[derive(Debug)]
pub struct Pair<S> {
    primary: Option<S>,
    replica: Option<S>,
}

impl<S> Default for Pair<S> {
    fn default() -> Self {
        Self { primary: None, replica: None }
    }
}

impl<S> std::ops::Index<Side> for Pair<S> {
    type Output = Option<S>;

    fn index(&self, side: Side) -> &Option<S> {
        match side {
            Side::Primary => &self.primary,
            Side::Replica => &self.replica,
        }
    }
}

impl<S> std::ops::IndexMut<Side> for Pair<S> {
    fn index_mut(&mut self, side: Side) -> &mut Option<S> {
        match side {
            Side::Primary => &mut self.primary,
            Side::Replica => &mut self.replica,
        }
    }
}

impl<S> Pair<S> {
    /// Each side's value, the primary's first.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (Side, &mut Option<S>)> {
        [(Side::Primary, &mut self.primary), (Side::Replica, &mut self.replica)].into_iter()
    }
}

impl<S> IntoIterator for Pair<S> {
    type Item = (Side, Option<S>);
    type IntoIter = std::array::IntoIter<(Side, Option<S>), 2>;

    fn into_iter(self) -> Self::IntoIter {
        [(Side::Primary, self.primary), (Side::Replica, self.replica)].into_iter()
    }
}

/// Counts a session connection in its backend's `sessions` while it exists.
pub struct Counted<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Counted<'a> {
    /// Counts one more.
    pub fn new(counter: &'a std::sync::atomic::AtomicUsize) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Why the gate refused a statement, with the text for the client.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// `max_held` statements wait already (PostgreSQL 53400, MySQL 1105).
    Full(String),
    /// No server takes writes (PostgreSQL 08006, MySQL 1290).
    NoPrimary(String),
    /// Several servers take writes (PostgreSQL 25006, MySQL 1290).
    SplitBrain(String),
    /// Fleet mode: this instance cannot renew its lease, or has not read the fleet's routing
    /// yet (PostgreSQL 25006, MySQL 1290).
    Fenced(String),
}

impl Refusal {
    /// The text for the client.
    pub fn text(&self) -> &str {
        match self {
            Refusal::Full(t) | Refusal::NoPrimary(t) | Refusal::SplitBrain(t) | Refusal::Fenced(t) => t,
        }
    }
}

/// A session's standing at its cluster's gate: counted among the sessions with primary work in
/// flight from the moment work heads to the primary until that work is over, so that a
/// switchover's drain waits for it and a pause holds new work at the boundary.
#[derive(Debug, Default)]
pub struct PrimaryWork {
    counted: bool,
}

impl PrimaryWork {
    /// Lets work through the gate at a transaction boundary. Primary work is counted before the
    /// gate is looked at: a switchover closes the gate before it counts, so one of the two
    /// always sees the other. `Ok(true)`: through at once. `Ok(false)`: it waited, and the
    /// routing table may have changed: decide again. `Err(refusal)`: refuse this one.
    /// `read`: the work is provably a read, which a fenced fleet instance still sends to the
    /// primary (when no replica can take it): the fence is about writes.
    pub async fn pass(&mut self, cluster: &Cluster, primary: bool, read: bool) -> Result<bool, Refusal> {
        if self.open(cluster, primary, read) {
            return Ok(true);
        }
        // Boxed: waiting at a closed gate is rare, and its state would otherwise be part of
        // every session's future (and of an idle session's memory) for its whole life.
        Box::pin(self.wait(cluster, primary)).await
    }

    /// Counts primary work in, and says whether the gate lets it through at once.
    fn open(&mut self, cluster: &Cluster, primary: bool, read: bool) -> bool {
        if primary && !self.counted {
            cluster.gate.enter_primary();
            self.counted = true;
        }
        !cluster.gate.closed(primary) || (primary && read && cluster.gate.only_fenced())
    }

    /// Waits at a closed gate (counted out meanwhile); see [`PrimaryWork::pass`].
    async fn wait(&mut self, cluster: &Cluster, primary: bool) -> Result<bool, Refusal> {
        self.leave(cluster);
        // While the servers disagree on the primary, writes wait up to connect_timeout (the
        // time a backend is given to answer) for them to agree, then are refused.
        match cluster.gate.wait(primary, cluster.config.max_held, cluster.config.connect_timeout).await {
            Wait::Through => Ok(false),
            Wait::Full => Err(Refusal::Full(format!(
                "sqlswitch holds {} statements for a pause or switchover already (max_held); try again",
                cluster.config.max_held
            ))),
            Wait::FleetStuck => Err(Refusal::NoPrimary(
                "sqlswitch held this for a change of primary published by its fleet that has not ended (see \
                 `sqlswitch ctl status`; `sqlswitch ctl fleet-resolve CLUSTER BACKEND` ends a stuck one)"
                    .to_owned(),
            )),
            Wait::Doubt if cluster.gate.hold().foreign => Err(Refusal::Fenced(
                "sqlswitch cannot send this to a primary: its fleet's primary is a server this instance's config \
                 does not have (give every instance the same backends; see `sqlswitch ctl status`): writes are \
                 refused, reads go on"
                    .to_owned(),
            )),
            Wait::Doubt if cluster.gate.hold().fenced || cluster.gate.lease_lost() => Err(Refusal::Fenced(
                "sqlswitch is fenced from its fleet (its etcd lease is not renewed, or it has not read the fleet's \
                 routing yet): writes are refused, reads go on; see `sqlswitch ctl status`"
                    .to_owned(),
            )),
            Wait::Doubt => {
                let problem =
                    cluster.discovery.lock().unwrap_or_else(std::sync::PoisonError::into_inner).problem.clone();
                let what = problem
                    .as_ref()
                    .map_or_else(|| "the servers disagree on the primary".to_owned(), ToString::to_string);
                let text = format!("sqlswitch cannot send this to a primary: {what} (primary work waits until exactly one server takes writes; see `sqlswitch ctl status`)");
                Err(match problem {
                    Some(crate::cluster::Problem::SplitBrain(_)) => Refusal::SplitBrain(text),
                    _ => Refusal::NoPrimary(text),
                })
            }
        }
    }

    /// The session's primary work is over (or never started).
    pub fn leave(&mut self, cluster: &Cluster) {
        if self.counted {
            cluster.gate.leave_primary();
            self.counted = false;
        }
    }
}
