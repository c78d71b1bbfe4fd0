//! Who a session is, its first backend connection, and taking and returning pooled ones.

use super::*;

/// Who the session is (replaced whole by `COM_CHANGE_USER`).
pub struct Identity<'a> {
    /// The cluster.
    pub cluster: &'a Cluster,
    /// Login user.
    pub user: String,
    /// Its password, for more backend connections.
    pub password: String,
    /// Passthrough: SHA1(password), proven by the client's scramble, for a user whose config
    /// keeps MariaDB's stored hash instead of a password.
    /// Boxed: a pointer in every session's future, where 20 bytes would be.
    pub native_key: Option<Box<[u8; 20]>>,
    /// Initial database.
    pub database: Option<String>,
    /// The client's capabilities, within what the proxy relays.
    pub caps: u32,
    /// The client's MariaDB extended capabilities, within what the proxy offered.
    pub ext: u32,
    /// The client's collation.
    pub charset: u8,
    /// What its connections are pooled by.
    pub key: PoolKey,
    /// The scramble of the connection's handshake: `COM_CHANGE_USER`'s response is computed
    /// with it (empty until the login sets it).
    pub scramble: Vec<u8>,
    /// Read-only session.
    pub read_only: bool,
    /// It came in on the read-only listener.
    pub listener_read_only: bool,
}

impl<'a> Identity<'a> {
    /// The identity of `user` (`account`, authenticated) logging in with these settings.
    #[expect(clippy::too_many_arguments, reason = "the login's parts, each its own")]
    pub fn new(
        cluster: &'a Cluster,
        user: &str,
        account: &crate::cluster::User,
        database: Option<&str>,
        caps: u32,
        ext: u32,
        charset: u8,
        listener_read_only: bool,
    ) -> Self {
        let read_only = listener_read_only || account.read_only;
        let caps = caps & caps::OFFERED;
        let ext = ext & caps::ext::OFFERED;
        // Only the flags that change answers tell connections apart.
        let (caps_text, charset_text) = ((caps & caps::BEHAVIOUR).to_string(), charset.to_string());
        let ext_text = ext.to_string();
        let mut params = vec![
            ("database", database.unwrap_or_default()),
            ("caps", &caps_text),
            ("ext", &ext_text),
            ("charset", &charset_text),
        ];
        if read_only {
            params.push(("read_only", "on"));
        }
        Self {
            cluster,
            user: user.to_owned(),
            password: account.password.clone(),
            native_key: None,
            database: database.map(str::to_owned),
            caps,
            ext,
            charset,
            key: PoolKey::new(user, params),
            scramble: Vec::new(),
            read_only,
            listener_read_only,
        }
    }
}

