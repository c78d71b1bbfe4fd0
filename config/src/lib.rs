//! The sqlswitch config: a TOML file (README, "Config") read into typed structs that refuse
//! unknown keys, then validated as a whole so that `sqlswitch check` reports every problem at
//! once, each naming the file, the key and why. Nothing here opens a socket: the daemon loads
//! and validates before it binds anything.
#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Admin socket and metrics endpoint.
    #[serde(default)]
    pub admin: Admin,
    /// How long SIGTERM waits for sessions to finish before closing them.
    #[serde(default = "defaults::shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The clusters, each with its own listeners and backends.
    #[serde(default, rename = "cluster")]
    pub clusters: Vec<Cluster>,
    /// Several instances acting as one through etcd; without it the instance decides alone.
    #[serde(default)]
    pub fleet: Option<Fleet>,
}

/// `[fleet]`: the instances that serve the same clusters share their routing through etcd.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// etcd endpoints (`http://host:port`, or `https://` with `tls_ca`).
    pub etcd: Vec<String>,
    /// Key prefix; each cluster's keys live under `<prefix>/<cluster>/`.
    #[serde(default = "defaults::fleet_prefix")]
    pub prefix: String,
    /// Lease time: an instance that cannot renew its lease within it stops taking writes, and
    /// the others stop waiting for it.
    #[serde(default = "defaults::fleet_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// This instance's name, unique in the fleet (default: host name and first listen port).
    #[serde(default)]
    pub instance: Option<String>,
    /// etcd user, if etcd has authentication on.
    #[serde(default)]
    pub user: Option<String>,
    /// Its password.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Name of an environment variable that holds the etcd password (instead of `password`).
    #[serde(default)]
    pub password_env: Option<String>,
    /// A file whose content is the etcd password (instead of `password`).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) that signs etcd's certificate; with it, endpoints use TLS.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for etcd's client-certificate authentication.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// Key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Unix socket for `sqlswitch ctl`, created mode 0600 ([`default_socket`] unless set).
    #[serde(default = "defaults::socket")]
    pub socket: PathBuf,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
}

impl Default for Admin {
    fn default() -> Self {
        Self { socket: defaults::socket(), metrics: None }
    }
}

/// The admin socket when the config names none, and where `sqlswitch ctl` looks when not told:
/// `/run/sqlswitch/admin.sock` when the directory `/run/sqlswitch` exists (systemd's
/// `RuntimeDirectory=sqlswitch`, as `deploy/systemd/sqlswitch.service` sets: `/tmp` is private
/// to a service with `PrivateTmp`, where `ctl` would not find it), else `/tmp/sqlswitch.sock`.
pub fn default_socket() -> PathBuf {
    default_socket_in(std::path::Path::new(RUN_DIR))
}

/// The runtime directory [`default_socket`] looks for.
pub const RUN_DIR: &str = "/run/sqlswitch";

fn default_socket_in(run: &std::path::Path) -> PathBuf {
    if run.is_dir() {
        run.join("admin.sock")
    } else {
        PathBuf::from("/tmp/sqlswitch.sock")
    }
}

/// Wire protocol of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// PostgreSQL v3.
    Postgres,
    /// MySQL / MariaDB.
    Mysql,
}

