//! What the session core needs of a protocol's backend connection.

use super::{Held, SessionState};
use crate::backend::BackendError;
use crate::cluster::Cluster;
use crate::pool::{PoolKey, Pooled};

/// What the core needs of a protocol's backend connection.
pub trait Link: Pooled + Sized {
    /// The session reads its active connection all the time (PostgreSQL), so a connection the
    /// server closed is noticed there; otherwise (MySQL, one command at a time) every
    /// connection is checked before it is used.
    const WATCHED: bool;

    /// The kinds of state that keep a session on its connection ([`crate::session::state::Held`] bits) that the
    /// server can be asked whether the connection still holds.
    const CHECKED: u8;

    /// Whether the connection still holds state of the kinds [`Link::CHECKED`] (its server
    /// answers); what the server sends the client meanwhile (notifications) is added to
    /// `aside`.
    async fn holds_unmovable(&mut self, aside: &mut bytes::BytesMut) -> Result<bool, BackendError>;

    /// Runs the session-state statements `sql` (those this connection has not run yet), in order.
    async fn replay(&mut self, sql: &[String]) -> Result<(), BackendError>;

    /// Makes the connection's transactions read-only for the session (in maintenance the
    /// server itself refuses what the classifier cannot see), or, with `false`, puts back what
    /// the login gave it.
    async fn set_read_only(&mut self, on: bool) -> Result<(), BackendError>;

    /// Resets the connection and returns it to backend `backend`'s pool under `key`, or closes
    /// it when it cannot be made clean for another session.
    async fn release(self, cluster: &Cluster, backend: usize, key: &PoolKey, state: &SessionState);

    /// How many of `replay` (a session's state, first to last) the connection holds as it
    /// is: 0 for one as its login or last reset left it; `None` when it holds state of another
    /// session's that `replay` does not begin with (it must be cleared first).
    fn holds(&self, replay: &[String]) -> Option<usize>;

    /// Returns it to the state its login gave (a connection that `holds` nothing of a new
    /// session's).
    async fn clear(&mut self) -> Result<(), BackendError>;

    /// The named statements prepared on it that it was given back with, taken (transaction
    /// pooling; MySQL: none).
    fn take_statements(&mut self) -> Vec<(String, bytes::Bytes)>;

    /// Transaction pooling: returns it to backend `backend`'s pool under `key`, noting that it
    /// holds `held`; with `reset` (the session ran more than reads on it), reset first as at a
    /// session's end, keeping only its named statements (prepared again after the reset).
    async fn give_back(self, cluster: &Cluster, backend: usize, key: &PoolKey, held: Held, reset: bool);

    /// Whether [`Link::give_back_now`] serves: a connection given back without a reset goes
    /// back without awaiting (PostgreSQL; a MySQL one is always reset).
    const GIVES_BACK_NOW: bool = false;

    /// Transaction pooling's common case, without awaiting: [`Link::give_back`] without a
    /// reset; one the pool cannot keep is closed in the background. Called only when
    /// [`Link::GIVES_BACK_NOW`].
    fn give_back_now(self, cluster: &Cluster, backend: usize, key: &PoolKey, held: Held) {
        let _ = (cluster, backend, key, held);
    }
}
