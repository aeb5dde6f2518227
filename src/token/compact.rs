//! The compact serialization of a JWS: its three base64url parts, the
//! header members looked at, and the key whose signature they carry (steps
//! 2, 4 and 5 of the model in `mod.rs`). The header has no file of its
//! own: it is one of the three parts, decoded as the claims are, and only
//! its `alg`, `kid` and `crit` are read.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use jsonwebtoken::errors::ErrorKind;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};

use super::error::{Malformed, TokenError, echo};
use super::policy::Policy;
use crate::keys::{Key, KeySet};

/// The three base64url segments of a compact JWS.
pub(super) struct Parts<'t> {
    /// `header.claims`, the signed bytes.
    message: &'t str,
    header: &'t str,
    claims: &'t str,
    signature: &'t str,
}

/// The header members looked at; the rest (`typ`, and `jwk`, `jku`, `x5c`
/// which would name keys the token brought along) is ignored on purpose.
#[derive(Deserialize)]
pub(super) struct RawHeader {
    pub(super) alg: String,
    #[serde(default)]
    pub(super) kid: Option<String>,
    #[serde(default)]
    pub(super) crit: Option<IgnoredAny>,
}

impl<'t> Parts<'t> {
    pub(super) fn split(token: &'t str) -> Result<Parts<'t>, TokenError> {
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

    pub(super) fn header(&self) -> Result<RawHeader, TokenError> {
        let malformed = TokenError::Malformed(Malformed::Header);
        let json = URL_SAFE_NO_PAD
            .decode(self.header)
            .map_err(|_| malformed.clone())?;
        serde_json::from_slice(&json).map_err(|_| malformed)
    }

    pub(super) fn claims(&self) -> Result<Map<String, Value>, TokenError> {
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
pub(super) fn verifying_key<'k>(
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
