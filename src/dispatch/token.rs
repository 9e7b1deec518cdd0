//! Comparing a presented token with the service's.
//!
//! Invariant: the time taken depends only on the lengths, never on how
//! many leading bytes of a guess were right.

/// Compares without an early exit, so the time taken does not tell an
/// attacker how much of a guessed token was right.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = 0u8;
    for (i, &expected) in b.iter().enumerate() {
        diff |= a.get(i).copied().unwrap_or(0) ^ expected;
    }
    diff == 0 && a.len() == b.len()
}

/// Whether a request's `auth` field carries `token` (no field counts as
/// an empty token, which never matches a configured one).
pub(super) fn presents(auth: Option<&str>, token: &str) -> bool {
    constant_time_eq(auth.unwrap_or("").as_bytes(), token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secreT", b"secret"));
        assert!(!constant_time_eq(b"secret1", b"secret"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
