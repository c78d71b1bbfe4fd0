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
    /// Initial database.
    pub database: Option<String>,
    /// The client's capabilities, within what the proxy relays.
    pub caps: u32,
    /// The client's collation.
    pub charset: u8,
    /// What its connections are pooled by.
    pub key: PoolKey,
    /// Read-only session.
    pub read_only: bool,
    /// It came in on the read-only listener.
    pub listener_read_only: bool,
}

impl<'a> Identity<'a> {
    /// The identity of `user` (who must be configured) logging in with these settings.
    pub fn new(
        cluster: &'a Cluster,
        user: &str,
        database: Option<&str>,
        caps: u32,
        charset: u8,
        listener_read_only: bool,
    ) -> Option<Self> {
        let users = cluster.users.load();
        let account = users.get(user)?;
        let read_only = listener_read_only || account.read_only;
        let caps = caps & caps::OFFERED;
        let (caps_text, charset_text) = (caps.to_string(), charset.to_string());
        let mut params =
            vec![("database", database.unwrap_or_default()), ("caps", &caps_text), ("charset", &charset_text)];
        if read_only {
            params.push(("read_only", "on"));
        }
        Some(Self {
            cluster,
            user: user.to_owned(),
            password: account.password.clone(),
            database: database.map(str::to_owned),
            caps,
            charset,
            key: PoolKey::new(user, params),
            read_only,
            listener_read_only,
        })
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
        match acquire(id, index).await {
            Ok(conn) => {
                if conn.caps & caps::DEPRECATE_EOF != id.caps & caps::DEPRECATE_EOF {
                    return Err(BackendError::Protocol(
                        "the backend does not support the client's result format (CLIENT_DEPRECATE_EOF)".into(),
                    ));
                }
                return Ok((index, conn));
            }
            Err(e @ BackendError::Refused { .. }) => return Err(e),
            Err(e) => last_error = e,
        }
    }
    Err(last_error)
}

/// The error packet for a failed first connection.
pub fn first_connection_error(cluster: &Cluster, e: BackendError) -> Vec<u8> {
    let text = cluster.no_session(&e);
    match e {
        BackendError::Refused { error, .. } => error.to_vec(),
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
        database: id.database.as_deref(),
        caps: id.caps,
        charset: id.charset,
        read_only: id.read_only,
        tls: tls.as_deref(),
    };
    let to = b.dialing(id.cluster.config.connect_timeout);
    let open = || MyConn::connect(&to, &login);
    b.checkout(&id.key, id.cluster.limits(), open).await
}

impl crate::session::core::Link for MyConn {
    const WATCHED: bool = false;

    async fn replay(&mut self, sql: &[String]) -> Result<(), BackendError> {
        for statement in sql {
            self.simple_query(statement).await?;
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
            if let Some(extra) = cluster.backends[backend].put(key.clone(), self) {
                extra.quit().await;
            }
        } else {
            self.quit().await;
        }
    }
}