/// The session's first connection: the first candidate backend that takes the login. A
/// refusal by a server (no such database) is final: every backend would say the same.
///
/// # Errors
/// The last backend's error.
pub async fn first_connection(id: &Identity<'_>) -> Result<(usize, MyConn), BackendError> {
    let mut last_error = BackendError::Protocol("the cluster has no backend for this session".into());
    // In maintenance (no usable primary), every session logs in on a replica.
    let on_replicas = id.read_only || id.cluster.maintenance().is_some();
    for index in id.cluster.candidates(on_replicas) {
        match acquire(id, index).await.map(fresh) {
            Ok(fresh) => return Ok((index, fresh.await?)),
            Err(e @ BackendError::Refused { .. }) => return Err(e),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

/// `conn` as a new session begins on it (the session's first connection is not readied by the
/// core): one another session gave back with its state (transaction pooling) is reset first.
async fn fresh(mut conn: MyConn) -> Result<MyConn, BackendError> {
    if conn.kept.replay.is_some() && !conn.reset().await? {
        return Err(BackendError::Protocol("a pooled connection could not be reset".into()));
    }
    Ok(conn)
}

/// The error packet for a failed first connection.
pub fn first_connection_error(cluster: &Cluster, e: BackendError) -> Vec<u8> {
    let text = cluster.no_session(&e);
    match e {
        BackendError::Refused { error, .. } => error.to_vec(),
        BackendError::Full { .. } => err_payload(code::TOO_MANY_CONNECTIONS, "08004", &text),
        _ => err_payload(code::UNKNOWN, "08S01", &text),
    }
}

/// A pooled or new connection to backend `index` for this session.
///
/// # Errors
/// The backend could not be reached or refused the login.
pub async fn acquire(id: &Identity<'_>, index: usize) -> Result<MyConn, BackendError> {
    let b = &id.cluster.backends[index];
    let tls = id.cluster.backend_tls.load_full();
    let login = Login {
        user: &id.user,
        password: &id.password,
        native_key: id.native_key.as_deref().copied(),
        database: id.database.as_deref(),
        caps: id.caps,
        ext: id.ext,
        charset: id.charset,
        read_only: id.read_only,
        tls: tls.as_deref(),
    };
    let to = b.dialing(id.cluster.config.connect_timeout);
    // What a new connection's server offers narrows what later clients are offered.
    let open = || async {
        let conn = MyConn::connect(&to, &login).await?;
        id.cluster.servers_offer(conn.server_ext);
        Ok(conn)
    };
    let conn = b.checkout(&id.key, id.cluster.limits(id.key.user()), open).await?;
    match missing_behaviour(conn.caps, id.caps).or_else(|| missing_ext(conn.ext, id.ext)) {
        None => Ok(conn),
        Some(flags) => {
            conn.quit().await;
            Err(BackendError::Protocol(format!(
                "backend {} does not support what the client asked for ({flags})",
                b.name
            )))
        }
    }
}

/// The names of the behaviour flags the client asked for that a connection did not get (or
/// got without being asked), if any: its answers would differ from what the client expects.
fn missing_behaviour(conn: u32, client: u32) -> Option<String> {
    const NAMES: [(u32, &str); 11] = [
        (caps::FOUND_ROWS, "CLIENT_FOUND_ROWS"),
        (caps::LONG_FLAG, "CLIENT_LONG_FLAG"),
        (caps::NO_SCHEMA, "CLIENT_NO_SCHEMA"),
        (caps::IGNORE_SPACE, "CLIENT_IGNORE_SPACE"),
        (caps::INTERACTIVE, "CLIENT_INTERACTIVE"),
        (caps::TRANSACTIONS, "CLIENT_TRANSACTIONS"),
        (caps::MULTI_STATEMENTS, "CLIENT_MULTI_STATEMENTS"),
        (caps::MULTI_RESULTS, "CLIENT_MULTI_RESULTS"),
        (caps::PS_MULTI_RESULTS, "CLIENT_PS_MULTI_RESULTS"),
        (caps::SESSION_TRACK, "CLIENT_SESSION_TRACK"),
        (caps::DEPRECATE_EOF, "CLIENT_DEPRECATE_EOF"),
    ];
    let differ = (conn ^ client) & caps::BEHAVIOUR;
    let names: Vec<&str> = NAMES.iter().filter(|(flag, _)| differ & flag != 0).map(|(_, name)| *name).collect();
    (!names.is_empty()).then(|| names.join(", "))
}

/// The names of the MariaDB extended capabilities the client asked for that a connection did
/// not get (or got without being asked), if any.
fn missing_ext(conn: u32, client: u32) -> Option<String> {
    const NAMES: [(u32, &str); 2] = [
        (caps::ext::STMT_BULK_OPERATIONS, "MARIADB_CLIENT_STMT_BULK_OPERATIONS"),
        (caps::ext::EXTENDED_TYPE_INFO, "MARIADB_CLIENT_EXTENDED_TYPE_INFO"),
    ];
    let differ = conn ^ client;
    let names: Vec<&str> = NAMES.iter().filter(|(flag, _)| differ & flag != 0).map(|(_, name)| *name).collect();
    (!names.is_empty()).then(|| names.join(", "))
}

impl crate::session::core::Link for MyConn {
    const WATCHED: bool = false;
    /// MariaDB cannot be asked which user locks or tables a connection holds: releases are
    /// known from the statements that release all of a kind (`UNLOCK TABLES`,
    /// `RELEASE_ALL_LOCKS()`).
    const CHECKED: u8 = 0;

    async fn holds_unmovable(&mut self, _aside: &mut bytes::BytesMut) -> Result<bool, BackendError> {
        Ok(true)
    }

    /// A `PREPARE`, `DEALLOCATE PREPARE` or `USE` that the server refuses now (its table or
    /// database dropped since the session ran it) is passed over: directly, the session's
    /// statement would fail when executed, its database would be gone; the session goes on.
    async fn replay(&mut self, sql: &[String]) -> Result<(), BackendError> {
        for statement in sql {
            match self.simple_query(statement).await {
                Err(BackendError::Refused { .. }) if may_lapse(statement) => {}
                other => drop(other?),
            }
        }
        Ok(())
    }

    async fn set_read_only(&mut self, on: bool) -> Result<(), BackendError> {
        let sql = if on { "SET SESSION TRANSACTION READ ONLY" } else { "SET SESSION TRANSACTION READ WRITE" };
        self.simple_query(sql).await.map(drop)
    }

    /// Resets the connection (`COM_RESET_CONNECTION`, the login database, the read-only
    /// setting) and pools it, or closes it.
    async fn release(mut self, cluster: &Cluster, backend: usize, key: &PoolKey, _state: &SessionState) {
        if matches!(self.reset().await, Ok(true)) && self.is_reusable() {
            if let Some(extra) = cluster.backends[backend].put(key, self) {
                extra.quit().await;
            }
        } else {
            self.quit().await;
        }
    }

    /// A connection given back without a reset holds its last session's state; one reset,
    /// none.
    fn holds(&self, replay: &[String]) -> Option<usize> {
        crate::conn::holds_prefix(self.kept.replay.as_ref(), replay)
    }

    async fn clear(&mut self) -> Result<(), BackendError> {
        self.reset().await.map(drop)
    }

    /// Named statements are PostgreSQL's; a MySQL connection keeps its prepared statements by
    /// text ([`crate::conn::mysql::Kept`]).
    fn take_statements(&mut self) -> Vec<(String, bytes::Bytes)> {
        Vec::new()
    }

    /// Transaction pooling: reset as at a session's end (`COM_RESET_CONNECTION`: its prepared
    /// statements go too) after a transaction that ran more than reads on it, or once a last
    /// insert id was set on it; else given back as it is, keeping the session's state (a
    /// session with the same takes it without a replay) and its prepared statements.
    async fn give_back(
        mut self,
        cluster: &Cluster,
        backend: usize,
        key: &PoolKey,
        held: crate::session::core::Held,
        reset: bool,
    ) {
        if reset || self.kept.insert_id || !self.is_reusable() {
            crate::session::core::Link::release(self, cluster, backend, key, &SessionState::default()).await;
            return;
        }
        self.kept.replay = held.replay;
        if let Some(extra) = cluster.backends[backend].put(key, self) {
            extra.quit().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_behaviour_flag_has_a_name_and_differences_are_named() {
        assert_eq!(missing_behaviour(caps::OFFERED, caps::OFFERED), None);
        let all = (0..32).map(|bit| 1u32 << bit).filter(|f| caps::BEHAVIOUR & f != 0);
        for flag in all {
            let named = missing_behaviour(caps::OFFERED & !flag, caps::OFFERED);
            assert!(named.is_some_and(|n| n.starts_with("CLIENT_")), "flag {flag:#x} has a name");
        }
        let both = missing_behaviour(caps::CONTROL, caps::CONTROL | caps::FOUND_ROWS | caps::IGNORE_SPACE);
        assert_eq!(both.as_deref(), Some("CLIENT_FOUND_ROWS, CLIENT_IGNORE_SPACE"));
        // Flags that do not change answers may differ.
        assert_eq!(missing_behaviour(caps::OFFERED & !caps::CONNECT_ATTRS, caps::OFFERED), None);
    }

    #[test]
    fn every_offered_extended_capability_has_a_name() {
        assert_eq!(missing_ext(caps::ext::OFFERED, caps::ext::OFFERED), None);
        for flag in (0..32).map(|bit| 1u32 << bit).filter(|f| caps::ext::OFFERED & f != 0) {
            assert!(missing_ext(0, flag).is_some_and(|n| n.starts_with("MARIADB_CLIENT_")), "{flag:#x}");
            assert!(missing_ext(flag, 0).is_some(), "{flag:#x} given unasked changes answers too");
        }
    }
}

/// Whether a replayed session statement may be refused now without harm to the session: one
/// whose object may have been dropped since it ran (`PREPARE x FROM ...`, `DEALLOCATE PREPARE`,
/// `DROP PREPARE`, `USE db`).
fn may_lapse(statement: &str) -> bool {
    let mut words = statement.split_whitespace().map(str::to_ascii_lowercase);
    matches!(
        (words.next().as_deref(), words.next().as_deref()),
        (Some("prepare" | "use"), _) | (Some("deallocate" | "drop"), Some("prepare"))
    )
}

#[cfg(test)]
mod lapse_tests {
    #[test]
    fn only_statements_about_dropped_objects_may_lapse() {
        for sql in ["PREPARE s FROM 'select a from t'", "use `demo`", "DEALLOCATE PREPARE s", "drop prepare s"] {
            assert!(super::may_lapse(sql), "{sql}");
        }
        for sql in ["SET @a = 1", "SET NAMES utf8mb4", "DROP TABLE t", "SET time_zone = '+00:00'"] {
            assert!(!super::may_lapse(sql), "{sql}");
        }
    }
}
