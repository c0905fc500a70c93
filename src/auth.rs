//! Bearer tokens: HS256 JWTs with `sub` (user id), `exp` (required) and an
//! optional `scope` list.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The claims we issue and accept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scope: Vec<String>,
}

/// Why a token was refused. Clients see only "invalid token" (no oracle).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("token invalid: {0}")]
    Invalid(String),
}

/// Verifies and issues tokens with one HS256 secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl TokenKeys {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            })
    }

    pub fn issue(&self, user_id: Uuid, scopes: &[String], ttl: Duration) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            sub: user_id,
            exp: now + ttl.as_secs(),
            iat: Some(now),
            scope: scopes.to_vec(),
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 encoding cannot fail")
    }
}

/// Issues a token signed with `secret` (the `token` command, and tests).
pub fn issue_token(secret: &str, user_id: Uuid, scopes: &[String], ttl: Duration) -> String {
    TokenKeys::new(secret).issue(user_id, scopes, ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn round_trip_keeps_claims() {
        let keys = TokenKeys::new(SECRET);
        let user = Uuid::now_v7();
        let token = keys.issue(user, &["events:read".into()], Duration::from_secs(60));
        let claims = keys.verify(&token).unwrap();
        assert_eq!(claims.sub, user);
        assert_eq!(claims.scope, vec!["events:read".to_string()]);
    }

    #[test]
    fn forged_and_expired_tokens_are_refused() {
        let other = issue_token(
            "another-secret-another-secret-xx",
            Uuid::now_v7(),
            &[],
            Duration::from_secs(60),
        );
        assert!(matches!(
            TokenKeys::new(SECRET).verify(&other),
            Err(TokenError::Invalid(_))
        ));
        let keys = TokenKeys::new(SECRET);
        let an_hour_ago = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 3600;
        let claims = Claims {
            sub: Uuid::now_v7(),
            exp: an_hour_ago,
            iat: None,
            scope: vec![],
        };
        let expired = encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap();
        assert!(matches!(keys.verify(&expired), Err(TokenError::Expired)));
        assert!(TokenKeys::new(SECRET).verify("not.a.token").is_err());
    }
}
