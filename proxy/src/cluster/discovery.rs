//! What the monitor last heard the servers say about who the primary is, and why it doubts it.

/// What the monitor last heard the servers say about their roles.
#[derive(Debug, Default, Clone)]
pub struct Discovery {
    /// Per backend: `writable`, `replica`, `read-only`, or why it did not answer.
    pub roles: Vec<String>,
    /// Why the primary is in doubt; `None` when exactly one backend takes writes and it is the
    /// primary.
    pub problem: Option<Problem>,
}

/// Why the monitor doubts the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The primary (named) does not answer the monitor: the servers said nothing, so nothing is
    /// held; its sessions find out for themselves.
    PrimaryUnknown(String),
    /// Every backend answered, none takes writes.
    NoPrimary,
    /// These backends all take writes.
    SplitBrain(Vec<String>),
    /// The primary is known, and these deposed primaries take writes too: they are never
    /// followed (nothing is held), but they should be fenced or re-admitted (`rejoin`).
    Deposed(Vec<String>),
    /// No server that may be followed takes writes, and these deposed primaries do: none is
    /// followed (`rejoin` one whose history is the primary's), and primary work waits.
    OnlyDeposed(Vec<String>),
    /// The primary stopped answering, and another server (`candidate`) takes writes: it is
    /// followed only once the primary has been silent for several rounds (a blip is not a
    /// failover), and only if it replayed the primary's last sample (`lacks_writes` otherwise:
    /// following it would lose acknowledged writes; `failover` is the operator's choice).
    Waiting {
        /// The server that takes writes.
        candidate: String,
        /// It did not replay the silent primary's last position.
        lacks_writes: bool,
    },
}

impl Problem {
    /// Whether primary work waits (and is refused after a while) until it is over.
    pub fn holds(&self) -> bool {
        !matches!(self, Problem::PrimaryUnknown(_) | Problem::Deposed(_))
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::PrimaryUnknown(name) => write!(f, "primary unknown: {name} does not answer the monitor"),
            Problem::NoPrimary => f.write_str("no primary: no backend takes writes"),
            Problem::SplitBrain(names) => write!(f, "split brain: {} take writes", names.join(", ")),
            Problem::Deposed(names) => write!(
                f,
                "deposed primary {} takes writes and is not followed: fence it, or `sqlswitch ctl rejoin` it once \
                 it has the current primary's history",
                names.join(", ")
            ),
            Problem::OnlyDeposed(names) => write!(
                f,
                "no primary: only deposed primary {} takes writes and is not followed: `sqlswitch ctl rejoin` it if \
                 its history is the last primary's",
                names.join(", ")
            ),
            Problem::Waiting { candidate, lacks_writes: false } => write!(
                f,
                "the primary is silent and {candidate} takes writes: following it if the primary stays silent"
            ),
            Problem::Waiting { candidate, lacks_writes: true } => write!(
                f,
                "the primary is silent and {candidate} takes writes, but it lacks writes the primary acknowledged: \
                 not followed (`sqlswitch ctl failover` accepts the loss)"
            ),
        }
    }
}
