//! The MySQL/MariaDB password scrambles, for a backend login and for checking a client's: what
//! `mysql_native_password` and `caching_sha2_password` send in place of the password, from the
//! server's 20-byte nonce. SHA-1 and SHA-256 from `ring`, as the PostgreSQL SCRAM client uses.

use ring::digest::{digest, Algorithm, Context, SHA1_FOR_LEGACY_USE_ONLY, SHA256};

/// `mysql_native_password`: SHA1(password) XOR SHA1(nonce, SHA1(SHA1(password))); `None` for an
/// empty password (which is sent as nothing).
pub fn native(nonce: &[u8], password: &[u8]) -> Option<[u8; 20]> {
    scramble(&SHA1_FOR_LEGACY_USE_ONLY, password, nonce, true)
}

/// `caching_sha2_password`: SHA256(password) XOR SHA256(SHA256(SHA256(password)), nonce);
/// `None` for an empty password.
pub fn sha256(nonce: &[u8], password: &[u8]) -> Option<[u8; 32]> {
    scramble(&SHA256, password, nonce, false)
}

/// `mysql_native_password` from the key SHA1(password) alone (passthrough: the key a client's
/// scramble gave, [`native_key`]), for a server whose nonce is `nonce`.
pub fn native_from_key(nonce: &[u8], key: &[u8; 20]) -> [u8; 20] {
    let stored = digest(&SHA1_FOR_LEGACY_USE_ONLY, key);
    let mut context = Context::new(&SHA1_FOR_LEGACY_USE_ONLY);
    context.update(nonce);
    context.update(stored.as_ref());
    let salted = context.finish();
    let mut out = [0u8; 20];
    for ((o, a), b) in out.iter_mut().zip(key).zip(salted.as_ref()) {
        *o = a ^ b;
    }
    out
}

/// The server side of `mysql_native_password` against a stored hash (SHA1(SHA1(password)), as
/// MariaDB keeps it, without its `*`): the key SHA1(password) a client's `scramble` for `nonce`
/// proves, or `None` when the scramble does not match the hash.
pub fn native_key(nonce: &[u8], stored: &[u8; 20], scramble: &[u8]) -> Option<[u8; 20]> {
    let mut context = Context::new(&SHA1_FOR_LEGACY_USE_ONLY);
    context.update(nonce);
    context.update(stored);
    let salted = context.finish();
    let key: [u8; 20] = scramble.try_into().ok()?;
    let mut out = [0u8; 20];
    for ((o, a), b) in out.iter_mut().zip(&key).zip(salted.as_ref()) {
        *o = a ^ b;
    }
    (digest(&SHA1_FOR_LEGACY_USE_ONLY, &out).as_ref() == stored).then_some(out)
}

/// Reads MariaDB's stored `mysql_native_password` hash (`*` and 40 hex digits, as
/// `mysql.user.authentication_string` or `SELECT PASSWORD('...')` gives it).
pub fn parse_native_hash(text: &str) -> Option<[u8; 20]> {
    let hex = text.strip_prefix('*').filter(|h| h.len() == 40)?;
    let mut out = [0u8; 20];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// H(password) XOR H(nonce, H(H(password))) (or with the nonce last), over the digest
/// `algorithm` of `N` bytes.
fn scramble<const N: usize>(
    algorithm: &'static Algorithm,
    password: &[u8],
    nonce: &[u8],
    nonce_first: bool,
) -> Option<[u8; N]> {
    if password.is_empty() {
        return None;
    }
    let once = digest(algorithm, password);
    let twice = digest(algorithm, once.as_ref());
    let mut context = Context::new(algorithm);
    let (first, second) = if nonce_first { (nonce, twice.as_ref()) } else { (twice.as_ref(), nonce) };
    context.update(first);
    context.update(second);
    let salted = context.finish();
    let mut out = [0u8; N];
    for ((o, a), b) in out.iter_mut().zip(once.as_ref()).zip(salted.as_ref()) {
        *o = a ^ b;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    /// Vectors computed with Python's hashlib from the formulas MySQL documents.
    #[test]
    fn scrambles_match_the_documented_formulas() {
        let nonce: Vec<u8> = (1..=20).collect();
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        assert_eq!(hex(&super::native(&nonce, b"secret").unwrap()), "b32bb3a583e1340c0a1108d58b1be49781ad8c2f");
        assert_eq!(
            hex(&super::sha256(&nonce, b"secret").unwrap()),
            "746ebe205d56a0707acb3e796e834e0dd7b1d61743b26bd5202c7a623230c7c9"
        );
        assert_eq!(super::native(&nonce, b""), None, "an empty password is sent as nothing");
        // Passthrough: MariaDB's stored hash of "secret" (SELECT PASSWORD('secret')).
        let stored = super::parse_native_hash("*14E65567ABDB5135D0CFD9A70B3032C179A49EE7").unwrap();
        let scramble = super::native(&nonce, b"secret").unwrap();
        let key = super::native_key(&nonce, &stored, &scramble).expect("the scramble proves the key");
        let other: Vec<u8> = (21..=40).collect();
        assert_eq!(super::native_from_key(&other, &key), super::native(&other, b"secret").unwrap());
        assert_eq!(super::native_key(&nonce, &stored, &super::native(&nonce, b"wrong").unwrap()), None);
        assert_eq!(super::parse_native_hash("*14E6"), None);
        assert_eq!(super::sha256(&nonce, b""), None);
    }
}
