//! The session's commands that are not relayed as they are: `COM_CHANGE_USER` and `KILL`.

use super::*;

impl MySession<'_> {
    /// `COM_CHANGE_USER`: a new login on the same connection. The client proves the new
    /// user's password with the response in its request (computed with the connection's first
    /// scramble, as a server checks it) or, when that does not match, against a fresh scramble
    /// (an auth switch); then everything of the old session is dropped — connections (reset and
    /// pooled), variables, prepared statements — as a server does, and the new login is proven
    /// on a backend like a new connection's.
    pub(super) async fn change_user(&mut self, packet: &packet::Packet, seq: u8) -> Result<(), End> {
        let request = match ChangeUser::parse(&packet.payload, self.id.caps) {
            Ok(r) => r,
            Err(e) => {
                self.err(seq, code::HANDSHAKE, "08S01", &e.to_string()).await;
                return Err(End::ClientGone);
            }
        };
        let cluster = self.id.cluster;
        let account = match cluster.account(&request.user).await {
            Ok(account) => account,
            Err(e) => {
                self.err(seq, code::UNKNOWN, "08S01", &e.text(&request.user)).await;
                return Err(End::ClientGone);
            }
        };
        // MariaDB Connector/C answers even an auth switch with the first scramble's response:
        // the one in the request is checked first, as the server does.
        let native = request.plugin.as_deref().is_none_or(|p| p == crate::mysql::NATIVE);
        let first = native
            && !self.id.scramble.is_empty()
            && crate::mysql::password_matches(account.as_deref(), &self.id.scramble, false, &request.auth);
        let (verified, auth, seq, nonce) = if first {
            (true, request.auth.clone(), seq, self.id.scramble.clone())
        } else {
            let nonce = crate::mysql::new_nonce();
            let mut out = BytesMut::new();
            packet::encode(&mut out, seq, &auth_switch_request(crate::mysql::NATIVE, &nonce));
            self.client.send(&out).await.map_err(|_| End::ClientGone)?;
            let answer =
                crate::mysql::read_packet(&mut self.client, &mut self.cbuf).await.map_err(|_| End::ClientGone)?;
            let verified = crate::mysql::password_ok(cluster, account.as_deref(), &nonce, false, &answer.payload);
            (verified, answer.payload.to_vec(), answer.last_seq.wrapping_add(1), nonce)
        };
        let Some(account) = account.filter(|_| verified) else {
            let text = crate::mysql::access_denied(&request.user, self.peer, &auth);
            self.err(seq, code::ACCESS_DENIED, "28000", &text).await;
            return Err(End::ClientGone);
        };
        let mut new_id = Identity::new(
            cluster,
            &request.user,
            &account,
            request.database.as_deref(),
            self.id.caps,
            self.id.ext,
            request.charset.unwrap_or(self.id.charset),
            self.id.listener_read_only,
        );
        // Nothing of the old session carries over.
        self.core.release_all(&self.id.key).await;
        self.wait_timeout = None;
        self.statements = Statements::default();
        self.temp_tables.clear();
        self.temp_home = None;
        self.core.reset(new_id.read_only);
        new_id.native_key = crate::mysql::native_key(Some(&account), &nonce, &auth).map(Box::new);
        new_id.scramble = std::mem::take(&mut self.id.scramble);
        self.id = new_id;
        self.thread.set_user(&self.id.user);
        self.thread.set_target(None);
        match first_connection(&self.id).await {
            Ok((index, conn)) => {
                let side = if cluster.table.load().is_primary(index) { Side::Primary } else { Side::Replica };
                let mut out = BytesMut::new();
                packet::encode(&mut out, seq, &ok_payload(conn.status));
                self.core.start(side, MySlot::new(cluster, index, conn));
                self.client.send(&out).await.map_err(|_| End::ClientGone)?;
                debug!(user = %self.id.user, "changed user");
                Ok(())
            }
            Err(e) => {
                let mut out = BytesMut::new();
                packet::encode(&mut out, seq, &first_connection_error(cluster, e));
                let _ = self.client.send(&out).await;
                Err(End::ClientGone)
            }
        }
    }

    /// Stops the query running on `side`'s connection and drops the connection.
    pub(super) async fn kill_query(&mut self, side: Side) {
        let Some(slot) = self.core.take(side) else { return };
        let thread = slot.conn.thread_id;
        match self.kill_thread(slot.backend, thread).await {
            Ok(()) => debug!(thread, "stopped the query of a client that left"),
            Err(e) => warn!(thread, error = %e, "could not stop the query of a client that left"),
        }
        slot.conn.quit().await;
    }

    /// `KILL QUERY <thread>` on `backend`, sent as the session's user (who may always stop its
    /// own threads) on a connection of its own.
    pub(super) async fn kill_thread(&self, backend: usize, thread: u32) -> Result<(), BackendError> {
        let mut killer = acquire(&self.id, backend).await?;
        killer.simple_query(&format!("KILL QUERY {thread}")).await?;
        if let Some(extra) = self.id.cluster.backends[backend].put(&self.id.key, killer) {
            extra.quit().await;
        }
        Ok(())
    }

    /// Whether `thread` is the server thread id of one of this session's connections.
    fn own_server_thread(&self, thread: u32) -> bool {
        [Side::Primary, Side::Replica]
            .into_iter()
            .any(|side| self.core.slot(side).is_some_and(|s| s.conn.thread_id == thread))
    }

    /// A client's `KILL [QUERY | CONNECTION] <id>`, with the proxy's connection ids (or the
    /// server thread id of one of the session's own connections, from `CONNECTION_ID()`).
    pub(super) async fn kill(&mut self, target: u32, connection: bool, seq: u8) -> Result<(), End> {
        match self.id.cluster.mysql_threads.kill(target, &self.id.user, connection) {
            // `CONNECTION_ID()` ran on a server and names that server's thread: one of this
            // session's own connections. Killing it is killing the session, as directly.
            Found::Unknown if self.own_server_thread(target) => return self.killed(connection, seq).await,
            Found::Unknown => {
                self.err(seq, code::NO_SUCH_THREAD, "HY000", &format!("Unknown thread id: {target}")).await;
            }
            Found::NotOwner => {
                self.err(seq, code::KILL_DENIED, "HY000", &format!("You are not owner of thread {target}")).await;
            }
            Found::Thread(running) => {
                if let Some((backend, thread)) = running.filter(|_| target != self.thread.id) {
                    if let Err(e) = self.kill_thread(backend, thread).await {
                        let text = format!("sqlswitch could not stop thread {target}: {e}");
                        self.err(seq, code::UNKNOWN, "HY000", &text).await;
                        return Ok(());
                    }
                }
                return self.killed(connection && target == self.thread.id, seq).await;
            }
        }
        Ok(())
    }

    /// The answer to a `KILL` that was carried out: this session ends (`ends_self`, 1927) or
    /// the client gets OK.
    async fn killed(&mut self, ends_self: bool, seq: u8) -> Result<(), End> {
        if ends_self {
            self.err(seq, code::CONNECTION_KILLED, "70100", "Connection was killed").await;
            return Err(End::Killed);
        }
        let status = self.core.active_slot().map_or(status::AUTOCOMMIT, |s| s.conn.status);
        let mut out = BytesMut::new();
        packet::encode(&mut out, seq, &ok_payload(status));
        self.client.send(&out).await.map_err(|_| End::ClientGone)
    }
}

