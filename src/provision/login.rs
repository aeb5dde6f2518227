//! Logging a device in (the password grant) and renewing its token (the
//! refresh token grant); and what every grant shares: the round trip to the
//! token endpoint, what a refusal means, and the files written from the
//! answer.

use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::claims::{inspect, not_due};
use super::error::{Error, clip};
use super::files::{check_out_dir, write_atomically};
use super::http::{Answer, Endpoint, FormBody, Provider, TokenRequest};
use super::secret::{Secret, read_secret_file};
use super::token_out::TokenOut;
use super::types::{
    Client, PasswordGrant, RefreshFile, Refreshed, RenewWhen, Stored, TokenKind, Warning,
};

const PASSWORD_GRANT: &str = "password";
/// Auth0's password grant with an explicit database connection (`realm`).
const PASSWORD_REALM_GRANT: &str = "http://auth0.com/oauth/grant-type/password-realm";
const REFRESH_GRANT: &str = "refresh_token";

/// Tokens and refresh tokens are credentials: owner only.
const SECRET_MODE: u32 = 0o600;

/// Logs a device in with the password grant and stores its token (see the
/// module documentation).
pub fn fetch_token(
    provider: &Provider,
    grant: &PasswordGrant,
    out: &TokenOut,
) -> Result<Stored, Error> {
    check_out_dir(&out.path)?;
    let request = TokenRequest {
        grant_type: if grant.realm.is_some() {
            PASSWORD_REALM_GRANT
        } else {
            PASSWORD_GRANT
        },
        client_id: &grant.client.id,
        client_secret: grant.client.secret.as_ref().map(Secret::expose),
        username: Some(&grant.username),
        password: Some(grant.password.expose()),
        realm: grant.realm.as_deref(),
        audience: grant.audience.as_deref(),
        scope: grant.scope.as_deref(),
        refresh_token: None,
    };
    let grant = Grant::Password {
        client_id: &grant.client.id,
        username: &grant.username,
        forwarded_for: grant.forwarded_for,
    };
    exchange(provider, &request, &grant, out)
}

/// Replaces the token at `out.path` using the refresh token beside it,
/// when `when` finds it due (see [`RenewWhen`]). A token that is not due
/// costs one file read: nothing is sent or written.
pub fn refresh_token(
    provider: &Provider,
    client: &Client,
    out: &TokenOut,
    when: RenewWhen,
) -> Result<Refreshed, Error> {
    check_out_dir(&out.path)?;
    if let Some(fresh) = not_due(&out.path, when) {
        return Ok(Refreshed::NotNeeded(fresh));
    }
    let refresh_path = out.refresh_path();
    let refresh = read_secret_file(&refresh_path).map_err(|error| Error::NoRefreshToken {
        path: refresh_path.clone(),
        error,
    })?;
    let request = TokenRequest {
        grant_type: REFRESH_GRANT,
        client_id: &client.id,
        client_secret: client.secret.as_ref().map(Secret::expose),
        refresh_token: Some(refresh.expose()),
        ..TokenRequest::default()
    };
    let grant = Grant::Refresh {
        client_id: &client.id,
        refresh_path: &refresh_path,
    };
    exchange(provider, &request, &grant, out).map(Refreshed::Stored)
}

/// The grant a request is for, which decides what a refusal means
/// (`invalid_grant` is a wrong password for one and a dead refresh token for
/// the other) and what an answer without a refresh token means.
pub(super) enum Grant<'a> {
    Password {
        client_id: &'a str,
        username: &'a str,
        forwarded_for: Option<IpAddr>,
    },
    Refresh {
        client_id: &'a str,
        refresh_path: &'a Path,
    },
    /// The client credentials grant; the client authenticates with a signed
    /// assertion (`signed`, whose key is `kid`) or its TLS certificate.
    ClientCredentials {
        client_id: &'a str,
        signed: bool,
        kid: Option<&'a str>,
    },
    DeviceCode {
        client_id: &'a str,
    },
}

