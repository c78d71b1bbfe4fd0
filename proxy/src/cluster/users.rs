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
    /// Password, for logging in to backends.
    pub password: String,
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
            let verifier = match old.and_then(|o| o.get(&u.name)).filter(|o| o.password == u.secret()) {
                Some(o) => o.verifier.clone(),
                None => Verifier::new(u.secret()),
            };
            let user =
                User { password: u.secret().to_owned(), verifier, read_only: config.read_only_users.contains(&u.name) };
            (u.name.clone(), user)
        })
        .collect()
}
