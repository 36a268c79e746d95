//! Request signing (PURE): Standard Webhooks signatures for webhook targets, and the `sign`
//! parameter of Udesk's open API.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Why a webhook secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("webhook secret must look like `whsec_<base64>`")]
    Format,
    #[error("webhook secret is not valid base64 after `whsec_`")]
    Base64,
}

/// A Standard Webhooks signing key, decoded from its `whsec_…` form.
#[derive(Clone)]
pub struct WebhookKey(Vec<u8>);

impl std::fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookKey(***)")
    }
}

impl WebhookKey {
    pub fn parse(secret: &str) -> Result<Self, SecretError> {
        let encoded = secret
            .trim()
            .strip_prefix("whsec_")
            .ok_or(SecretError::Format)?;
        let key = STANDARD.decode(encoded).map_err(|_| SecretError::Base64)?;
        if key.is_empty() {
            return Err(SecretError::Format);
        }
        Ok(WebhookKey(key))
    }

    /// The `webhook-signature` header value: `v1,` and the base64 HMAC-SHA256 of
    /// `{id}.{timestamp}.{body}`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// Whether any of the space-separated signatures in a `webhook-signature` header is ours
    /// (constant-time). Receivers use this; so do the tests.
    pub fn verify(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        header.split_whitespace().any(|candidate| {
            let Some(encoded) = candidate.strip_prefix("v1,") else {
                return false;
            };
            let Ok(signature) = STANDARD.decode(encoded) else {
                return false;
            };
            let mut mac = self.mac();
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(body);
            mac.verify_slice(&signature).is_ok()
        })
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts keys of any length")
    }
}

/// Udesk open API signature (`sign_version=v2`): hex SHA-256 of `email&token&timestamp&nonce&v2`.
pub fn udesk_sign(email: &str, token: &str, timestamp: i64, nonce: &str) -> String {
    hex::encode(Sha256::digest(format!(
        "{email}&{token}&{timestamp}&{nonce}&v2"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_reference_vector() {
        // The example from the Standard Webhooks specification.
        let key = WebhookKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let signature = key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(key.verify(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
            &format!("v1,bogus {signature}")
        ));
        assert!(!key.verify("msg_other", 1614265330, body, &signature));
        assert!(!key.verify("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265331, body, &signature));
    }

    #[test]
    fn bad_secrets_are_named() {
        assert_eq!(
            WebhookKey::parse("MfKQ9r8G").unwrap_err(),
            SecretError::Format
        );
        assert_eq!(
            WebhookKey::parse("whsec_!!!").unwrap_err(),
            SecretError::Base64
        );
        assert!(
            !format!(
                "{:?}",
                WebhookKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
            )
            .contains("MfKQ")
        );
    }

    #[test]
    fn udesk_sign_is_sha256_of_the_documented_string() {
        let sign = udesk_sign("admin@example.com", "tok", 1_700_000_000, "n1");
        assert_eq!(
            sign,
            hex::encode(Sha256::digest("admin@example.com&tok&1700000000&n1&v2"))
        );
        assert_eq!(sign.len(), 64);
    }
}
