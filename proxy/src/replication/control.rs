//! The proxy's own control connections (the monitor, a change of primary, `unfence`): where
//! they go and as whom, what they ask a server (its role, positions, single values), and
//! control statements under a command's deadline, with SQL quoting for the names they carry.

use super::*;

/// Where a control connection goes and as whom.
pub struct ControlTarget<'a> {
    /// The cluster's protocol.
    pub protocol: Protocol,
    /// `host:port` or a socket path.
    pub address: &'a str,
    /// The `monitor` credentials.
    pub monitor: &'a Credentials,
    /// TLS to the server, when configured.
    pub tls: Option<std::sync::Arc<BackendTls>>,
    /// Connect and login deadline.
    pub timeout: Duration,
    /// The backend's metrics (login failures).
    pub metrics: &'a BackendMetrics,
}

/// A control connection to a backend (monitor, switchover), as the monitor user.
pub enum ControlConn {
    /// PostgreSQL, to the `postgres` database.
    Pg(BackendConn),
    /// MySQL/MariaDB, with no database.
    My(MyConn),
}

impl ControlTarget<'_> {
    fn dialing(&self) -> Dialing<'_> {
        Dialing { addr: self.address, timeout: self.timeout, metrics: self.metrics }
    }
}

impl ControlConn {
    /// Connects and logs in; `application` names the connection where the server shows it.
    ///
    /// # Errors
    /// The connect or login failed, or timed out.
    pub async fn connect(to: &ControlTarget<'_>, application: &str) -> Result<Self, BackendError> {
        Self::connect_to(to, application, "postgres").await
    }

    /// As [`ControlConn::connect`], to PostgreSQL database `database` (subscriptions and
    /// sequences live in one database); MySQL/MariaDB connections name no database.
    ///
    /// # Errors
    /// The connect or login failed, or timed out.
    pub async fn connect_to(to: &ControlTarget<'_>, application: &str, database: &str) -> Result<Self, BackendError> {
        let (user, password) = (to.monitor.user.as_str(), to.monitor.password.expose());
        match to.protocol {
            Protocol::Postgres => {
                let key = crate::pool::PoolKey::new(user, [("database", database), ("application_name", application)]);
                let login = Login { user, password, keys: None, params: key.params(), tls: to.tls.as_deref() };
                Ok(Self::Pg(BackendConn::connect(&to.dialing(), &login).await?))
            }
            Protocol::Mysql => {
                let login = crate::conn::mysql::Login::control(user, password, to.tls.as_deref());
                let conn = MyConn::connect(&to.dialing(), &login).await?;
                if let Some(why) = unsupported_flavour(&conn.version) {
                    conn.quit().await;
                    return Err(BackendError::Protocol(why));
                }
                Ok(Self::My(conn))
            }
        }
    }