impl Grant<'_> {
    fn client_id(&self) -> &str {
        match self {
            Grant::Password { client_id, .. }
            | Grant::Refresh { client_id, .. }
            | Grant::ClientCredentials { client_id, .. }
            | Grant::DeviceCode { client_id } => client_id,
        }
    }

    /// The grant's name in the Auth0 dashboard's Grant Types list (it
    /// covers `password-realm` too).
    fn dashboard_name(&self) -> &'static str {
        match self {
            Grant::Password { .. } => "Password",
            Grant::Refresh { .. } => "Refresh Token",
            Grant::ClientCredentials { .. } => "Client Credentials",
            Grant::DeviceCode { .. } => "Device Code",
        }
    }

    pub(super) fn refusal(&self, status: u16, oauth: &OAuthError) -> Error {
        let description = clip(oauth.error_description.as_deref().unwrap_or(""));
        let client_id = self.client_id().to_owned();
        match (oauth.error.as_str(), self) {
            ("invalid_grant", Grant::Password { username, .. }) => Error::WrongCredentials {
                username: (*username).to_owned(),
                description,
            },
            ("invalid_grant", Grant::Refresh { refresh_path, .. }) => Error::RefreshTokenRefused {
                path: refresh_path.to_path_buf(),
                description,
            },
            ("unauthorized_client", _) if description.to_lowercase().contains("grant type") => {
                Error::GrantNotEnabled {
                    client_id,
                    grant: self.dashboard_name(),
                    description,
                }
            }
            (
                "unauthorized_client" | "invalid_client",
                Grant::ClientCredentials {
                    signed: true, kid, ..
                },
            ) => Error::AssertionRefused {
                client_id,
                kid: kid.map(str::to_owned),
                code: clip(&oauth.error),
                description,
            },
            ("unauthorized_client" | "invalid_client", Grant::ClientCredentials { .. }) => {
                Error::CertificateRefused {
                    client_id,
                    code: clip(&oauth.error),
                    description,
                }
            }
            ("access_denied", Grant::DeviceCode { .. }) => Error::DeviceDenied { description },
            ("expired_token", Grant::DeviceCode { .. }) => Error::DeviceCodeExpired {
                description: format!("expired_token: {description:?}"),
            },
            ("unauthorized_client" | "access_denied" | "invalid_client", _) => {
                Error::ClientRefused {
                    client_id,
                    code: clip(&oauth.error),
                    description,
                }
            }
            ("mfa_required", Grant::Password { username, .. }) => Error::MfaRequired {
                username: (*username).to_owned(),
            },
            ("too_many_attempts", Grant::Password { username, .. }) => Error::AccountBlocked {
                username: (*username).to_owned(),
                description,
            },
            ("invalid_request", Grant::Password { .. })
                if description.to_lowercase().contains("default connection") =>
            {
                Error::NoDefaultConnection { description }
            }
            (code, _) => Error::Refused {
                status,
                code: clip(code),
                description,
            },
        }
    }
}

/// An OAuth 2 error answer (RFC 6749, 5.2).
#[derive(Deserialize)]
pub(super) struct OAuthError {
    pub(super) error: String,
    #[serde(default)]
    pub(super) error_description: Option<String>,
}

/// The error for an answer that is not a success: what the provider's
/// OAuth error means for `grant` when it sent one, otherwise the status and
/// the first bytes.
pub(super) fn refused(answer: &Answer, grant: Option<&Grant<'_>>) -> Error {
    let error = match (grant, serde_json::from_slice::<OAuthError>(&answer.body)) {
        (Some(grant), Ok(oauth)) => grant.refusal(answer.status, &oauth),
        _ => answer.unexpected(),
    };
    match answer.gave_up_after {
        Some(attempts) => Error::GaveUp {
            attempts,
            last: Box::new(error),
        },
        None => error,
    }
}

/// The tokens of a successful answer from the token endpoint.
pub(super) struct TokenAnswer {
    token: String,
    refresh: Option<String>,
}

