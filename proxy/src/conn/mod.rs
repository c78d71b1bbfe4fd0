//! Backend connections, below the cluster that pools them and the sessions and control paths
//! that use them: a PostgreSQL connection ([`pg`], with its own SCRAM client, [`scram`]) and a
//! MySQL/MariaDB one ([`mysql`]). Each logs in, relays bytes and resets for the pool; none
//! knows the cluster, the routing or a session's rules.

pub mod mysql;
pub mod pg;
pub mod scram;
pub mod scramble;

/// What a connection given back between transactions (transaction pooling) holds of the
/// session that had it.
#[derive(Debug, Default)]
pub struct Held {
    /// The session's state statements (the first `.1` of `.0`); `None`: none of a session's.
    pub replay: Option<(std::sync::Arc<Vec<String>>, usize)>,
    /// The named statements prepared on it, with their Parse messages (empty when unknown: a
    /// statement another session redefined or closed elsewhere).
    pub statements: Vec<(String, bytes::Bytes)>,
}

/// How many of `replay` (a session's state, first to last) a connection holds that was given
/// back holding `held` (the first `.1` of `.0`; `None`: nothing of a session's): `None` when it
/// holds state `replay` does not begin with.
pub fn holds_prefix(held: Option<&(std::sync::Arc<Vec<String>>, usize)>, replay: &[String]) -> Option<usize> {
    match held {
        None => Some(0),
        Some((list, n)) => (list.get(..*n)? == replay.get(..*n)?).then_some(*n),
    }
}