/// Why a session whose state sqlswitch cannot replay stays on its connection.
pub(super) const UNREPLAYABLE: &str = "session state that sqlswitch cannot replay";

/// The kinds of state ([`crate::session::state::Held`] bits) a single statement `sql`
/// releases all of, whatever the session took: `UNLOCK TABLES` its table locks,
/// `SELECT RELEASE_ALL_LOCKS()` its `GET_LOCK()` locks. Anything else releases nothing known
/// (`RELEASE_LOCK('a')` leaves any other name, or a lock taken twice).
pub(super) fn releases_all_of(sql: &str) -> u8 {
    use crate::session::state::Held;
    let words: Vec<String> = sql
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    match words.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["unlock", "tables" | "table"] => Held::LOCK_TABLES,
        ["select", "release_all_locks()"] => Held::GET_LOCK,
        _ => 0,
    }
}

#[cfg(test)]
mod releases_tests {
    use super::releases_all_of;
    use crate::session::state::Held;

    #[test]
    fn only_statements_that_release_a_whole_kind_count() {
        assert_eq!(releases_all_of("UNLOCK TABLES"), Held::LOCK_TABLES);
        assert_eq!(releases_all_of("  unlock   tables ;"), Held::LOCK_TABLES);
        assert_eq!(releases_all_of("SELECT RELEASE_ALL_LOCKS()"), Held::GET_LOCK);
        for sql in ["SELECT RELEASE_LOCK('a')", "SELECT RELEASE_ALL_LOCKS(), GET_LOCK('b', 1)", "DROP TABLE t"] {
            assert_eq!(releases_all_of(sql), 0, "{sql}");
        }
    }
}
