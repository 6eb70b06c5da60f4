//! Passwords and robot tokens at rest: argon2id hashes for passwords, SHA-256
//! for robot tokens (random and long, so a fast hash is enough and lets the
//! token be looked up by its hash).

use std::sync::OnceLock;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::Engine;
use rand::RngCore;
use sha2::Digest as _;

/// Robot tokens start with this, so a presented password is known to be one.
pub const ROBOT_TOKEN_PREFIX: &str = "berth_rt_";

/// The password hash of a user provisioned by single sign-on, who has no
/// password: it is no PHC string, so no password verifies against it, and it
/// tells such users from local ones.
pub const SSO_PASSWORD_HASH: &str = "!sso";

/// Least password length accepted for local users.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// An argon2id PHC string for `password`.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))
}

/// Whether `password` matches `hash` (argon2 compares in constant time).
pub fn verify_password(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Spends the time of one password check, so an unknown user name answers as
/// slowly as a known one with a wrong password.
pub fn verify_against_nothing(password: &str) {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let hash = DUMMY.get_or_init(|| hash_password("not a password of anyone").unwrap_or_default());
    let _ = verify_password(hash, password);
}

/// A new robot token: the prefix and 32 random bytes.
pub fn new_robot_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{ROBOT_TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// What is stored of a robot token.
pub fn robot_token_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_against_their_hash() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "correct horsE"));
        assert!(!verify_password("garbage", "correct horse"));
    }

    #[test]
    fn robot_tokens_are_unique_and_hash_stably() {
        let a = new_robot_token();
        assert!(a.starts_with(ROBOT_TOKEN_PREFIX));
        assert_ne!(a, new_robot_token());
        assert_eq!(robot_token_hash(&a), robot_token_hash(&a));
        assert_eq!(robot_token_hash(&a).len(), 64);
    }
}
