//! Device tokens: verifying one on CONNECT, and minting development ones.
//!
//! ## The model
//!
//! [`verify`] turns the password of a CONNECT into a [`VerifiedToken`], or
//! into a [`TokenError`] that says exactly why not. It runs locally against
//! a [`KeySet`] snapshot and a [`Policy`] built once from the configuration,
//! and it runs for every CONNECT (thousands per second when a fleet comes
//! back after a power cut), so everything that can be prepared ahead is:
//! keys are parsed and checked when they are loaded, the policy when the
//! configuration is.
//!
//! The steps, in order, each refusing the token on failure:
//!
//! 1. Size: more than [`MAX_TOKEN_BYTES`] is refused before any parsing.
//! 2. Shape and header: three base64url parts; the header is JSON with a
//!    string `alg` and optionally `kid`. A header with `crit` is refused,
//!    since no extension is understood here.
//! 3. Algorithm: `alg` must be in the policy's allow-list.
//! 4. Key: a token naming a `kid` is checked with exactly that key, and only
//!    if that key allows `alg`. The algorithm is therefore always one the
//!    *key* was configured for, never one the token picks on its own: that
//!    is what defeats `alg: none` and an HS256 token "signed" with an RSA
//!    public key. A token without `kid` (refused if the policy requires one)
//!    is tried against every key allowing `alg`; the first that verifies
//!    wins.
//! 5. Signature, before the claims are even decoded.
//! 6. Deny list: a token whose `jti`, `sub` or verifying key id the key
//!    set's deny list names is refused. Only now, so that "revoked" is said
//!    only of genuine tokens and a forger learns nothing from it.
//! 7. Claims: a non-empty `sub` (unless the policy says otherwise: sessions
//!    are keyed by it, and devices without one would share them); `exp`
//!    (required unless the policy says otherwise), `nbf` and `iat` (not in
//!    the future), all with the policy's leeway; `iss` and `aud` when the
//!    policy names them (an `aud` is ignored when the policy names none,
//!    since identity providers routinely set one, see
//!    [`Policy::warnings`]); with a lifetime cap, both `iat` and `exp`,
//!    `iat` not after `exp`, and `exp - iat` within the cap. Dates are
//!    whole seconds and may be as large as `u64::MAX` (larger or
//!    fractional JSON numbers are clipped): all sums with them saturate.
//!    Under `[auth] client_id_binding = "claim_or_subject"`, a `clientid`
//!    claim must be a string; whether it matches the connection is the
//!    connection's to decide ([`ClientIdBinding`]).
//! 8. Topics: the claim the policy names (possibly a namespaced URL) holds
//!    an array of topic filters, or a single one as a string. Invalid
//!    filters are dropped and returned for the caller to log.
//!
//! Errors never contain the token. The few values they echo from it (`kid`,
//! `alg`, `iss`, the deny-list entry that matched) are clipped and printed
//! with `Debug` quoting, so a hostile token can neither flood nor forge log
//! lines. What the caller logs about the device comes from the
//! [`VerifiedToken`] (subject, key id) or from [`TokenError::key_id`], never
//! from parsing the token a second time.
//!
//! [`mint`] creates HS256 development tokens, such as those `jwtgate mint`
//! prints, with any key that holds an HMAC secret.

// Untrusted input (a token is a stranger's bytes): fail with an error, never
// a panic. Tests are exempt through clippy.toml; an exception in this code
// carries an `#[allow]` saying why it cannot fail. See "Robustness" in the
// crate docs.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, Header};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};

use crate::acl::{ClaimError, ClaimNames, ClientIdBinding, GrantTemplate};
use crate::config::AuthConfig;
use crate::keys::{DenyEntry, Key, KeySet};

/// Longest accepted token, in bytes. A CONNECT password beyond this is
/// refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// How much of an unauthenticated value (a `kid`, an `alg`) an error echoes.
const ECHO_CHARS: usize = 64;

/// Registered claim names `mint` writes or `verify` reads; topics under one
/// of these names would clash with it.
const REGISTERED_CLAIMS: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];