    /// Runs `sql` and returns its rows.
    ///
    /// # Errors
    /// The server refused it, or the connection failed.
    pub async fn exec(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, BackendError> {
        match self {
            Self::Pg(c) => c.simple_query(sql).await,
            Self::My(c) => c.simple_query(sql).await,
        }
    }

    /// Runs `statements` in order, stopping at the first that fails.
    ///
    /// # Errors
    /// As [`ControlConn::exec`].
    pub async fn exec_all(&mut self, statements: &[&str]) -> Result<(), BackendError> {
        for sql in statements {
            self.exec(sql).await?;
        }
        Ok(())
    }

    /// Turns off statement logging for this session ([`Dialect::quiet`]) before a statement
    /// that carries a password. `None` when every setting took; otherwise what the server
    /// refused, for the operator: the password may then reach the server's logs.
    pub async fn quiet(&mut self, dialect: &Dialect) -> Option<String> {
        let mut refused = Vec::new();
        for sql in dialect.quiet {
            if let Err(e) = self.exec(sql).await {
                refused.push(format!("{sql}: {e}"));
            }
        }
        (!refused.is_empty()).then(|| {
            tracing::warn!(event = "secret_may_be_logged", refused = %refused.join("; "),
                "statement logging could not be turned off: the replication password may reach the server's log");
            format!(
                "statement logging could not be turned off ({}): the password may be in the server's log",
                refused.join("; ")
            )
        })
    }

    /// The first column of the first row of `sql`'s answer.
    ///
    /// # Errors
    /// As [`ControlConn::exec`], or no value (NULL, no rows), as text.
    pub async fn value(&mut self, sql: &str) -> Result<String, String> {
        let rows = self.exec(sql).await.map_err(|e| e.to_string())?;
        rows.into_iter().next().and_then(|r| r.into_iter().next().flatten()).ok_or_else(|| format!("{sql}: no value"))
    }
}

/// Why a MySQL-protocol server cannot be monitored or switched over, from the version its
/// handshake gave, or `None` for MariaDB. The monitor reads MariaDB's GTID positions
/// (`@@gtid_binlog_pos`, `@@gtid_slave_pos`) and switches over with MariaDB's statements
/// (`CHANGE MASTER TO ... MASTER_USE_GTID`); Oracle MySQL has none of them (8.4 removed even the
/// old names), and a monitor that half-works would claim lag and read-your-writes it cannot
/// measure. Said once per control connection; the backend is then seen down, with this reason.
pub fn unsupported_flavour(version: &str) -> Option<String> {
    if version.to_ascii_lowercase().contains("mariadb") {
        return None;
    }
    Some(format!(
        "the server is MySQL {version}, not MariaDB: sqlswitch's monitor, lag, read-your-writes and switchover \
         support MariaDB only (they read MariaDB's GTID positions); without `monitor` sqlswitch proxies MySQL, \
         read-write sessions on the primary and read-only ones on the replicas"
    ))
}

impl ControlConn {
    /// What the server is ([`Role`]): a replica when it follows another server, whatever its
    /// read-only setting; otherwise writable or read-only.
    ///
    /// # Errors
    /// A statement failed, or the answer was not understood.
    pub async fn role(&mut self, dialect: &Dialect) -> Result<Role, String> {
        let mut last_error = None;
        let mut stopped_channel = false;
        for sql in dialect.channels {
            match self.exec(sql).await {
                Ok(rows) if !rows.is_empty() => {
                    // Slave_IO_Running and Slave_SQL_Running (Replica_* on MySQL 8.4): columns
                    // 11 and 12 of either spelling. A channel that runs (or tries to) follows.
                    let running = rows
                        .iter()
                        .any(|row| [10, 11].iter().any(|&c| row.get(c).cloned().flatten().is_some_and(|v| v != "No")));
                    if running {
                        return Ok(Role::Replica);
                    }
                    stopped_channel = true;
                    break;
                }
                Ok(_) => {
                    last_error = None;
                    break;
                }
                // A server that does not know this spelling (a syntax error) may know the next.
                Err(e @ BackendError::Refused { .. }) => last_error = Some(e.to_string()),
                Err(e) => return Err(e.to_string()),
            }
        }
        if let Some(e) = last_error {
            return Err(e);
        }
        match self.value(dialect.role).await?.as_str() {
            "replica" => Ok(Role::Replica),
            "read-only" if stopped_channel => Ok(Role::Replica),
            "read-only" => Ok(Role::ReadOnly),
            "subscriber" => Ok(Role::Subscriber),
            "writable" if stopped_channel => Ok(Role::Stopped),
            "writable" => Ok(Role::Writable),
            other => Err(format!("unexpected role {other:?}")),
        }
    }
}

/// Waits until the fence is in force (`fenced`) or lifted on `conn`'s server. PostgreSQL's
/// reload only signals: once this session has taken it, the postmaster has signalled every
/// session, and each takes it before its next statement.
pub async fn in_force(
    conn: &mut ControlConn,
    dialect: &Dialect,
    fenced: bool,
    deadline: Instant,
) -> Result<(), String> {
    let want = if fenced { "on" } else { "off" };
    loop {
        let now = within(deadline, conn.value(dialect.fenced)).await?;
        if now == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let what = if fenced { "still takes writes" } else { "still refuses writes" };
            return Err(format!("{what} at the command's deadline"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs a control statement within a command's deadline.
pub async fn within<T, E: std::fmt::Display>(
    deadline: Instant,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), f).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("timed out (the command's deadline)".to_owned()),
    }
}

/// A SQL string literal.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A SQL identifier, quoted.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
