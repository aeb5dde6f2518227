//! Reading the claims of a token whose signature held: dates against the
//! clock and leeway, lifetime, issuer, audience, and the grant claims
//! (steps 7 and 8 of the model in `mod.rs`).

use serde_json::{Map, Value};

use super::error::{TokenError, echo};
use super::policy::Policy;
use crate::acl::{ClaimNames, GrantTemplate};

/// What the claims contribute to a [`VerifiedToken`](super::VerifiedToken),
/// besides the subject and `jti`.
pub(super) struct CheckedClaims {
    pub(super) exp: Option<u64>,
    pub(super) grants: GrantTemplate,
}

pub(super) fn check_claims(
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
pub(super) fn string_claim<'c>(
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