/// How tokens are judged; built once from the configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    topics_claim: String,
    acl_claim: String,
    leeway: u64,
    issuer: Option<String>,
    /// One of these must be in `aud`; `None` leaves `aud` unchecked.
    audience: Option<Vec<String>>,
    require_kid: bool,
    require_exp: bool,
    require_subject: bool,
    max_lifetime: Option<u64>,
    /// `None` accepts every algorithm some key allows.
    algorithms: Option<Vec<Algorithm>>,
    client_id_binding: ClientIdBinding,
}

impl Policy {
    /// Takes the configuration as it is: [`AuthConfig`] is validated when it
    /// is parsed. Sub-second parts of the durations are dropped (JWT times
    /// are whole seconds), which only makes the lifetime cap stricter.
    pub fn from_config(auth: &AuthConfig) -> Policy {
        Policy {
            topics_claim: auth.topics_claim.clone(),
            acl_claim: auth.acl_claim.clone(),
            leeway: auth.leeway.as_secs(),
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            require_kid: auth.require_kid,
            require_exp: auth.require_exp,
            require_subject: auth.require_subject,
            max_lifetime: auth.max_token_lifetime.map(|max| max.as_secs()),
            algorithms: auth.algorithms.clone(),
            client_id_binding: auth.client_id_binding,
        }
    }

    /// What ties a connection's client id to its token, for `${clientid}`.
    pub fn client_id_binding(&self) -> ClientIdBinding {
        self.client_id_binding
    }

    fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms
            .as_ref()
            .is_none_or(|algorithms| algorithms.contains(&alg))
    }

    /// What is unsafe about judging tokens by this policy with `keys`, for
    /// the operator to hear at start and from `jwtgate check`.
    pub fn warnings(&self, keys: &KeySet) -> Vec<PolicyWarning> {
        let mut warnings = Vec::new();
        if self.audience.is_none() {
            // Public keys are an identity provider's (a JWKS); what it signs
            // for one application verifies for all of them.
            let mut files: Vec<PathBuf> = keys
                .iter()
                .filter(|key| {
                    key.algorithms()
                        .iter()
                        .any(|&alg| alg.family() != AlgorithmFamily::Hmac && self.allows(alg))
                })
                .map(|key| key.source().to_path_buf())
                .collect();
            files.sort();
            files.dedup();
            if !files.is_empty() {
                warnings.push(PolicyWarning::NoAudience { files });
            }
        }
        if self.client_id_binding == ClientIdBinding::Unchecked {
            warnings.push(PolicyWarning::UnboundClientId);
        }
        warnings
    }
}

/// A weakness of a [`Policy`] given the keys in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyWarning {
    /// Public keys are in force and `[auth] audience` is unset (RFC 8725
    /// §3.9): a token the provider issued to any of its applications is
    /// accepted if it carries a topics claim.
    NoAudience {
        /// The files holding those keys, sorted.
        files: Vec<PathBuf>,
    },
    /// `[auth] client_id_binding = "none"`: `${clientid}` takes whatever
    /// client id a device gives.
    UnboundClientId,
}

impl fmt::Display for PolicyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyWarning::NoAudience { files } => {
                f.write_str(
                    "[auth] audience is unset while public keys (an identity provider's JWKS: ",
                )?;
                for (i, file) in files.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", file.display())?;
                }
                f.write_str(
                    ") are in force: any token that provider signs with a topics claim is \
                     accepted, whichever application it was issued to; set [auth] audience \
                     to the \"aud\" of this gateway's tokens (RFC 8725 §3.9)",
                )
            }
            PolicyWarning::UnboundClientId => f.write_str(
                "[auth] client_id_binding = \"none\": ${clientid} in grants takes any client id \
                 a device connects with, so a device can use another's ${clientid} topics by \
                 using its client id; give tokens a \"clientid\" claim (or sub equal to the \
                 client id) and remove the setting",
            ),
        }
    }
}

