//! The one path a token takes to become what a connection may do: at
//! CONNECT (as the password, or as MQTT 5 authentication data with method
//! `JWT`) and again at MQTT 5 re-authentication (AUTH 0x19).
//!
//! Both go through [`authenticate`]: the token is verified against the key
//! set and policy in force, the connection's client id is checked against
//! it ([`crate::config::ClientIdBinding`]: a `clientid` claim naming another
//! client is refused, and `${clientid}` resolves only for a client id the
//! token vouches for), its grants are bound to that client id, the subject
//! and the user name ([`crate::acl::GrantTemplate::bind`]), and it must
//! allow something. A token bound to a client certificate (RFC 8705) must
//! come over a connection that presented it. A failure says whether the credentials are bad, the
//! client id is not the token's, or the identity is not authorized, which
//! is all the client is told.

// Untrusted input (a token from a client): fail with an error, never a
// panic. See "Robustness" in the crate docs.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tracing::warn;

use super::quiet::{Kind, Quiet};
use super::shared::Shared;
use crate::acl::{Bindings, Grants};
use crate::metrics::ConnectOutcome;
use crate::tls::Thumbprint;
use crate::token::{self, TokenError, VerifiedToken, binding};

/// A token accepted for a connection.
pub(super) struct Authenticated {
    pub token: VerifiedToken,
    pub grants: Grants,
    /// The token as sent, kept to re-check it when keys or the deny list
    /// change.
    pub credential: String,
}

impl Authenticated {
    /// When the connection must end: the token's `exp` plus the leeway,
    /// if the clock can hold it.
    pub fn deadline(&self, leeway: Duration) -> Option<Instant> {
        let exp = self.token.expires_at?;
        deadline_from_unix(exp.saturating_add(leeway.as_secs()))
    }
}

/// Why a token was not accepted, and what is known of whose it was (for
/// the log line of the decision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Failure {
    pub kind: FailureKind,
    /// What the metrics count it as: finer than `kind`.
    pub outcome: ConnectOutcome,
    pub reason: String,
    /// The key the token named or was verified with, once known.
    pub kid: Option<String>,
    /// The token's `sub`, once its signature held.
    pub subject: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FailureKind {
    /// Not a token the gateway can trust (MQTT 5 code 0x86).
    BadCredentials,
    /// An authentic token whose identity may not connect (0x87): revoked,
    /// without a subject, or granting nothing.
    NotAuthorized,
    /// An authentic token issued for another client id (its `clientid`
    /// claim): CONNACK 0x85, "client identifier not valid".
    ClientIdMismatch,
}

/// Verifies `token` for the connection of `client_id`, whose CONNECT gave
/// `username`. What the token's grants leave out is logged, through the
/// connection's `quiet` when it has one (a client re-authenticating in a
/// loop must not write the same warnings each time).
pub(super) fn authenticate(
    shared: &Shared,
    client_id: &str,
    username: Option<&str>,
    certificate: Option<Thumbprint>,
    token: String,
    mut quiet: Option<&mut Quiet>,
) -> Result<Authenticated, Failure> {
    let keys = shared.keys.snapshot();
    let verified = token::verify_signed(&token, &keys, &shared.policy).map_err(|refused| {
        let e = refused.error;
        let signed = refused.signed;
        Failure {
            kind: match e {
                // The token is authentic; the identity may not connect. A
                // revoked one matches the DISCONNECT a live connection gets; a
                // token without a subject names no one a session could belong
                // to.
                TokenError::Grants(_)
                | TokenError::Revoked { .. }
                | TokenError::MissingSubject
                | TokenError::UnsupportedConfirmation => FailureKind::NotAuthorized,
                _ => FailureKind::BadCredentials,
            },
            outcome: ConnectOutcome::from(&e),
            reason: e.to_string(),
            // What the signature vouched for, when it held.
            kid: signed
                .as_ref()
                .map(|s| s.key_id.clone())
                .or_else(|| e.key_id().map(str::to_owned)),
            subject: signed.and_then(|s| s.subject),
        }
    })?;
    let not_authorized = |reason: String| Failure {
        kind: FailureKind::NotAuthorized,
        outcome: ConnectOutcome::NotAuthorized,
        reason,
        kid: Some(verified.key_id.clone()),
        subject: verified.subject.clone(),
    };
    let bound_client_id = shared
        .policy
        .client_id_binding()
        .bind(
            client_id,
            verified.client_id.as_deref(),
            verified.subject.as_deref(),
        )
        .map_err(|e| Failure {
            kind: FailureKind::ClientIdMismatch,
            outcome: ConnectOutcome::ClientIdMismatch,
            reason: e.to_string(),
            kid: Some(verified.key_id.clone()),
            subject: verified.subject.clone(),
        })?;
    // RFC 8705: a bound token only with its certificate.
    binding::check(
        verified.certificate.as_deref(),
        certificate.map(|t| t.to_string()).as_deref(),
        shared.policy.requires_certificate_binding(),
    )
    .map_err(|e| Failure {
        kind: FailureKind::NotAuthorized,
        outcome: ConnectOutcome::CertificateBinding,
        reason: e.to_string(),
        kid: Some(verified.key_id.clone()),
        subject: verified.subject.clone(),
    })?;
    let mut warn_about = |line: &dyn Fn(&str)| match quiet.as_deref_mut() {
        Some(quiet) => quiet.log(Kind::GrantIgnored, client_id, line),
        None => line(client_id),
    };
    for (entry, why) in verified.grants.ignored() {
        warn_about(&|client_id| {
            warn!(
                client_id,
                entry,
                reason = %why,
                "ignoring an entry of the token's grants"
            );
        });
    }
    let bound = verified
        .grants
        .bind(&Bindings {
            client_id: bound_client_id,
            subject: verified.subject.as_deref(),
            username,
        })
        .map_err(|e| not_authorized(e.to_string()))?;
    for dropped in &bound.dropped {
        warn_about(&|client_id| {
            warn!(
                client_id,
                filter = dropped.topic,
                reason = %dropped.reason,
                "ignoring a grant of the token"
            );
        });
    }
    if !bound.grants.may_connect() {
        return Err(not_authorized("the token grants no topics".to_owned()));
    }
    Ok(Authenticated {
        token: verified,
        grants: bound.grants,
        credential: token,
    })
}

/// Converts a unix time into a tokio deadline; `None` when it is too far
/// ahead for the clock to represent (a token with `exp` = 2^63 never
/// expires in practice).
fn deadline_from_unix(unix_secs: u64) -> Option<Instant> {
    let now_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let target = Duration::from_secs(unix_secs);
    Instant::now().checked_add(target.saturating_sub(now_unix))
}
