//! Access keys: 256-bit random, shown once, stored only as a sha256 hash, compared in constant time.
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A new access key: 32 random bytes as 64 hex characters.
pub fn generate_key() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// The hash kept by the cluster. Keys are full-entropy, so one sha256 round is enough.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Equality whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // Keep the compiler from turning the loop into an early exit.
    std::hint::black_box(diff) == 0
}

/// Does `key` match the stored `hash`?
pub fn key_matches(key: &str, hash: &str) -> bool {
    constant_time_eq(hash_key(key).as_bytes(), hash.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_and_hash_checks() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(key_matches(&a, &hash_key(&a)));
        assert!(!key_matches(&b, &hash_key(&a)));
        assert!(!constant_time_eq(b"ab", b"abc"));
    }
}
