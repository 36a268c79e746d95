//! Token checks for the intake and admin APIs: constant-time, several valid tokens at once.

use crate::secret::Secret;
use axum::http::{HeaderMap, Uri, header};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A set of accepted tokens, kept as SHA-256 digests so that comparing takes the same time
/// whatever the length or content of the token presented.
#[derive(Clone)]
pub struct TokenSet {
    digests: Vec<[u8; 32]>,
}

impl TokenSet {
    pub fn new(tokens: &[Secret]) -> Self {
        TokenSet {
            digests: tokens.iter().map(|t| digest(t.expose())).collect(),
        }
    }

    /// No token configured: every request is let in (allowed on loopback only, see `Config`).
    pub fn is_open(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` is one of the tokens. Every configured token is compared, so the time
    /// taken does not tell which one (if any) matched.
    pub fn accepts(&self, presented: Option<&str>) -> bool {
        if self.is_open() {
            return true;
        }
        let Some(presented) = presented else {
            return false;
        };
        let presented = digest(presented);
        let matched = self
            .digests
            .iter()
            .fold(subtle::Choice::from(0), |acc, d| acc | d.ct_eq(&presented));
        matched.into()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of an `Authorization: Bearer …` header.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The `token` query parameter (Udesk's trigger can only be given a URL).
pub fn query_token(uri: &Uri) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(uri.query()?).ok()?;
    pairs
        .into_iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_any_configured_token_only() {
        let set = TokenSet::new(&[Secret::new("old-token"), Secret::new("new-token")]);
        assert!(set.accepts(Some("old-token")));
        assert!(set.accepts(Some("new-token")));
        assert!(!set.accepts(Some("new-token ")));
        assert!(!set.accepts(Some("")));
        assert!(!set.accepts(None));
        assert!(TokenSet::new(&[]).accepts(None));
    }

    #[test]
    fn reads_bearer_and_query_tokens() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), Some("abc"));
        let uri: Uri = "/v1/notifications?a=1&token=x%2By".parse().unwrap();
        assert_eq!(query_token(&uri).as_deref(), Some("x+y"));
    }
}
