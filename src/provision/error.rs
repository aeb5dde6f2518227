//! Why provisioning failed, said so that the operator knows what to
//! change, with no secret in it.

use std::fmt;
use std::path::PathBuf;

use crate::config::ConfigError;
use crate::keys::{self, KeyDirError, SkippedJwk};
use crate::token::TokenError;

use super::secret::{SecretFileError, SecretSource};
use super::types::TokenKind;

/// How much of a provider's error description an error repeats.
const DESCRIPTION_CHARS: usize = 200;

/// Why provisioning failed. Every file is left as it was, with one
/// deliberate exception: an [`Error::Write`] for the token file can follow
/// the successful write of a rotated refresh token, which must not be lost.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Flags that do not go together.
    #[error("{0}")]
    Usage(&'static str),
    #[error("--domain {domain:?}: {reason}")]
    BadDomain {
        domain: String,
        reason: &'static str,
    },
    #[error(
        "refusing --domain {domain:?}: the provider must be reached over https:// (plain http:// only on a loopback address, such as http://127.0.0.1:PORT)"
    )]
    NotHttps { domain: String },
    #[error("cannot read CA file {}: {source}", path.display())]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA file {} holds no PEM certificate", path.display())]
    CaFileEmpty { path: PathBuf },
    #[error("cannot read {flag} {from}: {error}")]
    Secret {
        flag: &'static str,
        from: SecretSource,
        error: SecretFileError,
    },
    #[error(
        "{first} and {second} both read standard input (`-`); only one secret can come from it"
    )]
    StdinTwice {
        first: &'static str,
        second: &'static str,
    },
    #[error("--out {}: {reason}", path.display())]
    OutPath { path: PathBuf, reason: &'static str },
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "TLS with {url} failed: {reason} (for a provider with a private CA, pass its certificate with --ca-file)"
    )]
    Tls { url: String, reason: String },
    #[error("{url} did not answer in time (the {what} timeout passed)")]
    Timeout { url: String, what: String },
    #[error("the answer from {url} is larger than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error(
        "unexpected answer from {url}: HTTP {status}, not the JSON expected; the body starts {snippet}"
    )]
    UnexpectedAnswer {
        url: String,
        status: u16,
        snippet: String,
    },
    #[error(
        "the provider refused the login of {username:?}: wrong username or password (invalid_grant: {description:?}); check --username and the password file"
    )]
    WrongCredentials {
        username: String,
        description: String,
    },
    #[error(
        "the provider refused the refresh token in {} (invalid_grant: {description:?}): it has expired or been revoked; log in again with `jwtgate-provision token`",
        path.display()
    )]
    RefreshTokenRefused { path: PathBuf, description: String },
    #[error(
        "the provider refused application {client_id:?} ({code}: {description:?}); check --client-id, and --client-secret-file for a confidential application"
    )]
    ClientRefused {
        client_id: String,
        code: String,
        description: String,
    },
    #[error(
        "application {client_id:?} may not use the {grant:?} grant ({description:?}); enable it in the Auth0 dashboard: Applications > the application > Settings > Advanced Settings > Grant Types > {grant:?}"
    )]
    GrantNotEnabled {
        client_id: String,
        grant: &'static str,
        description: String,
    },
    #[error(
        "the provider requires multi-factor authentication for {username:?} (mfa_required), which a device cannot complete; exempt device accounts from MFA"
    )]
    MfaRequired { username: String },
    #[error(
        "the provider has blocked {username:?} after too many failed logins (too_many_attempts: {description:?}); unblock the account in the provider, and check the password file"
    )]
    AccountBlocked {
        username: String,
        description: String,
    },
    #[error(
        "the provider has no default connection for the password grant ({description:?}); name the database connection with --realm, or set the tenant's Default Directory"
    )]
    NoDefaultConnection { description: String },
    #[error("the provider refused the request: HTTP {status}, {code}: {description:?}")]
    Refused {
        status: u16,
        code: String,
        description: String,
    },
    #[error("gave up after {attempts} attempts; the last: {last}")]
    GaveUp { attempts: u32, last: Box<Error> },
    #[error(
        "the answer from {url} has no {field} (its fields: {present}){}",
        missing_token_hint(field)
    )]
    MissingToken {
        url: String,
        field: &'static str,
        present: String,
    },
    #[error(
        "cannot read the refresh token {}: {error}; log in with `jwtgate-provision token --scope \"openid offline_access\" ...` first",
        path.display()
    )]
    NoRefreshToken {
        path: PathBuf,
        error: SecretFileError,
    },
    #[error(
        "the {kind} does not verify against the keys in {} under {}: {source}",
        dir.display(),
        PolicyOrigin(config)
    )]
    Verify {
        kind: TokenKind,
        dir: PathBuf,
        config: Option<PathBuf>,
        source: TokenError,
    },
    #[error(transparent)]
    Keys(#[from] KeyDirError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{url} did not answer with a JWK set: {source}; the body starts {snippet}")]
    NotJwks {
        url: String,
        source: keys::JwksError,
        snippet: String,
    },
    #[error(
        "the JWK set from {url} has no key the gateway can use: {}",
        SkippedList(skipped)
    )]
    NoUsableKey {
        url: String,
        skipped: Vec<SkippedJwk>,
    },
    #[error(
        "TLS with {url} failed: the server closed the connection ({reason}), which is how it refuses a client certificate; check that --mtls-cert was issued by the CA the provider trusts for this application"
    )]
    ClientCertClosed { url: String, reason: String },
    #[error("--mtls-endpoint {url:?}: {reason}")]
    MtlsEndpoint { url: String, reason: &'static str },
    #[error("cannot use {flag} {}: {reason}", path.display())]
    ClientCert {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("cannot use --key {}: {reason}", path.display())]
    DeviceKey { path: PathBuf, reason: String },
    #[error(
        "the client credentials grant needs the device's key (--key) or its client certificate (--mtls-cert and --mtls-key)"
    )]
    NoClientAuthentication,
    #[error("cannot sign the client assertion: {reason}")]
    Sign { reason: String },
    #[error(
        "the provider refused the client assertion of application {client_id:?} ({code}: {description:?}); check that the public key registered for the application is the one of --key{}, that the application uses Private Key JWT, --assertion-audience, and the device's clock",
        kid.as_deref().map(|kid| format!(" (kid {kid:?}; --kid gives another)")).unwrap_or_default()
    )]
    AssertionRefused {
        client_id: String,
        kid: Option<String>,
        code: String,
        description: String,
    },
    #[error(
        "the provider refused the client certificate of application {client_id:?} ({code}: {description:?}); check that the application authenticates with mTLS and that its registered subject or certificate is the one of --mtls-cert"
    )]
    CertificateRefused {
        client_id: String,
        code: String,
        description: String,
    },
    #[error(
        "the technician declined the device's request (access_denied: {description:?}); run `jwtgate-provision device-code` again to get a new code"
    )]
    DeviceDenied { description: String },
    #[error(
        "the device code expired before anyone approved it ({description}); run `jwtgate-provision device-code` again to get a new code"
    )]
    DeviceCodeExpired { description: String },
    #[error("--out {}: {reason}", path.display())]
    KeygenDir { path: PathBuf, reason: String },
    #[error(
        "refusing to overwrite {}: keygen never replaces a key; move it away or choose another --out or --name",
        path.display()
    )]
    KeygenExists { path: PathBuf },
    #[error("cannot make the key pair: {reason}")]
    Keygen { reason: String },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn missing_token_hint(field: &str) -> &'static str {
    match field {
        "id_token" => "; an ID token needs the scope openid: pass --scope openid",
        _ => "",
    }
}

struct SkippedList<'a>(&'a [SkippedJwk]);

impl fmt::Display for SkippedList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("the set is empty");
        }
        for (i, skipped) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{skipped}")?;
        }
        Ok(())
    }
}

/// Names the policy a token was verified under, in [`Error::Verify`].
struct PolicyOrigin<'a>(&'a Option<PathBuf>);

impl fmt::Display for PolicyOrigin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, "the [auth] of {}", path.display()),
            None => f.write_str(
                "the default [auth] policy (--config FILE verifies under the gateway's own)",
            ),
        }
    }
}

/// Provider text for an error message: clipped, one line.
pub(super) fn clip(text: &str) -> String {
    let mut clipped: String = text
        .chars()
        .take(DESCRIPTION_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(DESCRIPTION_CHARS).is_some() {
        clipped.push_str("...");
    }
    clipped
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn provider_text_is_clipped_to_one_line() {
        assert_eq!(clip("a\nb\u{1b}[31m"), "a b [31m");
        let long = "x".repeat(DESCRIPTION_CHARS + 10);
        assert_eq!(clip(&long).len(), DESCRIPTION_CHARS + 3);
    }
}
