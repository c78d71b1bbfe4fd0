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
    /// Unix socket for `sqlswitch ctl`, created mode 0600.
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
}

impl User {
    /// The password, after [`Config::load`] resolved `password_env`.
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

mod defaults {
    use std::path::PathBuf;
    use std::time::Duration;

    pub fn socket() -> PathBuf {
        PathBuf::from("/tmp/sqlswitch.sock")
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

/// One thing wrong with a config: which key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key, as a path (`cluster[0].backend[1].role`), or empty for the file as a whole.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem found in one config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong with it.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.key.is_empty() {
                write!(f, "{}: {}", self.file.display(), p.message)?;
            } else {
                write!(f, "{}: {}: {}", self.file.display(), p.key, p.message)?;
            }
        }
        Ok(())
    }
}

impl Config {
    /// Reads, parses and validates `path`, resolving `password_env`.
    ///
    /// # Errors
    /// Every problem found, each naming the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let fail = |message: String| ConfigError {
            file: path.to_owned(),
            problems: vec![Problem { key: String::new(), message }],
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        Self::parse(&text, path, |name| std::env::var(name).ok())
    }

    /// Parses and validates config text; `env` looks up environment variables.
    ///
    /// # Errors
    /// Every problem found, each naming the key.
    pub fn parse(text: &str, path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError {
            file: path.to_owned(),
            problems: vec![Problem {
                key: String::new(),
                message: format!("{}{}", without_value(e.message()), location(text, &e)),
            }],
        })?;
        let problems = config.validate(env);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { file: path.to_owned(), problems })
        }
    }

    /// Checks the config as a whole and resolves `password_env`; returns every problem.
    pub fn validate(&mut self, env: impl Fn(&str) -> Option<String>) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |key: String, message: String| out.push(Problem { key, message });
        if self.clusters.is_empty() {
            problem("cluster".into(), "at least one [[cluster]] is required".into());
        }
        if self.admin.socket.as_os_str().is_empty() {
            problem("admin.socket".into(), "must not be empty".into());
        }
        if let Some(f) = &self.fleet {
            if f.etcd.is_empty() {
                problem("fleet.etcd".into(), "at least one etcd endpoint is required".into());
            }
            for e in &f.etcd {
                let tls = f.tls_ca.is_some();
                let scheme_ok = e.starts_with("http://") || e.starts_with("https://");
                if !scheme_ok {
                    problem(
                        "fleet.etcd".into(),
                        format!("{e:?}: write it as http://host:port (or https:// with tls_ca)"),
                    );
                } else if e.starts_with("https://") != tls {
                    problem(
                        "fleet.etcd".into(),
                        format!("{e:?}: https:// endpoints need tls_ca, and tls_ca needs https://"),
                    );
                }
            }
            if !f.prefix.starts_with('/') || f.prefix.ends_with('/') {
                problem("fleet.prefix".into(), format!("{:?}: must start with / and not end with /", f.prefix));
            }
            if f.ttl < Duration::from_secs(2) {
                problem("fleet.ttl".into(), "must be at least 2s (etcd leases are whole seconds)".into());
            }
            if f.instance.as_ref().is_some_and(|i| i.is_empty() || i.contains('/')) {
                problem("fleet.instance".into(), "must not be empty or contain /".into());
            }
            if f.user.is_some() != f.password.is_some() {
                problem("fleet.user".into(), "user and password go together".into());
            }
            if f.tls_cert.is_some() != f.tls_key.is_some() {
                problem("fleet.tls_cert".into(), "tls_cert and tls_key go together".into());
            }
            for (key, path) in [("tls_ca", &f.tls_ca), ("tls_cert", &f.tls_cert), ("tls_key", &f.tls_key)] {
                if let Some(path) = path {
                    if let Err(e) = std::fs::metadata(path) {
                        problem(format!("fleet.{key}"), format!("cannot read {}: {e}", path.display()));
                    }
                }
            }
        }
        let mut names = HashSet::new();
        let mut listeners = HashSet::new();
        for (ci, c) in self.clusters.iter_mut().enumerate() {
            let at = format!("cluster[{ci}]");
            if c.name.is_empty() {
                problem(format!("{at}.name"), "must not be empty".into());
            } else if !names.insert(c.name.clone()) {
                problem(format!("{at}.name"), format!("cluster name {:?} is used twice", c.name));
            }
            for (key, addr) in [("listen", Some(c.listen)), ("read_only_listen", c.read_only_listen)] {
                if let Some(addr) = addr {
                    if addr.port() != 0 && !listeners.insert(addr) {
                        problem(format!("{at}.{key}"), format!("address {addr} is already used by another listener"));
                    }
                }
            }
            if c.monitor_interval.is_zero() {
                problem(format!("{at}.monitor_interval"), "must be greater than zero".into());
            }
            if let Some(tls) = &c.tls {
                for (key, path) in
                    [("cert", Some(&tls.cert)), ("key", Some(&tls.key)), ("client_ca", tls.client_ca.as_ref())]
                {
                    if let Some(path) = path {
                        if let Err(e) = std::fs::metadata(path) {
                            problem(format!("{at}.tls.{key}"), format!("cannot read {}: {e}", path.display()));
                        }
                    }
                }
            }
            if let Some(b) = &c.backend_tls {
                let verifies = matches!(b.mode, TlsMode::VerifyCa | TlsMode::VerifyFull);
                match &b.ca {
                    None if verifies => {
                        problem(format!("{at}.backend_tls.ca"), "verify-ca and verify-full need a CA file".into())
                    }
                    Some(path) => {
                        if let Err(e) = std::fs::metadata(path) {
                            problem(format!("{at}.backend_tls.ca"), format!("cannot read {}: {e}", path.display()));
                        }
                    }
                    None => {}
                }
            }
            if c.idle_timeout.is_some_and(|d| d.is_zero()) {
                problem(format!("{at}.idle_timeout"), "must be greater than zero (leave it out for none)".into());
            }
            if c.pool_idle_timeout.is_zero() {
                problem(format!("{at}.pool_idle_timeout"), "must be greater than zero".into());
            }
            if c.max_replica_lag.is_zero() {
                problem(format!("{at}.max_replica_lag"), "must be greater than zero".into());
            }
            for (key, value) in [
                ("max_client_connections", c.max_client_connections),
                ("max_message_size", c.max_message_size),
                ("pool_max_idle", c.pool_max_idle.max(1)),
                ("max_held", c.max_held),
            ] {
                if value == 0 {
                    problem(format!("{at}.{key}"), "must be greater than zero".into());
                }
            }
            if c.max_message_size < 1024 {
                problem(format!("{at}.max_message_size"), "must be at least 1024 bytes".into());
            }
            if c.users.is_empty() {
                problem(format!("{at}.user"), "at least one [[cluster.user]] is required".into());
            }
            let mut users = HashSet::new();
            for (ui, u) in c.users.iter_mut().enumerate() {
                let key = format!("{at}.user[{ui}]");
                if u.name.is_empty() {
                    problem(format!("{key}.name"), "must not be empty".into());
                } else if !users.insert(u.name.clone()) {
                    problem(format!("{key}.name"), format!("user {:?} is configured twice", u.name));
                }
                match (&u.password, &u.password_env) {
                    (Some(_), Some(_)) => problem(key, "set password or password_env, not both".into()),
                    (None, None) => problem(key, "password or password_env is required".into()),
                    (None, Some(var)) => match env(var) {
                        Some(value) => u.password = Some(Secret::new(value)),
                        None => {
                            problem(format!("{key}.password_env"), format!("environment variable {var} is not set"))
                        }
                    },
                    (Some(_), None) => {}
                }
            }
            for (ri, name) in c.read_only_users.iter().enumerate() {
                if !users.contains(name) {
                    problem(
                        format!("{at}.read_only_users[{ri}]"),
                        format!("{name:?} is not a configured [[cluster.user]]"),
                    );
                }
            }
            for f in &mut c.read_only_functions {
                f.make_ascii_lowercase();
            }
            c.read_only_functions.sort();
            if c.backends.is_empty() {
                problem(format!("{at}.backend"), "at least one [[cluster.backend]] is required".into());
            }
            if c.backends.len() > MAX_BACKENDS {
                problem(
                    format!("{at}.backend"),
                    format!("at most {MAX_BACKENDS} backends per cluster (found {})", c.backends.len()),
                );
            }
            let groups = c.groups();
            for group in &groups {
                let primaries = c.backends.iter().filter(|b| b.role == Role::Primary && b.group == *group).count();
                if primaries != 1 {
                    let which = if groups.len() == 1 { String::new() } else { format!(" of group {group:?}") };
                    problem(
                        format!("{at}.backend"),
                        format!("exactly one backend{which} must have role = \"primary\" (found {primaries})"),
                    );
                }
            }
            let mut backends = HashSet::new();
            for (bi, b) in c.backends.iter().enumerate() {
                let key = format!("{at}.backend[{bi}]");
                if b.group.is_empty() {
                    problem(format!("{key}.group"), "must not be empty (leave it out for \"main\")".into());
                }
                if b.name.is_empty() {
                    problem(format!("{key}.name"), "must not be empty".into());
                } else if !backends.insert(b.name.clone()) {
                    problem(format!("{key}.name"), format!("backend {:?} is configured twice", b.name));
                }
                let port_ok = b
                    .address
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
                if !port_ok && !is_unix_socket(&b.address) {
                    problem(
                        format!("{key}.address"),
                        format!("{:?} is not host:port nor the absolute path of a Unix socket", b.address),
                    );
                }
            }
        }
        out
    }
}