/// A token whose signature and claims have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub subject: Option<String>,
    /// The `clientid` claim: the one client id the issuer meant the token
    /// for ([`ClientIdBinding`]).
    pub client_id: Option<String>,
    /// The key that verified the signature.
    pub key_id: String,
    pub key_file: PathBuf,
    /// `exp`, in seconds since the Unix epoch.
    pub expires_at: Option<u64>,
    pub jti: Option<String>,
    /// What the `topics` and `acl` claims grant, to be bound to a
    /// connection ([`GrantTemplate::bind`]). It may grant nothing; whether
    /// that is worth a connection is the caller's call.
    pub grants: GrantTemplate,
}

/// Why a token was refused.
///
/// The variants up to [`TokenError::KeyUnusable`] are found before the
/// signature is trusted; the rest are about a token whose signature held:
/// whether it is revoked, and its claims.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is {len} bytes long; at most {MAX_TOKEN_BYTES} are accepted")]
    TooLarge { len: usize },
    #[error("malformed token: {0}")]
    Malformed(Malformed),
    #[error("unsupported signature algorithm {alg:?}")]
    UnsupportedAlgorithm { alg: String },
    #[error("the token header has \"crit\" parameters, and none are supported")]
    CriticalHeader,
    #[error("signature algorithm {alg:?} is not allowed by the policy")]
    AlgorithmNotAllowed { alg: Algorithm },
    #[error("the token names no key (\"kid\"), and the policy requires one")]
    KidRequired,
    #[error("no key has id {kid:?}")]
    UnknownKey { kid: String },
    #[error("key {kid:?} does not allow signature algorithm {alg:?}")]
    KeyRefusesAlgorithm { kid: String, alg: Algorithm },
    #[error("no key allows signature algorithm {alg:?}")]
    NoKeyForAlgorithm { alg: Algorithm },
    #[error("{}", BadSignatureText(kid.as_deref()))]
    BadSignature {
        /// The key the token named; `None` when it named none and no key
        /// allowing its algorithm verified it.
        kid: Option<String>,
    },
    #[error("key {kid:?} cannot verify signatures: {reason}")]
    KeyUnusable { kid: String, reason: String },
    #[error("revoked by the deny-list entry {:?}", echo(&by.to_string()))]
    Revoked {
        /// The entry that matched (the most specific, if several did).
        by: DenyEntry,
        /// The key that verified the signature.
        kid: String,
    },
    #[error("the claims are not a base64url-encoded JSON object")]
    ClaimsNotAnObject,
    #[error("claim {claim:?} has the wrong type")]
    BadClaim { claim: &'static str },
    #[error(
        "no subject: the \"sub\" claim is missing or empty, and [auth] require_subject \
         is on (sessions are keyed by subject)"
    )]
    MissingSubject,
    #[error("no \"exp\" claim")]
    MissingExp,
    #[error("expired at {exp} (Unix time)")]
    Expired { exp: u64 },
    #[error("not valid before {nbf} (Unix time)")]
    NotYetValid { nbf: u64 },
    #[error("issued in the future, at {iat} (Unix time)")]
    IssuedInFuture { iat: u64 },
    #[error("no \"iat\" claim, needed to check the lifetime against the maximum of {max} s")]
    MissingIat { max: u64 },
    #[error(
        "issued at {iat}, after it expires at {exp} (Unix time): no lifetime to check \
         against the maximum of {max} s"
    )]
    IssuedAfterExpiry { iat: u64, exp: u64, max: u64 },
    #[error("lifetime of {lifetime} s exceeds the maximum of {max} s")]
    LifetimeTooLong { lifetime: u64, max: u64 },
    #[error("no \"iss\" claim")]
    MissingIssuer,
    #[error("issuer {iss:?} is not the expected one")]
    WrongIssuer { iss: String },
    #[error("no \"aud\" claim")]
    MissingAudience,
    #[error("no accepted audience in \"aud\"")]
    WrongAudience,
    /// The grant claims are missing or cannot be read.
    #[error(transparent)]
    Grants(#[from] ClaimError),
}

