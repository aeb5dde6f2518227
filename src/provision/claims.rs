//! What a token's claims say, read without trusting them: the warnings
//! given before it is stored, and whether the token held is due for
//! renewal.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::keys::KeyStore;
use crate::token::{self, Policy};

use super::error::{Error, clip};
use super::secret::read_secret_file;
use super::token_out::TokenOut;
use super::types::{Fresh, RenewWhen, Summary, Warning};

/// Decodes the token's claims (verifying it first when `out.verify` asks
/// for it) and says what the gateway will think of them.
pub(super) fn inspect(token: &str, out: &TokenOut) -> Result<(Summary, Vec<Warning>), Error> {
    if let Some(verify) = &out.verify {
        let dir = &verify.auth.keys_dir;
        let (store, _report) = KeyStore::open(dir)?;
        let mut auth = verify.auth.clone();
        auth.topics_claim.clone_from(&out.topics_claim);
        auth.acl_claim.clone_from(&out.acl_claim);
        token::verify(token, &store.snapshot(), &Policy::from_config(&auth)).map_err(|source| {
            Error::Verify {
                kind: out.kind,
                dir: dir.clone(),
                config: verify.config.clone(),
                source,
            }
        })?;
    }
    let Some(claims) = unverified_claims(token) else {
        return Ok((
            Summary::default(),
            vec![Warning::NotAJwt { kind: out.kind }],
        ));
    };
    let mut warnings = Vec::new();
    let expires_at = claims.get("exp").and_then(Value::as_u64);
    if expires_at.is_none() {
        warnings.push(Warning::NoExp);
    }
    if claims
        .get("sub")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        warnings.push(Warning::NoSubject);
    }
    let claim = out.topics_claim.clone();
    let topics = match claims.get(&out.topics_claim) {
        // EMQX's acl claim grants instead.
        None if claims.contains_key(&out.acl_claim) => None,
        None => {
            warnings.push(Warning::NoTopics { claim });
            None
        }
        Some(value) => {
            let topics = topic_filters(value);
            match &topics {
                None => warnings.push(Warning::BadTopics { claim }),
                Some(filters) if filters.is_empty() => {
                    warnings.push(Warning::EmptyTopics { claim });
                }
                Some(_) => {}
            }
            topics
        }
    };
    let subject = claims.get("sub").and_then(Value::as_str).map(clip);
    let summary = Summary {
        subject,
        expires_at,
        topics,
    };
    Ok((summary, warnings))
}

/// The topics claim as the gateway reads it: one filter, or a list.
fn topic_filters(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::String(one) => Some(vec![one.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    }
}

/// The claims of a compact JWT, without any check of its signature.
fn unverified_claims(token: &str) -> Option<Map<String, Value>> {
    let mut parts = token.split('.');
    let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&json).ok()
}

/// The token in `path` when `when` finds it not due yet, so that a
/// renewal sends and writes nothing; `None` when it must be renewed.
pub(super) fn not_due(path: &Path, when: RenewWhen) -> Option<Fresh> {
    match when {
        RenewWhen::Always => None,
        RenewWhen::Due { min_remaining } => fresh(path, min_remaining, SystemTime::now()),
    }
}

/// The token in `path` when it is fresh enough to keep at `now`; `None`
/// when it is due, or when its expiry cannot be told (no file, not a JWT,
/// no `exp`), which calls for a refresh too.
pub(super) fn fresh(
    path: &Path,
    min_remaining: Option<Duration>,
    now: SystemTime,
) -> Option<Fresh> {
    let token = read_secret_file(path).ok()?;
    let claims = unverified_claims(token.expose())?;
    let exp = claims.get("exp")?.as_u64()?;
    // Without `iat`, the file was written when the token was issued, give
    // or take the round trip: its modification time stands in.
    let issued = claims.get("iat").and_then(Value::as_u64).or_else(|| {
        let written = std::fs::metadata(path).ok()?.modified().ok()?;
        Some(written.duration_since(UNIX_EPOCH).ok()?.as_secs())
    });
    decide(exp, issued, min_remaining, now)
}

/// [`fresh`]'s rule, on the token's `exp` and issue time (Unix seconds).
fn decide(
    exp: u64,
    issued: Option<u64>,
    min_remaining: Option<Duration>,
    now: SystemTime,
) -> Option<Fresh> {
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    let expires_in = exp.checked_sub(now).filter(|left| *left > 0)?;
    let lifetime = issued
        .and_then(|issued| exp.checked_sub(issued))
        .filter(|lifetime| *lifetime > 0);
    let third = lifetime.map(|lifetime| lifetime / 3);
    let floor = min_remaining.map(|floor| floor.as_secs());
    // Neither a lifetime nor a floor: nothing to decide by, so renew.
    let renew_within = third.max(floor)?;
    if expires_in < renew_within {
        return None;
    }
    Some(Fresh {
        expires_in: Duration::from_secs(expires_in),
        lifetime: lifetime.map(Duration::from_secs),
        renew_within: Duration::from_secs(renew_within),
        by_min_remaining: floor.is_some_and(|floor| third.is_none_or(|third| floor >= third)),
    })
}

#[cfg(test)]
mod tests;
