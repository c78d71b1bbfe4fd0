//! Users at run time: each configured user with the SCRAM-SHA-256 verifier of their password,
//! derived once (at start, or by a reload that changed it), so a login costs no key derivation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlswitch_config::Cluster as ClusterConfig;
use tracing::{debug, warn};

/// A user's SCRAM-SHA-256 verifier (RFC 5802 StoredKey and ServerKey).
#[derive(Clone)]
pub struct Verifier {
    /// Salt sent to clients.
    pub salt: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: usize,
    /// `H(ClientKey)`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl Verifier {
    /// Derives the verifier of `password` with a fresh random salt.
    pub fn new(password: &str) -> Self {
        use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramSecret};
        const ITERATIONS: usize = 4096;
        let salt: [u8; 16] = rand::random();
        let salted = gen_salted_password(password, &salt, ITERATIONS);
        match ScramSecret::verifier_from_salted_password(salt.to_vec(), salted, ITERATIONS) {
            ScramSecret::Verifier { salt, iterations, stored_key, server_key } => {
                Self { salt, iterations, stored_key, server_key }
            }
            ScramSecret::SaltedPassword { salt, .. } => {
                Self { salt, iterations: ITERATIONS, stored_key: Vec::new(), server_key: Vec::new() }
            }
        }
    }

    /// No verifier: a MySQL cluster's users are checked by their scramble, never by SCRAM, so
    /// no key derivation (a PBKDF2 per user, at start and at each reload) is spent on them.
    pub fn unused() -> Self {
        Self { salt: Vec::new(), iterations: 0, stored_key: Vec::new(), server_key: Vec::new() }
    }

    /// Reads a server's own SCRAM-SHA-256 secret, as PostgreSQL keeps it in
    /// `pg_authid.rolpassword`: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
    /// (base64); `None` when `text` is not one.
    pub fn parse(text: &str) -> Option<Self> {
        use base64::engine::general_purpose::STANDARD as B64;
        use base64::Engine as _;
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let (stored_key, server_key) = (B64.decode(stored).ok()?, B64.decode(server).ok()?);
        (stored_key.len() == 32 && server_key.len() == 32).then_some(())?;
        Some(Self { salt: B64.decode(salt).ok()?, iterations: iterations.parse().ok()?, stored_key, server_key })
    }

    /// The verifier as pgwire's SCRAM state machine takes it.
    pub fn secret(&self) -> pgwire::api::auth::sasl::scram::ScramSecret {
        pgwire::api::auth::sasl::scram::ScramSecret::Verifier {
            salt: self.salt.clone(),
            iterations: self.iterations,
            stored_key: self.stored_key.clone(),
            server_key: self.server_key.clone(),
        }
    }
}

/// A configured user at run time.
#[derive(Clone)]
pub struct User {
    /// Password, for logging in to backends (empty for a passthrough user).
    pub password: String,
    /// The config keeps the server's own SCRAM verifier, not a password: the session logs in
    /// to backends with the keys its client proved it holds (SCRAM passthrough).
    pub passthrough: bool,
    /// MySQL/MariaDB: the config keeps the server's stored `mysql_native_password` hash
    /// (SHA1(SHA1(password))), not a password: clients are checked against it, and the session
    /// logs in to backends with the key its client's scramble proved.
    pub native_hash: Option<[u8; 20]>,
    /// Verifier, for checking clients.
    pub verifier: Verifier,
    /// Whether this user's sessions are read-only.
    pub read_only: bool,
}

/// A user whose stored secret stands for its password: the server's own SCRAM verifier
/// (PostgreSQL) or `mysql_native_password` hash (`mysql`), checked against clients' proofs and
/// logged in to backends with the key they prove; `None` when `secret` is neither.
fn passthrough(secret: &str, mysql: bool, read_only: bool) -> Option<User> {
    let (verifier, native_hash) = if mysql {
        (Verifier::unused(), Some(crate::conn::scramble::parse_native_hash(secret)?))
    } else {
        (Verifier::parse(secret)?, None)
    };
    Some(User { password: String::new(), passthrough: true, native_hash, verifier, read_only })
}

/// The users of `config`, reusing the verifiers of `old` for unchanged passwords (deriving one
/// costs a PBKDF2).
pub fn users_of(config: &ClusterConfig, old: Option<&HashMap<String, Arc<User>>>) -> HashMap<String, Arc<User>> {
    config
        .users
        .iter()
        .map(|u| {
            let read_only = config.read_only_users.contains(&u.name);
            let mysql = config.protocol == sqlswitch_config::Protocol::Mysql;
            if let Some(user) = passthrough(u.secret(), mysql, read_only) {
                return (u.name.clone(), Arc::new(user));
            }
            let verifier = match old.and_then(|o| o.get(&u.name)).filter(|o| o.password == u.secret()) {
                _ if mysql => Verifier::unused(),
                Some(o) => o.verifier.clone(),
                None => Verifier::new(u.secret()),
            };
            let user =
                User { password: u.secret().to_owned(), passthrough: false, native_hash: None, verifier, read_only };
            (u.name.clone(), Arc::new(user))
        })
        .collect()
}

