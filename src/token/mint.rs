//! Minting development tokens, such as those `jwtgate mint` prints: HS256
//! with a key that holds an HMAC secret, and the `--ttl` it takes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Header};
use serde_json::Map;

use super::policy::MAX_TOKEN_BYTES;
use crate::keys::Key;

/// Registered claim names `mint` writes or `verify` reads; topics under one
/// of these names would clash with it.
const REGISTERED_CLAIMS: [&str; 8] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "cnf"];

/// What [`mint`] puts in a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MintClaims {
    /// Never empty.
    pub subject: String,
    /// Topic filters, written as given (verify will judge them).
    pub topics: Vec<String>,
    /// Whole seconds; at least one.
    pub ttl: Duration,
    /// The claim the topics go in, as the gateway's policy names it.
    pub topics_claim: String,
    pub issuer: Option<String>,
    /// Written as one string when there is one, as an array when several,
    /// not at all when empty.
    pub audience: Vec<String>,
}

/// Why no token was minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("key {kid:?} is not an HMAC key; only HMAC keys can mint")]
    NotHmac { kid: String },
    #[error("key {kid:?} does not allow HS256")]
    Hs256NotAllowed { kid: String },
    #[error("the subject must not be empty: the gateway refuses tokens without one")]
    EmptySubject,
    #[error("the topics cannot go in claim {0:?}, which is a registered claim")]
    ReservedClaimName(String),
    #[error("the time to live must be at least one second")]
    ZeroTtl,
    #[error("the time to live is too long")]
    TtlTooLong,
    #[error("the system clock is set before 1970")]
    ClockBeforeEpoch,
    #[error("no random bytes for the token id")]
    Random,
    #[error("the token would be {len} bytes long; the gateway accepts at most {MAX_TOKEN_BYTES}")]
    TooLarge { len: usize },
    #[error("cannot sign: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Mints an HS256 token with `key`: header `kid` = the key id; claims
/// `sub`, `iat`, `exp`, a random `jti`, the topics, and `iss`/`aud` when
/// given.
pub fn mint(key: &Key, claims: &MintClaims) -> Result<String, MintError> {
    mint_bound(key, claims, None)
}

/// As [`mint`], with `certificate` (a client certificate's thumbprint,
/// base64url SHA-256) as `cnf.x5t#S256`: a token good only with that
/// certificate (RFC 8705).
pub fn mint_bound(
    key: &Key,
    claims: &MintClaims,
    certificate: Option<&str>,
) -> Result<String, MintError> {
    let signing_key = key.signing_key().ok_or_else(|| MintError::NotHmac {
        kid: key.id().to_owned(),
    })?;
    if !key.allows(Algorithm::HS256) {
        return Err(MintError::Hs256NotAllowed {
            kid: key.id().to_owned(),
        });
    }
    if claims.subject.is_empty() {
        return Err(MintError::EmptySubject);
    }
    if REGISTERED_CLAIMS.contains(&claims.topics_claim.as_str()) {
        return Err(MintError::ReservedClaimName(claims.topics_claim.clone()));
    }
    let ttl = claims.ttl.as_secs();
    if ttl == 0 {
        return Err(MintError::ZeroTtl);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| MintError::ClockBeforeEpoch)?
        .as_secs();
    let exp = now.checked_add(ttl).ok_or(MintError::TtlTooLong)?;
    let mut jti = [0u8; 16];
    aws_lc_rs::rand::fill(&mut jti).map_err(|_| MintError::Random)?;

    let mut payload = Map::new();
    payload.insert("sub".into(), claims.subject.clone().into());
    payload.insert("iat".into(), now.into());
    payload.insert("exp".into(), exp.into());
    payload.insert("jti".into(), URL_SAFE_NO_PAD.encode(jti).into());
    if let Some(issuer) = &claims.issuer {
        payload.insert("iss".into(), issuer.clone().into());
    }
    match claims.audience.as_slice() {
        [] => {}
        [one] => {
            payload.insert("aud".into(), one.clone().into());
        }
        several => {
            payload.insert("aud".into(), several.to_vec().into());
        }
    }
    payload.insert(claims.topics_claim.clone(), claims.topics.clone().into());
    if let Some(thumbprint) = certificate {
        let mut cnf = Map::new();
        cnf.insert("x5t#S256".into(), thumbprint.into());
        payload.insert("cnf".into(), cnf.into());
    }

    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.id().to_owned());
    let token = jsonwebtoken::encode(&header, &payload, signing_key)?;
    if token.len() > MAX_TOKEN_BYTES {
        return Err(MintError::TooLarge { len: token.len() });
    }
    Ok(token)
}

/// Why a time to live did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TtlError {
    #[error(
        "{0:?} is not a time to live; expected a whole number with an optional unit s, m, h or d (90, 90s, 30m, 1h, 7d)"
    )]
    Invalid(String),
    #[error("unknown unit {0:?}; expected s, m, h or d")]
    UnknownUnit(String),
    #[error("the time to live must be more than zero")]
    Zero,
    #[error("the time to live is too long")]
    TooLong,
}

/// Parses a time to live as `jwtgate mint --ttl` takes it: a whole number
/// of seconds, or with a unit: `90`, `90s`, `30m`, `1h`, `7d`.
pub fn parse_ttl(text: &str) -> Result<Duration, TtlError> {
    let trimmed = text.trim();
    let unit_at = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(unit_at);
    if digits.is_empty() {
        return Err(TtlError::Invalid(text.to_owned()));
    }
    let unit_seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        _ => return Err(TtlError::UnknownUnit(unit.to_owned())),
    };
    // Only digits are left, so the parse can only fail by overflowing.
    let count: u64 = digits.parse().map_err(|_| TtlError::TooLong)?;
    if count == 0 {
        return Err(TtlError::Zero);
    }
    count
        .checked_mul(unit_seconds)
        .map(Duration::from_secs)
        .ok_or(TtlError::TooLong)
}
