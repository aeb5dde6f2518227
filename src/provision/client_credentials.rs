//! The client credentials grant for a device that proves who it is with
//! its own key: a signed client assertion (`private_key_jwt`, RFC 7523
//! §2.2) or its TLS client certificate (RFC 8705 §2), so that no password
//! and no shared client secret sit on the device.
//!
//! The grant returns no refresh token (RFC 6749 §4.4.3); renewing is
//! running it again, which [`renew_client_credentials`] does when the token
//! held is due, with the same rules as the refresh token grant.

use super::claims::not_due;
use super::device_key::{ASSERTION_TYPE, DeviceKey};
use super::error::Error;
use super::files::check_out_dir;
use super::http::Provider;
use super::login::{Grant, exchange_form};
use super::token_out::TokenOut;
use super::types::{Refreshed, RenewWhen, Stored};

const CLIENT_CREDENTIALS_GRANT: &str = "client_credentials";

/// What [`fetch_client_credentials`] asks for. The client authenticates
/// with `key` (an assertion), with the provider's client certificate (see
/// [`Provider::with_client_cert`]), or both.
#[derive(Debug)]
pub struct ClientCredentials {
    pub client_id: String,
    pub key: Option<DeviceKey>,
    /// The assertion's `aud`; `None` for the token endpoint's URL (RFC 7523
    /// §3). Auth0 documents its tenant's URL with a trailing `/`.
    pub assertion_audience: Option<String>,
    /// The API the access token is for (Auth0's API identifier).
    pub audience: Option<String>,
    pub scope: Option<String>,
}

/// Gets a token with the client credentials grant and stores it at `out`
/// like [`fetch_token`](super::fetch_token) does.
pub fn fetch_client_credentials(
    provider: &Provider,
    grant: &ClientCredentials,
    out: &TokenOut,
) -> Result<Stored, Error> {
    check_out_dir(&out.path)?;
    if grant.key.is_none() && !provider.has_client_cert() {
        return Err(Error::NoClientAuthentication);
    }
    let assertion_audience = grant
        .assertion_audience
        .as_deref()
        .unwrap_or(provider.token_url());
    let form = || {
        let mut pairs = vec![
            ("grant_type", CLIENT_CREDENTIALS_GRANT.to_owned()),
            ("client_id", grant.client_id.clone()),
        ];
        if let Some(key) = &grant.key {
            pairs.push(("client_assertion_type", ASSERTION_TYPE.to_owned()));
            pairs.push((
                "client_assertion",
                key.sign_assertion(&grant.client_id, assertion_audience)?,
            ));
        }
        if let Some(audience) = &grant.audience {
            pairs.push(("audience", audience.clone()));
        }
        if let Some(scope) = &grant.scope {
            pairs.push(("scope", scope.clone()));
        }
        Ok(pairs)
    };
    let request = Grant::ClientCredentials {
        client_id: &grant.client_id,
        signed: grant.key.is_some(),
        kid: grant.key.as_ref().map(DeviceKey::kid),
    };
    exchange_form(provider, &form, &request, out)
}

/// `refresh` for a device with a key: runs the grant again when `when`
/// finds the token held due. A token that is not due costs one file read.
pub fn renew_client_credentials(
    provider: &Provider,
    grant: &ClientCredentials,
    out: &TokenOut,
    when: RenewWhen,
) -> Result<Refreshed, Error> {
    check_out_dir(&out.path)?;
    if let Some(fresh) = not_due(&out.path, when) {
        return Ok(Refreshed::NotNeeded(fresh));
    }
    fetch_client_credentials(provider, grant, out).map(Refreshed::Stored)
}