impl TokenError {
    /// The key the token named or was checked with, when it got that far
    /// and the key is to blame or to credit (for logging).
    pub fn key_id(&self) -> Option<&str> {
        match self {
            TokenError::UnknownKey { kid }
            | TokenError::KeyRefusesAlgorithm { kid, .. }
            | TokenError::KeyUnusable { kid, .. }
            | TokenError::Revoked { kid, .. } => Some(kid),
            TokenError::BadSignature { kid } => kid.as_deref(),
            _ => None,
        }
    }
}

struct BadSignatureText<'a>(Option<&'a str>);

impl fmt::Display for BadSignatureText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(kid) => write!(f, "the signature does not verify with key {kid:?}"),
            None => f.write_str("the signature verifies with none of the keys for its algorithm"),
        }
    }
}

/// Which part of a token could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("not three base64url parts separated by dots")]
    Shape,
    #[error("the header is not base64url-encoded JSON with a string \"alg\"")]
    Header,
    #[error("the signature is not base64url")]
    Signature,
}

/// Verifies a compact JWT against `keys` under `policy`; see the module
/// documentation for the steps.
pub fn verify(token: &str, keys: &KeySet, policy: &Policy) -> Result<VerifiedToken, TokenError> {
    verify_at(token, keys, policy, unix_now()).map_err(|refused| refused.error)
}

/// Who a token names, as far as its signature vouches for it: what a
/// refusal after the signature held can still say (an expired, revoked or
/// policy-refused token was signed by a known key for a known subject, and
/// the log line says so).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub subject: Option<String>,
    pub key_id: String,
    pub key_file: PathBuf,
}

/// Why a token was refused, and whom it names if its signature held.
#[derive(Debug)]
pub struct Refused {
    pub error: TokenError,
    pub signed: Option<Box<Signed>>,
}

impl From<TokenError> for Refused {
    fn from(error: TokenError) -> Refused {
        Refused {
            error,
            signed: None,
        }
    }
}

/// As [`verify`], telling on refusal whom a token with a good signature
/// names.
pub fn verify_signed(
    token: &str,
    keys: &KeySet,
    policy: &Policy,
) -> Result<VerifiedToken, Refused> {
    verify_at(token, keys, policy, unix_now())
}

/// Seconds since the Unix epoch. A clock set before 1970 reads as 1970
/// rather than failing: such a clock says nothing either way, and `exp`,
/// `nbf` are judged against it all the same.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn verify_at(
    token: &str,
    keys: &KeySet,
    policy: &Policy,
    now: u64,
) -> Result<VerifiedToken, Refused> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(TokenError::TooLarge { len: token.len() }.into());
    }
    let parts = Parts::split(token)?;
    let header = parts.header()?;
    let alg = Algorithm::from_str(&header.alg).map_err(|_| TokenError::UnsupportedAlgorithm {
        alg: echo(&header.alg),
    })?;
    if header.crit.is_some() {
        return Err(TokenError::CriticalHeader.into());
    }
    if !policy.allows(alg) {
        return Err(TokenError::AlgorithmNotAllowed { alg }.into());
    }
    let key = verifying_key(&parts, header.kid.as_deref(), alg, keys, policy)?;

    let claims = parts.claims()?;
    let subject = string_claim(&claims, "sub")?;
    // From here on the signature has held: a refusal names the signer.
    let signed = |error: TokenError| Refused {
        error,
        signed: Some(Box::new(Signed {
            subject: subject.map(str::to_owned),
            key_id: key.id().to_owned(),
            key_file: key.source().to_path_buf(),
        })),
    };
    let jti = string_claim(&claims, "jti").map_err(signed)?;
    // Under "none" the claim was never looked at; a token carrying one of
    // an odd type must not start failing.
    let client_id = match policy.client_id_binding {
        ClientIdBinding::ClaimOrSubject => string_claim(&claims, "clientid").map_err(signed)?,
        ClientIdBinding::Unchecked => None,
    };
    if let Some(by) = keys.deny_list().matching(jti, subject, key.id()) {
        return Err(signed(TokenError::Revoked {
            by,
            kid: key.id().to_owned(),
        }));
    }
    if policy.require_subject && subject.is_none_or(str::is_empty) {
        return Err(signed(TokenError::MissingSubject));
    }
    let checked = check_claims(&claims, policy, now).map_err(signed)?;
    Ok(VerifiedToken {
        subject: subject.map(str::to_owned),
        client_id: client_id.map(str::to_owned),
        key_id: key.id().to_owned(),
        key_file: key.source().to_path_buf(),
        expires_at: checked.exp,
        jti: jti.map(str::to_owned),
        grants: checked.grants,
    })
}

