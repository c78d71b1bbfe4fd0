//! Users at run time: each configured user with the SCRAM-SHA-256 verifier of their password,
//! derived once (at start, or by a reload that changed it), so a login costs no key derivation.

use std::collections::HashMap;

use sqlswitch_config::Cluster as ClusterConfig;

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

/// The users of `config`, reusing the verifiers of `old` for unchanged passwords (deriving one
/// costs a PBKDF2).
pub fn users_of(config: &ClusterConfig, old: Option<&HashMap<String, User>>) -> HashMap<String, User> {
    config
        .users
        .iter()
        .map(|u| {
            let read_only = config.read_only_users.contains(&u.name);
            let mysql = config.protocol == sqlswitch_config::Protocol::Mysql;
            if let Some(verifier) = Verifier::parse(u.secret()).filter(|_| !mysql) {
                let user = User { password: String::new(), passthrough: true, native_hash: None, verifier, read_only };
                return (u.name.clone(), user);
            }
            if let Some(hash) = crate::conn::scramble::parse_native_hash(u.secret()).filter(|_| mysql) {
                let verifier = Verifier::unused();
                let user =
                    User { password: String::new(), passthrough: true, native_hash: Some(hash), verifier, read_only };
                return (u.name.clone(), user);
            }
            let verifier = match old.and_then(|o| o.get(&u.name)).filter(|o| o.password == u.secret()) {
                _ if mysql => Verifier::unused(),
                Some(o) => o.verifier.clone(),
                None => Verifier::new(u.secret()),
            };
            let user =
                User { password: u.secret().to_owned(), passthrough: false, native_hash: None, verifier, read_only };
            (u.name.clone(), user)
        })
        .collect()
}
