//! Password hashes (Argon2id) and bearer tokens (random, stored as SHA-256).

use std::sync::LazyLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::Password;

/// Hashes a password with Argon2id (the crate's defaults: OWASP's recommended parameters) and
/// a random salt, as a PHC string. CPU-heavy: call it off the async workers.
pub fn hash_password(password: &Password) -> Result<String, argon2::password_hash::Error> {
    Ok(Argon2::default()
        .hash_password(password.expose().as_bytes())?
        .to_string())
}

/// Whether `password` matches the PHC `hash`. A malformed stored hash never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// Spends the time of a verification when there is no user to verify against, so that login
/// takes as long for unknown names as for wrong passwords (no user enumeration by timing).
pub fn verify_against_nothing(password: &str) {
    static DUMMY: LazyLock<String> = LazyLock::new(|| {
        Argon2::default()
            .hash_password(b"not a password of anyone")
            .map(|h| h.to_string())
            .unwrap_or_default()
    });
    let _ = verify_password(password, &DUMMY);
}

/// A new bearer token: `sc_` and 256 random bits in base64url. The prefix lets secret scanners
/// recognise leaked tokens.
pub fn new_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("sc_{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// What is stored for a token: its SHA-256. Tokens carry 256 bits of entropy, so a fast hash is
/// enough; a leaked table gives no usable tokens.
pub fn token_digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_round_trip() {
        let password = Password::parse("correct horse battery").unwrap();
        let hash = hash_password(&password).unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("wrong horse battery", &hash));
        assert!(!verify_password("correct horse battery", "not a hash"));
    }

    #[test]
    fn tokens_are_random_and_digested() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("sc_") && a.len() == 46);
        assert_eq!(token_digest(&a).len(), 32);
        assert_ne!(token_digest(&a), token_digest(&b));
    }
}