impl TokenAnswer {
    pub(super) fn parse(
        answer: &Answer,
        grant: &Grant<'_>,
        kind: TokenKind,
    ) -> Result<TokenAnswer, Error> {
        if !answer.is_success() {
            return Err(refused(answer, Some(grant)));
        }
        let mut fields: Map<String, Value> =
            serde_json::from_slice(&answer.body).map_err(|_| answer.unexpected())?;
        let mut take = |field: &str| match fields.remove(field) {
            Some(Value::String(text)) if !text.is_empty() => Some(text),
            _ => None,
        };
        let refresh = take("refresh_token");
        match take(kind.field()) {
            Some(token) => Ok(TokenAnswer { token, refresh }),
            None => Err(Error::MissingToken {
                url: answer.url.clone(),
                field: kind.field(),
                present: field_names(&fields, refresh.is_some()),
            }),
        }
    }
}

/// The names (never the values) of an answer's fields.
fn field_names(fields: &Map<String, Value>, had_refresh: bool) -> String {
    let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
    if had_refresh {
        names.push("refresh_token");
    }
    if names.is_empty() {
        return "none".to_owned();
    }
    names.sort_unstable();
    names
        .iter()
        .map(|name| clip(name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The token endpoint round trip of the grants sent as a form: the client
/// credentials grant (client assertion or certificate).
pub(super) fn exchange_form(
    provider: &Provider,
    form: FormBody<'_>,
    grant: &Grant<'_>,
    out: &TokenOut,
) -> Result<Stored, Error> {
    let answer = provider.send(&Endpoint::TokenForm(form))?;
    let tokens = TokenAnswer::parse(&answer, grant, out.kind)?;
    store(tokens, out, grant)
}

/// The token endpoint round trip of the password and refresh grants.
fn exchange(
    provider: &Provider,
    request: &TokenRequest<'_>,
    grant: &Grant<'_>,
    out: &TokenOut,
) -> Result<Stored, Error> {
    let forwarded_for = match grant {
        Grant::Password { forwarded_for, .. } => *forwarded_for,
        _ => None,
    };
    let answer = provider.send(&Endpoint::Token {
        body: request,
        forwarded_for,
    })?;
    let tokens = TokenAnswer::parse(&answer, grant, out.kind)?;
    store(tokens, out, grant)
}

/// Stores an answer's tokens at `out` (see [`Error`] for what a failure
/// leaves).
pub(super) fn store(
    tokens: TokenAnswer,
    out: &TokenOut,
    grant: &Grant<'_>,
) -> Result<Stored, Error> {
    let (summary, mut warnings) = inspect(&tokens.token, out)?;
    let refresh_path = out.refresh_path();
    // The refresh token first: a provider that rotates refresh tokens has
    // already invalidated the old one, so it must not be lost to a failure
    // writing the token.
    if let Some(refresh) = &tokens.refresh {
        write_atomically(&refresh_path, refresh.as_bytes(), SECRET_MODE)?;
    }
    write_atomically(&out.path, tokens.token.as_bytes(), SECRET_MODE)?;
    let refresh = match (tokens.refresh, grant) {
        (Some(_), _) => RefreshFile::Written(refresh_path),
        // Not rotated: the refresh token used still works.
        (None, Grant::Refresh { .. }) => RefreshFile::Kept(refresh_path),
        // A refresh token left from an earlier login belongs to another
        // grant (another scope, audience, maybe account); a refresh timer
        // must not go on using it.
        (None, Grant::Password { .. } | Grant::DeviceCode { .. }) => {
            warnings.push(Warning::NoRefreshToken);
            remove_stale(refresh_path)?
        }
        // The client credentials grant returns none (RFC 6749 §4.4.3): the
        // device key renews, so no warning.
        (None, Grant::ClientCredentials { .. }) => remove_stale(refresh_path)?,
    };
    Ok(Stored {
        path: out.path.clone(),
        kind: out.kind,
        summary,
        refresh,
        warnings,
    })
}

/// Removes the refresh token of an earlier login.
fn remove_stale(refresh_path: std::path::PathBuf) -> Result<RefreshFile, Error> {
    match std::fs::remove_file(&refresh_path) {
        Ok(()) => Ok(RefreshFile::Removed(refresh_path)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(RefreshFile::Absent),
        Err(source) => Err(Error::Write {
            path: refresh_path,
            source,
        }),
    }
}

#[cfg(test)]
mod tests;
