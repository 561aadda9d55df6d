//! Join tokens: `MESHTKN-1-<CA digest>-<secret>`, after Swarm's `SWMTKN-1-…`.
//!
//! The digest lets a joining node pin the cluster CA before it trusts the
//! manager it talks to; the secret decides the role it joins with. Each role
//! has its own secret in the replicated state ([`JoinSecrets`]); rotating one
//! replaces it, and tokens carrying the old secret stop working.

use std::fmt;
use std::str::FromStr;

use rand::Rng as _;

use mesh_api::cluster::JoinSecrets;

use mesh_api::node::Role;

/// The token's prefix and format version.
const PREFIX: &str = "MESHTKN-1-";

/// Length of a CA digest: hex SHA-256.
const DIGEST_LEN: usize = 64;

/// Length of a generated secret: 25 characters of 36 carry 129 bits.
pub const SECRET_LEN: usize = 25;

/// Shortest secret [`JoinToken::parse`] accepts.
const MIN_SECRET_LEN: usize = 16;

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// Why a join token was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token is not of the form `MESHTKN-1-<digest>-<secret>`.
    #[error("invalid join token: {0}")]
    Malformed(String),
    /// The token names a CA other than this cluster's.
    #[error(
        "the join token is for another cluster: it names CA {token}, this cluster's CA is {current}"
    )]
    CaMismatch {
        /// The digest in the token.
        token: String,
        /// This cluster's CA digest.
        current: String,
    },
    /// The secret is not one of the current secrets.
    #[error("the join token is invalid or has been rotated")]
    Rotated,
}

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The cluster CA's digest ([`ca_digest`](super::ca::ca_digest)), lower-case
    /// hex.
    pub ca_digest: String,
    /// The role's secret: lower-case letters and digits.
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_digest", &self.ca_digest)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}-{}", self.ca_digest, self.secret)
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl JoinToken {
    /// A token for the CA with digest `ca_digest` and `secret`.
    #[must_use]
    pub fn new(ca_digest: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            ca_digest: ca_digest.into(),
            secret: secret.into(),
        }
    }

    /// Parses `MESHTKN-1-<64 hex digits>-<secret>`; surrounding white space
    /// is ignored.
    ///
    /// # Errors
    ///
    /// [`TokenError::Malformed`], saying what is wrong.
    pub fn parse(token: &str) -> Result<Self, TokenError> {
        let token = token.trim();
        let malformed = |what: &str| TokenError::Malformed(what.to_owned());
        if token.is_empty() {
            return Err(malformed("the token is empty"));
        }
        let rest = token.strip_prefix(PREFIX).ok_or_else(|| {
            if token.starts_with("MESHTKN-") {
                malformed("unsupported token version (expected MESHTKN-1-)")
            } else {
                malformed("it does not start with MESHTKN-1-")
            }
        })?;
        let (digest, secret) = rest
            .split_once('-')
            .ok_or_else(|| malformed("expected MESHTKN-1-<CA digest>-<secret>"))?;
        if digest.len() != DIGEST_LEN
            || !digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(malformed(
                "the CA digest must be 64 lower-case hexadecimal digits",
            ));
        }
        if secret.len() < MIN_SECRET_LEN
            || !secret
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        {
            return Err(malformed(&format!(
                "the secret must be at least {MIN_SECRET_LEN} lower-case letters and digits"
            )));
        }
        Ok(Self::new(digest, secret))
    }
}