/// `[[cluster]]`: one primary and its replicas behind one or two listeners.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Name used in admin commands and metrics.
    pub name: String,
    /// Wire protocol.
    pub protocol: Protocol,
    /// Read-write listener.
    pub listen: SocketAddr,
    /// Optional listener whose every session is read-only.
    #[serde(default)]
    pub read_only_listen: Option<SocketAddr>,
    /// Users whose sessions are read-only.
    #[serde(default)]
    pub read_only_users: Vec<String>,
    /// Replicas further behind get no reads.
    #[serde(default = "defaults::max_replica_lag", with = "humantime_serde")]
    pub max_replica_lag: Duration,
    /// A session never reads older data than it wrote.
    #[serde(default = "defaults::yes")]
    pub read_your_writes: bool,
    /// Credentials for health and lag checks, promotion and fencing. Without them, read-write
    /// sessions send everything to the primary (lag and read-your-writes cannot be checked).
    #[serde(default)]
    pub monitor: Option<Credentials>,
    /// A login for users not listed under `[[cluster.user]]`: sqlswitch looks the user's
    /// stored secret up on the primary with `auth_query` (a SCRAM verifier; MariaDB: a
    /// `mysql_native_password` hash) and logs the client in by passthrough (its own proof
    /// opens the backend connections), caching the answer briefly.
    #[serde(default)]
    pub auth_user: Option<Credentials>,
    /// The lookup `auth_user` runs, `$1` standing for the user name (as a quoted literal):
    /// one row whose first column is the stored secret. Default: `pg_authid` (a superuser's;
    /// or call a `SECURITY DEFINER` function, README), MariaDB's `mysql.user`.
    #[serde(default)]
    pub auth_query: Option<String>,
    /// How often the monitor checks each backend.
    #[serde(default = "defaults::monitor_interval", with = "humantime_serde")]
    pub monitor_interval: Duration,
    /// Credentials a replica streams from the primary with. With them, a switchover re-points
    /// every other replica (and, for MariaDB/MySQL, the old primary) at the new primary.
    #[serde(default)]
    pub replication: Option<Credentials>,
    /// What a switchover does with other clients' transactions on the old primary after the
    /// fence: wait for them to end (`wait`), or end their sessions (`terminate`).
    #[serde(default)]
    pub fence: Fence,
    /// An upgrade cutover sets every sequence on the new primary to the old primary's last value
    /// plus this many increments (room for values handed out but not yet committed).
    #[serde(default)]
    pub sequence_margin: u32,
    /// Functions, beyond the built-in list, that read and change nothing.
    #[serde(default)]
    pub read_only_functions: Vec<String>,
    /// Client connections accepted at once on this cluster's listeners.
    #[serde(default = "defaults::max_client_connections")]
    pub max_client_connections: usize,
    /// Largest client message the proxy buffers, in bytes.
    #[serde(default = "defaults::max_message_size")]
    pub max_message_size: usize,
    /// When a session gives its backend connections back: at its end (`session`, the
    /// default), or at the end of each transaction when its state allows (`transaction`;
    /// decision 0020).
    #[serde(default)]
    pub pool_mode: PoolMode,
    /// Transaction pooling: most server connections open at once per backend and pool key
    /// (user, database, the startup parameters a login fixes); a client past it waits for one
    /// up to `connect_timeout`. 0: no limit. Session pooling ignores it (a session keeps its
    /// connections for life; `max_backend_connections` bounds them).
    #[serde(default = "defaults::pool_size")]
    pub pool_size: usize,
    /// Idle connections of each pool key that `pool_idle_timeout` leaves open (warm ones).
    #[serde(default)]
    pub min_pool_size: usize,
    /// Transaction pooling, for tests: each transaction takes another connection than the
    /// session's last whenever the pool can give one (`scripts/regress` proves with it that
    /// sessions keep their state across connections).
    #[serde(default)]
    pub pool_shuffle: bool,
    /// Idle backend connections kept per backend, user and database.
    #[serde(default = "defaults::pool_max_idle")]
    pub pool_max_idle: usize,
    /// An idle pooled backend connection is closed after this long.
    #[serde(default = "defaults::pool_idle_timeout", with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Most connections open to one backend at once (sessions', pooled and the monitor's);
    /// 0: no limit but the server's own. Past it, idle ones are closed to make room, and a
    /// client waits up to `connect_timeout` for one.
    #[serde(default)]
    pub max_backend_connections: usize,
    /// Time allowed to connect and log in to a backend.
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time a client has to finish startup and authentication.
    #[serde(default = "defaults::auth_timeout", with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// A session idle (outside a transaction) this long is closed; unset: never.
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Statements held at once during a pause or switchover; beyond it they are refused.
    #[serde(default = "defaults::max_held")]
    pub max_held: usize,
    /// Client-facing TLS.
    #[serde(default)]
    pub tls: Option<Tls>,
    /// TLS to the backends (PostgreSQL).
    #[serde(default)]
    pub backend_tls: Option<BackendTls>,
    /// Users clients log in as; the proxy logs in to the backends as the same user.
    #[serde(default, rename = "user")]
    pub users: Vec<User>,
    /// The primary and the replicas.
    #[serde(default, rename = "backend")]
    pub backends: Vec<Backend>,
}

impl Cluster {
    /// The configured user called `name`.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// How `user`'s sessions pool: the user's own `pool_mode`, else the cluster's (users
    /// looked up through `auth_user` have none of their own).
    pub fn pool_mode_of(&self, user: &str) -> PoolMode {
        self.user(user).and_then(|u| u.pool_mode).unwrap_or(self.pool_mode)
    }

    /// Whether any of the cluster's sessions pool per transaction.
    pub fn pools_transactions(&self) -> bool {
        self.pool_mode == PoolMode::Transaction || self.users.iter().any(|u| u.pool_mode == Some(PoolMode::Transaction))
    }

    /// Index of the primary backend: the primary of the first group listed (validation
    /// guarantees exactly one per group).
    pub fn primary_index(&self) -> usize {
        let first = self.backends.first().map_or(DEFAULT_GROUP, |b| b.group.as_str());
        self.backends.iter().position(|b| b.role == Role::Primary && b.group == first).unwrap_or(0)
    }

    /// The groups, in the order the backends first name them.
    pub fn groups(&self) -> Vec<&str> {
        let mut groups: Vec<&str> = Vec::new();
        for b in &self.backends {
            if !groups.contains(&b.group.as_str()) {
                groups.push(&b.group);
            }
        }
        groups
    }
}