/// A type error's message without the value it quotes ("invalid type: integer `123456`,
/// expected a string" becomes "invalid type: integer, expected a string"): the value may be a
/// password, and config errors reach logs and terminals.
fn without_value(message: &str) -> String {
    let prefixes = ["invalid type: ", "invalid value: ", "invalid length "];
    if !prefixes.iter().any(|p| message.starts_with(p)) {
        return message.to_owned();
    }
    let Some((found, expected)) = message.split_once(", expected") else {
        return message.split(['`', '"']).next().unwrap_or_default().trim_end().to_owned();
    };
    let kind = found.split(['`', '"']).next().unwrap_or_default().trim_end();
    format!("{kind}, expected{expected}")
}

/// " (line L, column C, key `table.key`)" for a TOML error, when it has a position: the key is
/// the one on that line, under the nearest table header above it.
fn location(text: &str, e: &toml::de::Error) -> String {
    let Some(span) = e.span() else { return String::new() };
    let before = text.get(..span.start).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let this_line = text.lines().nth(line - 1).unwrap_or("");
    let key = this_line.split_once('=').map(|(k, _)| k.trim()).filter(|k| !k.is_empty() && !k.starts_with('#'));
    let table = text
        .lines()
        .take(line - 1)
        .filter_map(|l| l.trim().strip_prefix('[').map(|t| t.trim_matches(|c| c == '[' || c == ']').trim()))
        .last();
    match (table, key) {
        (Some(t), Some(k)) => format!(" (line {line}, column {col}, key `{t}.{k}`)"),
        (None, Some(k)) => format!(" (line {line}, column {col}, key `{k}`)"),
        _ => format!(" (line {line}, column {col})"),
    }
}

#[cfg(test)]
mod tests;