/// The three base64url segments of a compact JWS.
struct Parts<'t> {
    /// `header.claims`, the signed bytes.
    message: &'t str,
    header: &'t str,
    claims: &'t str,
    signature: &'t str,
}

/// The header members looked at; the rest (`typ`, and `jwk`, `jku`, `x5c`
/// which would name keys the token brought along) is ignored on purpose.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

impl<'t> Parts<'t> {
    fn split(token: &'t str) -> Result<Parts<'t>, TokenError> {
        let shape = TokenError::Malformed(Malformed::Shape);
        let (message, signature) = token.rsplit_once('.').ok_or(shape.clone())?;
        let (header, claims) = message.split_once('.').ok_or(shape.clone())?;
        if claims.contains('.') {
            return Err(shape);
        }
        Ok(Parts {
            message,
            header,
            claims,
            signature,
        })
    }

    fn header(&self) -> Result<RawHeader, TokenError> {
        let malformed = TokenError::Malformed(Malformed::Header);
        let json = URL_SAFE_NO_PAD
            .decode(self.header)
            .map_err(|_| malformed.clone())?;
        serde_json::from_slice(&json).map_err(|_| malformed)
    }

    fn claims(&self) -> Result<Map<String, Value>, TokenError> {
        let json = URL_SAFE_NO_PAD
            .decode(self.claims)
            .map_err(|_| TokenError::ClaimsNotAnObject)?;
        serde_json::from_slice(&json).map_err(|_| TokenError::ClaimsNotAnObject)
    }

    fn is_signed_by(&self, key: &Key, alg: Algorithm) -> Result<bool, TokenError> {
        jsonwebtoken::crypto::verify(
            self.signature,
            self.message.as_bytes(),
            key.decoding_key(),
            alg,
        )
        .map_err(|error| match error.kind() {
            ErrorKind::Base64(_) => TokenError::Malformed(Malformed::Signature),
            _ => TokenError::KeyUnusable {
                kid: key.id().to_owned(),
                reason: error.to_string(),
            },
        })
    }
}

/// Picks the key by `kid` (or tries the candidates) and checks the
/// signature with it.
fn verifying_key<'k>(
    parts: &Parts<'_>,
    kid: Option<&str>,
    alg: Algorithm,
    keys: &'k KeySet,
    policy: &Policy,
) -> Result<&'k Key, TokenError> {
    match kid {
        Some(kid) => {
            let key = keys
                .get(kid)
                .ok_or_else(|| TokenError::UnknownKey { kid: echo(kid) })?;
            if !key.allows(alg) {
                return Err(TokenError::KeyRefusesAlgorithm {
                    kid: key.id().to_owned(),
                    alg,
                });
            }
            if parts.is_signed_by(key, alg)? {
                Ok(key)
            } else {
                Err(TokenError::BadSignature {
                    kid: Some(key.id().to_owned()),
                })
            }
        }
        None if policy.require_kid => Err(TokenError::KidRequired),
        None => {
            let mut tried_any = false;
            for key in keys.candidates(alg) {
                tried_any = true;
                if parts.is_signed_by(key, alg)? {
                    return Ok(key);
                }
            }
            Err(if tried_any {
                TokenError::BadSignature { kid: None }
            } else {
                TokenError::NoKeyForAlgorithm { alg }
            })
        }
    }
}

/// What the claims contribute to a [`VerifiedToken`], besides the subject
/// and `jti`.
struct CheckedClaims {
    exp: Option<u64>,
    grants: GrantTemplate,
}

