//! The client side of SCRAM-SHA-256 (RFC 5802, RFC 7677), for the proxy's own logins to its
//! backends. A server keeps one salt and iteration count per role, so the expensive part, the
//! salted password (4,096 rounds of PBKDF2 by default, milliseconds of CPU), is computed once
//! per (password, salt, iterations) and kept: a pool refilling after a switchover or a restart
//! pays HMACs per connection, not PBKDF2. The cache is keyed by a hash of those three, so it
//! holds no password. Channel binding is not used (`n,,`), as the proxy's libpq peers do
//! without TLS.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::{digest, hmac, pbkdf2};

/// Entries kept before the cache starts over (one per role and password in use).
const CACHE_LIMIT: usize = 4096;
/// The most PBKDF2 rounds a server may ask for (PostgreSQL's default is 4,096): more would let
/// a misconfigured or hostile backend hold a session thread for seconds.
const MAX_ITERATIONS: u32 = 1_000_000;

/// Salted passwords by a hash of (password, salt, iterations).
type Cache = HashMap<[u8; 32], [u8; 32]>;

static SALTED: Mutex<Option<Cache>> = Mutex::new(None);

fn with_cache<R>(f: impl FnOnce(&mut Cache) -> R) -> R {
    let mut guard = SALTED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    f(guard.get_or_insert_with(HashMap::new))
}

/// Why a SCRAM exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    /// The server's message was malformed or broke the protocol.
    #[error("SCRAM: {0}")]
    Protocol(&'static str),
    /// The server could not prove it knows the password.
    #[error("SCRAM: the server's signature does not match (not the server the password was set on?)")]
    BadServerSignature,
}

/// SCRAM passthrough: the keys a client proved it holds, for a login as that client without
/// its password. The server must keep the same verifier (salt and iteration count), as when the
/// config holds the server's own `SCRAM-SHA-256$...` secret.
#[derive(Clone)]
pub struct Keys {
    /// The client's ClientKey, recovered from its proof.
    pub client_key: [u8; 32],
    /// The verifier's ServerKey, to check the server's signature.
    pub server_key: Vec<u8>,
    /// The verifier's salt.
    pub salt: Vec<u8>,
    /// The verifier's iteration count.
    pub iterations: usize,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

/// What an exchange proves the client with.
enum Secret {
    Password(Vec<u8>),
    Keys(Keys),
}

/// One exchange in progress.
pub struct ScramClient {
    secret: Secret,
    nonce: String,
    client_first_bare: String,
    server_signature: Option<[u8; 32]>,
}

impl ScramClient {
    /// Starts an exchange for `password` with a fresh nonce.
    pub fn new(password: &str) -> Self {
        let nonce: [u8; 18] = rand::random();
        Self::with_nonce(password, &B64.encode(nonce))
    }

    fn with_nonce(password: &str, nonce: &str) -> Self {
        // SASLprep, and the password as it is when that fails, as PostgreSQL does.
        let password =
            stringprep::saslprep(password).map_or_else(|_| password.as_bytes().to_vec(), |p| p.as_bytes().to_vec());
        Self::with_secret(Secret::Password(password), nonce)
    }

    /// Starts an exchange that proves the client with `keys` (SCRAM passthrough).
    pub fn with_keys(keys: Keys) -> Self {
        let nonce: [u8; 18] = rand::random();
        Self::with_secret(Secret::Keys(keys), &B64.encode(nonce))
    }

    fn with_secret(secret: Secret, nonce: &str) -> Self {
        Self { secret, nonce: nonce.to_owned(), client_first_bare: format!("n=,r={nonce}"), server_signature: None }
    }

