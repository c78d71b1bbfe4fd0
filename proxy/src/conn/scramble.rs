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
        assert_eq!(super::sha256(&nonce, b""), None);
    }
}
