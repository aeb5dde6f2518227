//! Certificate-bound tokens (RFC 8705 §3): a token whose `cnf` claim holds
//! `x5t#S256`, the thumbprint of a client certificate, is good only over
//! a TLS connection on which that certificate was presented (its key
//! proven by the handshake). A bearer token copied off a device, out of a
//! log or a config backup then admits no one without the device's key.

use serde_json::{Map, Value};

use super::TokenError;

/// Why a token may not be used on a connection, as far as its binding
/// goes. Each says "certificate binding", the reason operators search for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error(
        "certificate binding: the token is bound to a client certificate and the connection presented none"
    )]
    NoCertificate,
    #[error(
        "certificate binding: the token is bound to another client certificate than the connection's"
    )]
    OtherCertificate,
    #[error(
        "certificate binding: the token is not bound to a client certificate and [auth] require_certificate_binding is on"
    )]
    Unbound,
}

/// Whether a token bound to `bound_to` (its `cnf.x5t#S256`, if any) may be
/// used on a connection that presented the certificate of thumbprint
/// `presented` (if any); `required`: `[auth] require_certificate_binding`.
pub fn check(
    bound_to: Option<&str>,
    presented: Option<&str>,
    required: bool,
) -> Result<(), BindingError> {
    match (bound_to, presented) {
        (Some(bound), Some(presented)) if bound == presented => Ok(()),
        (Some(_), Some(_)) => Err(BindingError::OtherCertificate),
        (Some(_), None) => Err(BindingError::NoCertificate),
        (None, _) if required => Err(BindingError::Unbound),
        (None, _) => Ok(()),
    }
}

/// The thumbprint a token's `cnf` claim binds it to: `None` without `cnf`;
/// an error for a `cnf` that is no object, whose `x5t#S256` is no string,
/// or that binds by another method only (`jkt`, `jwk`: possession of those
/// keys is nothing a TLS handshake proves).
pub(super) fn confirmation(claims: &Map<String, Value>) -> Result<Option<String>, TokenError> {
    let cnf = match claims.get("cnf") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(cnf)) => cnf,
        Some(_) => return Err(TokenError::BadClaim { claim: "cnf" }),
    };
    match cnf.get("x5t#S256") {
        Some(Value::String(thumbprint)) => Ok(Some(thumbprint.clone())),
        Some(_) => Err(TokenError::BadClaim { claim: "cnf" }),
        None => Err(TokenError::UnsupportedConfirmation),
    }
}
