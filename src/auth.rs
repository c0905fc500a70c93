//! Bearer tokens: HS256 JWTs with `sub` (user id), `exp` (required), an
//! optional `scope` list, and `iss`/`aud`, checked when configured. During a
//! key rotation the previous secret still verifies (never signs).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{
    decode, encode, errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The scopes the API knows. Names are fixed: clients and tests rely on them.
pub mod scopes {
    /// Start and end streams (`POST /v1/streams`, `POST /v1/streams/{id}/end`).
    pub const STREAMS_WRITE: &str = "streams:write";
    /// Read the event log (`GET /v1/events`).
    pub const EVENTS_READ: &str = "events:read";
}

/// The claims we issue and accept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
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

/// Verifies tokens with the current secret (or the previous one, during a
/// rotation) and issues them with the current one.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    previous: Option<DecodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    validation: Validation,
}

impl TokenKeys {
    pub fn new(secret: &str) -> Self {
        let mut keys = Self {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            previous: None,
            issuer: None,
            audience: None,
            validation: Validation::new(Algorithm::HS256),
        };
        keys.revalidate();
        keys
    }

    /// Also accepts tokens signed with `secret` (the one being rotated out).
    pub fn with_previous_secret(mut self, secret: Option<&str>) -> Self {
        self.previous = secret.map(|s| DecodingKey::from_secret(s.as_bytes()));
        self
    }

    /// Requires (and issues) `iss` = `issuer` when set.
    pub fn with_issuer(mut self, issuer: Option<&str>) -> Self {
        self.issuer = issuer.map(str::to_owned);
        self.revalidate();
        self
    }

    /// Requires (and issues) `aud` = `audience` when set.
    pub fn with_audience(mut self, audience: Option<&str>) -> Self {
        self.audience = audience.map(str::to_owned);
        self.revalidate();
        self
    }

    fn revalidate(&mut self) {
        let mut validation = Validation::new(Algorithm::HS256);
        let mut required = vec!["exp", "sub"];
        validation.leeway = 5;
        match &self.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            // Unconfigured: a token's `aud` is not ours to judge.
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        self.validation = validation;
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let current = decode::<Claims>(token, &self.decoding, &self.validation);
        let result = match (current, &self.previous) {
            (Err(e), Some(previous)) if *e.kind() == ErrorKind::InvalidSignature => {
                decode::<Claims>(token, previous, &self.validation)
            }
            (result, _) => result,
        };
        result.map(|data| data.claims).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
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
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            scope: scopes.to_vec(),
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 encoding cannot fail")
    }
}

/// Issues a token signed with `secret`, without `iss`/`aud` (tests, the bench).
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
            iss: None,
            aud: None,
            scope: vec![],
        };
        let expired = encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap();
        assert!(matches!(keys.verify(&expired), Err(TokenError::Expired)));
        assert!(TokenKeys::new(SECRET).verify("not.a.token").is_err());
    }

    #[test]
    fn the_previous_secret_verifies_but_never_signs() {
        const OLD: &str = "the-old-secret-the-old-secret-xx";
        let user = Uuid::now_v7();
        let old = issue_token(OLD, user, &[], Duration::from_secs(60));
        let keys = TokenKeys::new(SECRET).with_previous_secret(Some(OLD));
        assert_eq!(keys.verify(&old).unwrap().sub, user);
        assert!(TokenKeys::new(SECRET).verify(&old).is_err());
        let fresh = keys.issue(user, &[], Duration::from_secs(60));
        assert!(
            TokenKeys::new(OLD).verify(&fresh).is_err(),
            "signed with the current secret"
        );
        let third = issue_token(
            "a-third-secret-a-third-secret-xx",
            user,
            &[],
            Duration::from_secs(60),
        );
        assert!(keys.verify(&third).is_err());
    }

    #[test]
    fn issuer_and_audience_are_required_when_configured() {
        let strict = TokenKeys::new(SECRET)
            .with_issuer(Some("nova"))
            .with_audience(Some("nova-api"));
        let user = Uuid::now_v7();
        let ttl = Duration::from_secs(60);
        assert!(strict.verify(&strict.issue(user, &[], ttl)).is_ok());
        let bare = issue_token(SECRET, user, &[], ttl);
        assert!(strict.verify(&bare).is_err(), "no iss, no aud");
        let other_iss = TokenKeys::new(SECRET)
            .with_issuer(Some("evil"))
            .with_audience(Some("nova-api"));
        assert!(strict.verify(&other_iss.issue(user, &[], ttl)).is_err());
        let other_aud = TokenKeys::new(SECRET)
            .with_issuer(Some("nova"))
            .with_audience(Some("elsewhere"));
        assert!(strict.verify(&other_aud.issue(user, &[], ttl)).is_err());
        // Unconfigured, iss and aud are not judged.
        assert!(TokenKeys::new(SECRET)
            .verify(&other_aud.issue(user, &[], ttl))
            .is_ok());
    }
}