/// A new random secret for a join token: [`SECRET_LEN`] lower-case letters
/// and digits from the thread's cryptographically secure generator.
#[must_use]
pub fn generate_secret() -> String {
    let mut rng = rand::rng();
    (0..SECRET_LEN)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// The role a token joins with, given the cluster's current secrets and CA
/// digest. Secrets are compared in constant time.
///
/// # Errors
///
/// [`TokenError::Malformed`] if the token does not parse,
/// [`TokenError::CaMismatch`] if it names another CA, [`TokenError::Rotated`]
/// if its secret is not a current one.
pub fn role_for(
    token: &str,
    secrets: &JoinSecrets,
    current_ca_digest: &str,
) -> Result<Role, TokenError> {
    let token = JoinToken::parse(token)?;
    if !constant_time_eq(token.ca_digest.as_bytes(), current_ca_digest.as_bytes()) {
        return Err(TokenError::CaMismatch {
            token: token.ca_digest,
            current: current_ca_digest.to_owned(),
        });
    }
    // Compare with both secrets, always, so timing says nothing about which
    // (if any) matched. An empty secret (not bootstrapped) matches nothing.
    let worker = !secrets.worker.is_empty()
        && constant_time_eq(token.secret.as_bytes(), secrets.worker.as_bytes());
    let manager = !secrets.manager.is_empty()
        && constant_time_eq(token.secret.as_bytes(), secrets.manager.as_bytes());
    match (manager, worker) {
        (true, _) => Ok(Role::Manager),
        (false, true) => Ok(Role::Worker),
        (false, false) => Err(TokenError::Rotated),
    }
}

/// Equality whose time depends on the lengths only, not on where the
/// contents first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn secrets() -> JoinSecrets {
        JoinSecrets {
            worker: generate_secret(),
            manager: generate_secret(),
        }
    }

    #[test]
    fn secrets_are_long_random_and_lower_case_alphanumeric() {
        let a = generate_secret();
        let b = generate_secret();
        assert_ne!(a, b);
        assert_eq!(a.len(), SECRET_LEN);
        // 36^25 > 2^128.
        assert!((SECRET_LEN as f64) * 36f64.log2() >= 128.0);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
        );
    }

    #[test]
    fn tokens_format_and_parse_back() {
        let token = JoinToken::new(DIGEST, generate_secret());
        let text = token.to_string();
        assert!(text.starts_with("MESHTKN-1-0123"), "{text}");
        assert_eq!(JoinToken::parse(&format!("  {text}\n")).unwrap(), token);
        assert_eq!(text.parse::<JoinToken>().unwrap(), token);
        assert!(!format!("{token:?}").contains(&token.secret));
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let secret = generate_secret();
        for (bad, why) in [
            (String::new(), "empty"),
            ("hello".to_owned(), "does not start with MESHTKN-1-"),
            (format!("SWMTKN-1-{DIGEST}-{secret}"), "does not start"),
            (
                format!("MESHTKN-2-{DIGEST}-{secret}"),
                "unsupported token version",
            ),
            (format!("MESHTKN-1-{DIGEST}{secret}"), "expected MESHTKN-1-"),
            (
                format!("MESHTKN-1-abc-{secret}"),
                "64 lower-case hexadecimal",
            ),
            (
                format!("MESHTKN-1-{}-{secret}", DIGEST.to_uppercase()),
                "64 lower-case hexadecimal",
            ),
            (format!("MESHTKN-1-{DIGEST}-short"), "the secret must be"),
            (
                format!("MESHTKN-1-{DIGEST}-{}", secret.to_uppercase()),
                "the secret must be",
            ),
            (
                format!("MESHTKN-1-{DIGEST}-{secret}-x"),
                "the secret must be",
            ),
        ] {
            let err = JoinToken::parse(&bad).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("invalid join token: "), "{bad:?}: {msg}");
            assert!(msg.contains(why), "{bad:?}: {msg}");
            assert_eq!(
                role_for(&bad, &secrets(), DIGEST).unwrap_err(),
                err,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn role_for_picks_the_role_of_the_secret() {
        let s = secrets();
        let worker = JoinToken::new(DIGEST, s.worker.clone()).to_string();
        let manager = JoinToken::new(DIGEST, s.manager.clone()).to_string();
        assert_eq!(role_for(&worker, &s, DIGEST), Ok(Role::Worker));
        assert_eq!(role_for(&manager, &s, DIGEST), Ok(Role::Manager));
    }

    #[test]
    fn a_rotated_secret_is_refused() {
        let mut s = secrets();
        let old = JoinToken::new(DIGEST, s.worker.clone()).to_string();
        s.worker = generate_secret();
        let err = role_for(&old, &s, DIGEST).unwrap_err();
        assert_eq!(err, TokenError::Rotated);
        assert_eq!(
            err.to_string(),
            "the join token is invalid or has been rotated"
        );
    }

    #[test]
    fn a_token_for_another_ca_is_refused() {
        let s = secrets();
        let other = "f".repeat(64);
        let token = JoinToken::new(other.clone(), s.manager.clone()).to_string();
        let err = role_for(&token, &s, DIGEST).unwrap_err();
        assert_eq!(
            err,
            TokenError::CaMismatch {
                token: other,
                current: DIGEST.into()
            }
        );
        assert!(err.to_string().contains("another cluster"), "{err}");
    }

    #[test]
    fn empty_secrets_match_nothing() {
        let token = JoinToken::new(DIGEST, "a".repeat(20)).to_string();
        assert_eq!(
            role_for(&token, &JoinSecrets::default(), DIGEST),
            Err(TokenError::Rotated)
        );
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(constant_time_eq(b"", b""));
    }
}