fn check_claims(
    claims: &Map<String, Value>,
    policy: &Policy,
    now: u64,
) -> Result<CheckedClaims, TokenError> {
    let exp = numeric_date(claims, "exp")?;
    match exp {
        None if policy.require_exp => return Err(TokenError::MissingExp),
        Some(exp) if now >= exp.saturating_add(policy.leeway) => {
            return Err(TokenError::Expired { exp });
        }
        _ => {}
    }
    let now_plus_leeway = now.saturating_add(policy.leeway);
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && now_plus_leeway < nbf
    {
        return Err(TokenError::NotYetValid { nbf });
    }
    let iat = numeric_date(claims, "iat")?;
    if let Some(iat) = iat
        && now_plus_leeway < iat
    {
        return Err(TokenError::IssuedInFuture { iat });
    }
    if let Some(max) = policy.max_lifetime {
        // Without both ends, or with them the wrong way round, a lifetime
        // cannot be bounded.
        let exp = exp.ok_or(TokenError::MissingExp)?;
        let iat = iat.ok_or(TokenError::MissingIat { max })?;
        match exp.checked_sub(iat) {
            None => return Err(TokenError::IssuedAfterExpiry { iat, exp, max }),
            Some(lifetime) if lifetime > max => {
                return Err(TokenError::LifetimeTooLong { lifetime, max });
            }
            Some(_) => {}
        }
    }
    if let Some(expected) = &policy.issuer {
        match string_claim(claims, "iss")? {
            None => return Err(TokenError::MissingIssuer),
            Some(iss) if iss != expected => return Err(TokenError::WrongIssuer { iss: echo(iss) }),
            Some(_) => {}
        }
    }
    if let Some(accepted) = &policy.audience {
        check_audience(claims.get("aud"), accepted)?;
    }
    let grants = GrantTemplate::from_claims(
        claims.get(&policy.topics_claim),
        claims.get(&policy.acl_claim),
        ClaimNames {
            topics: &policy.topics_claim,
            acl: &policy.acl_claim,
        },
    )?;
    Ok(CheckedClaims { exp, grants })
}

/// `aud` may be one string or an array of them (RFC 7519 §4.1.3); one
/// accepted value is enough.
fn check_audience(aud: Option<&Value>, accepted: &[String]) -> Result<(), TokenError> {
    let is_accepted = |value: &str| accepted.iter().any(|one| one == value);
    let found = match aud {
        None | Some(Value::Null) => return Err(TokenError::MissingAudience),
        Some(Value::String(aud)) => is_accepted(aud),
        Some(Value::Array(auds)) => {
            let auds: Vec<&str> = auds
                .iter()
                .map(Value::as_str)
                .collect::<Option<_>>()
                .ok_or(TokenError::BadClaim { claim: "aud" })?;
            auds.into_iter().any(is_accepted)
        }
        Some(_) => return Err(TokenError::BadClaim { claim: "aud" }),
    };
    if found {
        Ok(())
    } else {
        Err(TokenError::WrongAudience)
    }
}

/// An optional string claim; `null` counts as absent.
fn string_claim<'c>(
    claims: &'c Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'c str>, TokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => Ok(Some(value)),
        Some(_) => Err(TokenError::BadClaim { claim: name }),
    }
}

/// An optional NumericDate claim (RFC 7519 §2): seconds since the epoch,
/// possibly fractional (the fraction is dropped); `null` counts as absent.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, TokenError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(number)) => match (number.as_u64(), number.as_f64()) {
            (Some(seconds), _) => Ok(Some(seconds)),
            // `as` saturates, so an absurdly large date stays absurdly large.
            (None, Some(seconds)) if seconds.is_finite() && seconds >= 0.0 => {
                Ok(Some(seconds as u64))
            }
            _ => Err(TokenError::BadClaim { claim: name }),
        },
        Some(_) => Err(TokenError::BadClaim { claim: name }),
    }
}

/// An unauthenticated value, cut short for an error message.
fn echo(untrusted: &str) -> String {
    match untrusted.char_indices().nth(ECHO_CHARS) {
        Some((end, _)) => format!("{}...", &untrusted[..end]),
        None => untrusted.to_owned(),
    }
}

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

#[cfg(test)]
mod tests;