    /// The client-first message.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Answers the server-first message with the client-final message.
    ///
    /// # Errors
    /// A malformed server-first message, or a nonce that does not extend ours.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<String, ScramError> {
        let server_first =
            std::str::from_utf8(server_first).map_err(|_| ScramError::Protocol("server-first is not UTF-8"))?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for attr in server_first.split(',') {
            match attr.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => salt = Some(B64.decode(v).map_err(|_| ScramError::Protocol("bad salt"))?),
                Some(("i", v)) => iterations = v.parse::<u32>().ok().and_then(NonZeroU32::new),
                _ => {}
            }
        }
        let nonce = nonce.ok_or(ScramError::Protocol("no nonce in server-first"))?;
        let salt = salt.ok_or(ScramError::Protocol("no salt in server-first"))?;
        let iterations = iterations.ok_or(ScramError::Protocol("no iteration count in server-first"))?;
        if iterations.get() > MAX_ITERATIONS {
            return Err(ScramError::Protocol("the server asks for more than 1,000,000 PBKDF2 iterations"));
        }
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Protocol("the server's nonce does not extend the client's"));
        }
        let (client_key, server_key) = match &self.secret {
            Secret::Password(password) => {
                let salted = salted_password(password, &salt, iterations);
                let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
                let (client, server) = (hmac::sign(&key, b"Client Key"), hmac::sign(&key, b"Server Key"));
                (client.as_ref().to_vec(), server.as_ref().to_vec())
            }
            Secret::Keys(keys) => {
                if keys.salt != salt || keys.iterations != iterations.get() as usize {
                    return Err(ScramError::Protocol(
                        "passthrough: the server keeps another verifier for this user than the config (its salt or \
                         iteration count differ): copy rolpassword from pg_authid again",
                    ));
                }
                (keys.client_key.to_vec(), keys.server_key.clone())
            }
        };
        let stored_key = digest::digest(&digest::SHA256, &client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, stored_key.as_ref()), auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(signature.as_ref()).map(|(k, s)| k ^ s).collect();
        let server_signature = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &server_key), auth_message.as_bytes());
        self.server_signature = server_signature.as_ref().try_into().ok();
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final message: the server proves it knew the password too.
    ///
    /// # Errors
    /// An error from the server, a malformed message, or a signature that does not match.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let text = std::str::from_utf8(server_final).map_err(|_| ScramError::Protocol("server-final is not UTF-8"))?;
        let expected = self.server_signature.ok_or(ScramError::Protocol("server-final before server-first"))?;
        match text.split_once('=') {
            Some(("v", v)) if B64.decode(v).ok().as_deref() == Some(&expected[..]) => Ok(()),
            Some(("v", _)) => Err(ScramError::BadServerSignature),
            Some(("e", _)) => Err(ScramError::Protocol("the server refused the exchange")),
            _ => Err(ScramError::Protocol("malformed server-final")),
        }
    }
}

/// The server side of passthrough: after a client proved itself against a verifier
/// (`stored_key`), its ClientKey is `proof XOR HMAC(StoredKey, AuthMessage)`. `client_first` is
/// the client's first message (with its GS2 header), `server_first` the answer, `client_final`
/// the client's last message. `None` when the messages are malformed or the key does not hash to
/// `stored_key`.
pub fn recover_client_key(
    stored_key: &[u8],
    client_first: &[u8],
    server_first: &[u8],
    client_final: &[u8],
) -> Option<[u8; 32]> {
    let client_first = std::str::from_utf8(client_first).ok()?;
    let server_first = std::str::from_utf8(server_first).ok()?;
    let client_final = std::str::from_utf8(client_final).ok()?;
    // The GS2 header is the cbind flag and the authzid, each followed by a comma.
    let mut header = client_first.splitn(3, ',');
    let bare = header.nth(2)?;
    let (without_proof, proof) = client_final.rsplit_once(",p=")?;
    let proof = B64.decode(proof).ok()?;
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let signature = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, stored_key), auth_message.as_bytes());
    let mut client_key = [0u8; 32];
    if proof.len() != client_key.len() {
        return None;
    }
    for ((k, p), s) in client_key.iter_mut().zip(&proof).zip(signature.as_ref()) {
        *k = p ^ s;
    }
    (digest::digest(&digest::SHA256, &client_key).as_ref() == stored_key).then_some(client_key)
}

