//! Why a token was refused: [`TokenError`], and what it may echo of a
//! token nobody has vouched for yet ([`echo`]).

use std::fmt;

use jsonwebtoken::Algorithm;

use super::policy::MAX_TOKEN_BYTES;
use crate::acl::ClaimError;
use crate::keys::DenyEntry;

/// How much of an unauthenticated value (a `kid`, an `alg`) an error echoes.
const ECHO_CHARS: usize = 64;

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
    /// RFC 7800's `cnf` binds the token to a key by a method other than a
    /// client certificate's thumbprint (`x5t#S256`): possession cannot be
    /// checked here, so the token is not accepted as a bearer token.
    #[error(
        "certificate binding: the token's \"cnf\" claim binds it by a method other than \"x5t#S256\", which this gateway cannot check"
    )]
    UnsupportedConfirmation,
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

/// An unauthenticated value, cut short for an error message.
pub(super) fn echo(untrusted: &str) -> String {
    match untrusted.char_indices().nth(ECHO_CHARS) {
        Some((end, _)) => format!("{}...", &untrusted[..end]),
        None => untrusted.to_owned(),
    }
}