/// A user name and password.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password; may be left out (or empty) where the server needs none, or where the
    /// server finds it itself (`replication` on PostgreSQL: the standby's `.pgpass`).
    #[serde(default)]
    pub password: Secret,
    /// Name of an environment variable that holds the password (instead of `password`).
    #[serde(default)]
    pub password_env: Option<String>,
    /// A file whose content is the password (a trailing newline is not part of it), such as a
    /// Docker or systemd credential (instead of `password`).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
}

/// `[[cluster.user]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Password, inline.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Name of an environment variable that holds the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// A file whose content is the password (a trailing newline is not part of it).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// This user's sessions pool per session or per transaction, whatever the cluster's
    /// `pool_mode` says (a migration tool's user in session mode, the app's in transaction).
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
}

impl User {
    /// The password, after [`Config::load`] resolved `password_env` or `password_file`.
    pub fn secret(&self) -> &str {
        self.password.as_ref().map_or("", |s| s.expose())
    }
}

/// A password: never printed by `Debug`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The password itself, for authentication only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What a switchover does with other clients' open transactions on the old primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fence {
    /// Wait for them to end, up to the switchover's deadline.
    #[default]
    Wait,
    /// End their sessions.
    Terminate,
}

/// When a session's backend connections go back to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// At the session's end.
    #[default]
    Session,
    /// At the end of each transaction, unless the session holds state that stays with its
    /// connection (README, "Transaction pooling").
    Transaction,
}

/// Role of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes writes.
    Primary,
    /// Serves reads.
    Replica,
}

/// `[cluster.tls]`: TLS for the cluster's clients.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain, the server's first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates: when set, clients must present a certificate it signed (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// Refuse clients that do not use TLS.
    #[serde(default)]
    pub required: bool,
}

/// `[cluster.backend_tls]`: TLS from the proxy to the backends, with libpq's modes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendTls {
    /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full`.
    pub mode: TlsMode,
    /// PEM CA certificates the backends' certificates must lead to (verify-ca, verify-full).
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Never.
    Disable,
    /// TLS when the server offers it, unverified.
    Prefer,
    /// TLS or no connection, unverified.
    Require,
    /// TLS, the certificate signed by `ca`.
    VerifyCa,
    /// TLS, signed by `ca` and naming the backend's host.
    VerifyFull,
}

/// `[[cluster.backend]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Name used in admin commands and metrics.
    pub name: String,
    /// `host:port`, or the absolute path of the server's Unix socket (for a backend on the
    /// proxy's host; never encrypted). See [`is_unix_socket`].
    pub address: String,
    /// Primary or replica.
    pub role: Role,
    /// Share of reads among replicas.
    #[serde(default = "defaults::weight")]
    pub weight: u32,
    /// The group: the primary and replicas of one database cluster. Only the active group (the
    /// first listed, until a switchover to another group's primary) serves; another group is
    /// the new cluster of an upgrade, subscribed to this one by logical replication.
    #[serde(default = "defaults::group")]
    pub group: String,
}

/// The group of a backend that names none.
pub const DEFAULT_GROUP: &str = "main";

/// Most backends a cluster can have, those added by reloads included: config validation, the
/// daemon's backend slots and routing all use this one limit.
pub const MAX_BACKENDS: usize = 64;

/// Whether a backend address names a Unix socket (an absolute path) rather than `host:port`.
pub fn is_unix_socket(address: &str) -> bool {
    address.starts_with('/')
}

mod advice;
mod validate;
pub use validate::{ConfigError, Problem};

mod defaults {
    use std::path::PathBuf;
    use std::time::Duration;

    pub fn socket() -> PathBuf {
        super::default_socket()
    }
    pub fn shutdown_grace() -> Duration {
        Duration::from_secs(10)
    }
    pub fn fleet_prefix() -> String {
        "/sqlswitch".to_owned()
    }
    pub fn fleet_ttl() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_replica_lag() -> Duration {
        Duration::from_secs(1)
    }
    pub fn yes() -> bool {
        true
    }
    pub fn max_client_connections() -> usize {
        10_000
    }
    pub fn max_message_size() -> usize {
        256 << 20
    }
    pub fn max_held() -> usize {
        10_000
    }
    pub fn pool_max_idle() -> usize {
        64
    }
    pub fn pool_size() -> usize {
        20
    }

    pub fn pool_idle_timeout() -> Duration {
        Duration::from_secs(300)
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn auth_timeout() -> Duration {
        Duration::from_secs(15)
    }
    pub fn monitor_interval() -> Duration {
        Duration::from_millis(100)
    }
    pub fn weight() -> u32 {
        1
    }
    pub fn group() -> String {
        super::DEFAULT_GROUP.to_owned()
    }
}

#[cfg(test)]
mod tests;