/// PBKDF2-HMAC-SHA-256 of `password`, from the cache when this (password, salt, iterations) was
/// seen before.
fn salted_password(password: &[u8], salt: &[u8], iterations: NonZeroU32) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    // Each part length-prefixed, so no two different triples hash the same bytes.
    for part in [password, salt, &iterations.get().to_le_bytes()] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part);
    }
    let key: [u8; 32] = ctx.finish().as_ref().try_into().unwrap_or([0; 32]);
    if let Some(salted) = with_cache(|cache| cache.get(&key).copied()) {
        return salted;
    }
    let mut salted = [0u8; 32];
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, salt, password, &mut salted);
    with_cache(|cache| {
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(key, salted);
    });
    salted
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677, section 3.
    #[test]
    fn rfc_7677_exchange() {
        let mut c = ScramClient::with_nonce("pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(c.client_first(), "n,,n=,r=rOprNGfwEbeRWgbNEkqO");
        // The RFC's client-first names the user; PostgreSQL ignores it and sends none.
        c.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert_eq!(
            c.client_final(server_first.as_bytes()).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        c.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").unwrap();
        assert!(matches!(
            c.verify(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ScramError::BadServerSignature)
        ));
        // Again, from the cache: the same answer.
        let mut again = ScramClient::with_nonce("pencil", "rOprNGfwEbeRWgbNEkqO");
        again.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
        assert!(again
            .client_final(server_first.as_bytes())
            .unwrap()
            .ends_with("p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="));
    }

    /// Passthrough, over RFC 7677's exchange: the server side recovers the client's ClientKey
    /// from its proof against the verifier alone, and a client holding only those keys sends
    /// the same proof and checks the same server signature; a server keeping another salt is
    /// refused before anything is sent.
    #[test]
    fn passthrough_recovers_the_client_key_and_logs_in_with_it() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = salted_password(b"pencil", &salt, NonZeroU32::new(4096).unwrap());
        let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
        let client_key: [u8; 32] = hmac::sign(&key, b"Client Key").as_ref().try_into().unwrap();
        let server_key = hmac::sign(&key, b"Server Key").as_ref().to_vec();
        let stored_key = digest::digest(&digest::SHA256, &client_key).as_ref().to_vec();
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client_final =
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let first = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
        let recovered = recover_client_key(&stored_key, first, server_first.as_bytes(), client_final.as_bytes());
        assert_eq!(recovered, Some(client_key));
        let wrong = client_final.replace("p=dH", "p=eH");
        assert_eq!(recover_client_key(&stored_key, first, server_first.as_bytes(), wrong.as_bytes()), None);

        let keys = Keys { client_key, server_key, salt: salt.clone(), iterations: 4096 };
        let mut c = ScramClient::with_secret(Secret::Keys(keys.clone()), "rOprNGfwEbeRWgbNEkqO");
        c.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
        assert_eq!(c.client_final(server_first.as_bytes()).unwrap(), client_final, "the password's own proof");
        c.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").unwrap();
        let mut other =
            ScramClient::with_secret(Secret::Keys(Keys { iterations: 8192, ..keys }), "rOprNGfwEbeRWgbNEkqO");
        let refused = other.client_final(server_first.as_bytes()).unwrap_err().to_string();
        assert!(refused.contains("another verifier"), "{refused}");
    }

    /// Mutated server messages (flipped, dropped and inserted bytes, truncations) never panic,
    /// and a mutated server-final never passes.
    #[test]
    fn mutated_server_messages_never_panic() {
        let first = b"r=abcdXYZ,s=QSXCR+Q6sek8bf92,i=1".to_vec();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut c = ScramClient::with_nonce("pw", "abcd");
        c.client_final(&first).unwrap();
        let good_final = format!("v={}", B64.encode(c.server_signature.unwrap()));
        c.verify(good_final.as_bytes()).unwrap();
        for _ in 0..20_000 {
            for (base, is_final) in [(&first, false), (&good_final.as_bytes().to_vec(), true)] {
                let mut m = base.clone();
                for _ in 0..=(next() % 3) {
                    let at = (next() as usize) % (m.len() + 1);
                    match next() % 4 {
                        0 if at < m.len() => m[at] ^= 1 << (next() % 8),
                        1 if at < m.len() => {
                            m.remove(at);
                        }
                        2 => m.insert(at, next() as u8),
                        _ => m.truncate(at),
                    }
                }
                let mut c = ScramClient::with_nonce("pw", "abcd");
                if is_final {
                    c.client_final(&first).unwrap();
                    assert!(c.verify(&m).is_err() || m == *base, "a mutated signature passed: {m:?}");
                } else {
                    let _ = c.client_final(&m);
                    let _ = c.verify(&m);
                }
            }
        }
    }

    #[test]
    fn hostile_server_messages_are_errors() {
        let mut c = ScramClient::with_nonce("pw", "abc");
        for bad in [
            &b"r=zzz,s=AAAA,i=4096"[..],
            b"r=abcd,s=!!,i=4096",
            b"r=abcd,s=AAAA,i=0",
            b"r=abc,s=AAAA,i=1",
            b"\xff",
            b"r=abcd,s=AAAA,i=4000000000",
        ] {
            assert!(c.client_final(bad).is_err(), "{bad:?}");
        }
        assert!(c.verify(b"v=AAAA").is_err(), "no server-first yet");
        c.client_final(b"r=abcd,s=AAAA,i=1").unwrap();
        assert!(c.verify(b"e=invalid-proof").is_err());
        assert!(c.verify(b"garbage").is_err());
    }
}
