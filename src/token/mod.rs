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
//! [`mint()`] creates HS256 development tokens, such as those `jwtgate mint`
//! prints, with any key that holds an HMAC secret.
//!
//! A token bound to a client certificate (`cnf.x5t#S256`, RFC 8705)
//! carries its thumbprint in [`VerifiedToken::certificate`]; whether the
//! connection presented that certificate is [`binding::check`]'s to say,
//! for the connection that knows it.
//!
//! One file per job: `compact.rs` splits the token, decodes its header and
//! finds the key whose signature it carries, `claims.rs` judges the claims,
//! `policy.rs` holds the [`Policy`] they are judged by, `error.rs` the
//! reasons for a refusal, and `mint.rs` makes development tokens. This file
//! holds the order of the steps; the public items of the others are
//! re-exported here, so callers name them `token::...`.

// Untrusted input (a token is a stranger's bytes): fail with an error, never
// a panic, here and in every file below. Tests are exempt through
// clippy.toml; an exception in this code carries an `#[allow]` saying why it
// cannot fail. See "Robustness" in the crate docs.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod binding;
mod claims;
mod compact;
mod error;
mod mint;
mod policy;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;

use crate::acl::GrantTemplate;
use crate::config::ClientIdBinding;
use crate::keys::KeySet;

pub use error::{Malformed, TokenError};
pub use mint::{MintClaims, MintError, TtlError, mint, mint_bound, parse_ttl};
pub use policy::{MAX_TOKEN_BYTES, Policy, PolicyWarning};

use claims::{check_claims, string_claim};
use compact::{Parts, verifying_key};
use error::echo;

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
    /// `cnf.x5t#S256` (RFC 8705): the thumbprint of the client certificate
    /// the token may only be used with ([`binding::check`]).
    pub certificate: Option<String>,
    /// What the `topics` and `acl` claims grant, to be bound to a
    /// connection ([`GrantTemplate::bind`]). It may grant nothing; whether
    /// that is worth a connection is the caller's call.
    pub grants: GrantTemplate,
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
    let client_id = match policy.client_id_binding() {
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
    let certificate = binding::confirmation(&claims).map_err(signed)?;
    let checked = check_claims(&claims, policy, now).map_err(signed)?;
    Ok(VerifiedToken {
        subject: subject.map(str::to_owned),
        client_id: client_id.map(str::to_owned),
        key_id: key.id().to_owned(),
        key_file: key.source().to_path_buf(),
        expires_at: checked.exp,
        jti: jti.map(str::to_owned),
        certificate,
        grants: checked.grants,
    })
}

#[cfg(test)]
mod tests;