/// How long a user looked up through `auth_user` is trusted before it is looked up again, and
/// how long an unknown name is.
const LOOKED_UP_FOR: Duration = Duration::from_secs(30);
const UNKNOWN_FOR: Duration = Duration::from_secs(5);
/// Names kept at most (unknown ones included): past it, the cache starts again.
const MAX_LOOKED_UP: usize = 10_000;

/// PostgreSQL's `auth_query` default: the role's SCRAM verifier, for a role that may log in.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1 \
     AND rolcanlogin AND (rolvaliduntil IS NULL OR rolvaliduntil > now())";

/// MariaDB's: the user's stored `mysql_native_password` hash (the first of its hosts).
pub const DEFAULT_AUTH_QUERY_MYSQL: &str =
    "SELECT authentication_string FROM mysql.user WHERE user = $1 AND plugin = 'mysql_native_password' LIMIT 1";

/// A looked-up user (`None`: no such user, or no SCRAM verifier) and when it was looked up.
type Found = (Option<Arc<User>>, Instant);

/// Users looked up on the primary through `auth_user`, by name.
#[derive(Default)]
pub struct LookedUp(std::sync::Mutex<HashMap<String, Found>>);

impl LookedUp {
    fn get(&self, name: &str) -> Option<Option<Arc<User>>> {
        let map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (user, at) = map.get(name)?;
        let ttl = if user.is_some() { LOOKED_UP_FOR } else { UNKNOWN_FOR };
        (at.elapsed() < ttl).then(|| user.clone())
    }

    fn put(&self, name: &str, user: Option<Arc<User>>) {
        let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= MAX_LOOKED_UP {
            map.clear();
        }
        map.insert(name.to_owned(), (user, Instant::now()));
    }
}

/// No server of the cluster answered an `auth_user` lookup: the login fails as the cluster's
/// unavailability, not as a wrong password.
#[derive(Debug, Clone, Copy)]
pub struct LookupFailed;

impl LookupFailed {
    /// What the client hears.
    pub fn text(self, name: &str) -> String {
        format!("sqlswitch could not look up user \"{name}\" (auth_user): no server of the cluster answered")
    }
}

impl super::Cluster {
    /// The user called `name`: a configured one, else (with `auth_user`) one looked up on the
    /// primary, or on a replica when the primary cannot answer (its catalog is the primary's),
    /// logged in by passthrough (a PostgreSQL SCRAM verifier, a MariaDB native password hash);
    /// `None` when there is none (its login then fails as a wrong password does).
    ///
    /// # Errors
    /// [`LookupFailed`] when no server answered the lookup.
    pub async fn account(&self, name: &str) -> Result<Option<Arc<User>>, LookupFailed> {
        if let Some(user) = self.users.load().get(name) {
            return Ok(Some(Arc::clone(user)));
        }
        let Some(auth) = self.config.auth_user.as_ref() else { return Ok(None) };
        if let Some(known) = self.looked_up.get(name) {
            return Ok(known);
        }
        let mysql = self.config.protocol == sqlswitch_config::Protocol::Mysql;
        let default = if mysql { DEFAULT_AUTH_QUERY_MYSQL } else { DEFAULT_AUTH_QUERY };
        let query = self.config.auth_query.as_deref().unwrap_or(default);
        // MariaDB reads a backslash in a literal as an escape (unless NO_BACKSLASH_ESCAPES,
        // where the doubled one is two characters: no match, never an injection).
        let quoted = if mysql { name.replace('\\', "\\\\") } else { name.to_owned() };
        let sql = query.replace("$1", &crate::replication::literal(&quoted));
        let mut rows = Err(LookupFailed);
        for index in self.lookup_order() {
            let Some(b) = self.backends.at(index) else { continue };
            let target = crate::replication::ControlTarget {
                protocol: self.config.protocol,
                address: &b.address,
                monitor: auth,
                tls: self.backend_tls.load_full(),
                timeout: self.config.connect_timeout,
                metrics: &b.metrics,
            };
            let answer = match crate::replication::ControlConn::connect(&target, "sqlswitch auth_user").await {
                Ok(mut conn) => conn.exec(&sql).await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(found) => {
                    rows = Ok(found);
                    break;
                }
                Err(e) => {
                    warn!(cluster = %self.config.name, backend = %b.name, user = %name, error = %e, "auth_user could not look the user up there");
                }
            }
        }
        let rows = rows?;
        let secret = rows.first().and_then(|r| r.first()).cloned().flatten();
        let read_only = self.config.read_only_users.iter().any(|u| u == name);
        let user = secret.as_deref().and_then(|s| passthrough(s, mysql, read_only));
        if secret.is_some() && user.is_none() {
            debug!(user = %name, "auth_user: the user's stored secret is not one sqlswitch can check");
        }
        let user = user.map(Arc::new);
        self.looked_up.put(name, user.clone());
        Ok(user)
    }

    /// Where an `auth_user` lookup is tried, in order: the primary first, unless sessions
    /// cannot use it now ([`super::Cluster::maintenance`]: it is tried last), and the replicas
    /// that serve reads.
    fn lookup_order(&self) -> Vec<usize> {
        let primary = self.table.load().primary;
        let mut order: Vec<usize> = self.candidates(true).into_iter().filter(|&i| i != primary).collect();
        if self.maintenance().is_some() {
            order.push(primary);
        } else {
            order.insert(0, primary);
        }
        order
    }
}
