//! Query cancellation. Each session gets its own process id and secret from the proxy; a
//! CancelRequest naming them is forwarded, with the backend's own key, to the backend that runs
//! the session's query. The registry is shared by every listener of the daemon, because a client
//! may send its cancel on any connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncWriteExt;

/// Where a session's query runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    /// The backend's address (the `ip:port` the connection reached, or a Unix socket's path).
    pub addr: Arc<str>,
    /// The backend's process id.
    pub pid: i32,
    /// The backend's secret key.
    pub secret: i32,
}

#[derive(Debug)]
struct Entry {
    secret: i32,
    target: Option<CancelTarget>,
}

/// The process id a client is given: the proxy's own, never a server process's. It is drawn
/// from `[2^30, 2^31)`, above any operating system's process ids (Linux's `pid_max` is at most
/// 2^22), so `pg_terminate_backend(<it>)` or `pg_cancel_backend(<it>)` run on a server reach
/// nobody, where a random small number could name another client's pooled connection (decision
/// 0017).
pub fn proxy_pid(random: i32) -> i32 {
    (random & 0x3FFF_FFFF) | 0x4000_0000
}

/// All sessions' cancel keys.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<i32, Entry, foldhash::fast::RandomState>>,
    /// The last server process of sessions that ended, newest last (at most [`RECENT`]): a
    /// notification is often delivered after its sender quit (at the listener's next
    /// transaction boundary), and still names the pid the sender's client was given.
    ended: Mutex<std::collections::VecDeque<(CancelTarget, i32)>>,
}

/// How many ended sessions' server processes [`Registry`] remembers.
const RECENT: usize = 1024;

impl Registry {
    /// Hands out a fresh key; the returned guard removes it when the session ends.
    pub fn register(self: &Arc<Self>) -> CancelKey {
        let mut map = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            let pid = proxy_pid(rand::random::<i32>());
            if let std::collections::hash_map::Entry::Vacant(slot) = map.entry(pid) {
                let secret = rand::random::<i32>();
                slot.insert(Entry { secret, target: None });
                return CancelKey { registry: Arc::clone(self), pid, secret };
            }
        }
    }

    fn target(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        let map = self.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(&pid).filter(|e| e.secret == secret).and_then(|e| e.target.clone())
    }

    /// Forwards a client's CancelRequest. Unknown keys are ignored silently, as PostgreSQL does.
    pub async fn cancel(&self, pid: i32, secret: i32) {
        if let Some(target) = self.target(pid, secret) {
            send_cancel(target).await;
        }
    }
}

/// Sends a CancelRequest for `target` to its backend.
pub async fn send_cancel(target: CancelTarget) {
    let mut buf = BytesMut::with_capacity(16);
    buf.put_i32(16);
    buf.put_i32(sqlswitch_protocol::pg::startup::CANCEL_REQUEST_CODE);
    buf.put_i32(target.pid);
    buf.put_i32(target.secret);
    match crate::tls::BackendStream::connect(&target.addr).await {
        Ok(mut s) => {
            if let Err(e) = s.write_all(&buf).await {
                tracing::warn!(backend = %target.addr, error = %e, "could not send cancel request");
            }
        }
        Err(e) => tracing::warn!(backend = %target.addr, error = %e, "could not connect to send cancel request"),
    }
}

/// A session's key; removed from the registry on drop.
#[derive(Debug)]
pub struct CancelKey {
    registry: Arc<Registry>,
    /// Process id given to the client.
    pub pid: i32,
    /// Secret given to the client.
    pub secret: i32,
}

impl CancelKey {
    /// Points the key at the backend now running the session's queries.
    pub fn set_target(&self, target: Option<CancelTarget>) {
        let mut map = self.registry.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(e) = map.get_mut(&self.pid) {
            e.target = target;
        }
    }
}

impl CancelKey {
    /// The pid given to the client whose session's queries run on the server process `pid` at
    /// `addr`, if one does: a notification one session sends names the pid its client was given,
    /// for every listener (as directly). A scan of the registry: notifications are rare beside
    /// statements.
    pub fn client_pid_of(&self, addr: &str, pid: i32) -> Option<i32> {
        let same = |t: &CancelTarget| t.pid == pid && &*t.addr == addr;
        let live = {
            let map = self.registry.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            map.iter().find(|(_, e)| e.target.as_ref().is_some_and(same)).map(|(client, _)| *client)
        };
        live.or_else(|| {
            let ended = self.registry.ended.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            ended.iter().rev().find(|(t, _)| same(t)).map(|(_, client)| *client)
        })
    }
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        let mut map = self.registry.sessions.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let last = map.remove(&self.pid).and_then(|e| e.target);
        drop(map);
        if let Some(target) = last {
            let mut ended = self.registry.ended.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if ended.len() >= RECENT {
                ended.pop_front();
            }
            ended.push_back((target, self.pid));
        }
    }
}

#[cfg(test)]
mod pid_tests {
    #[test]
    fn a_client_pid_is_never_an_os_process_id() {
        for random in [0, 1, -1, i32::MAX, i32::MIN, 4_194_304, 0x4000_0000, 12_345] {
            let pid = super::proxy_pid(random);
            assert!((1 << 30..=i32::MAX).contains(&pid), "{random} gave {pid}");
        }
    }
}
