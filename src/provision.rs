//! Provisioning: getting device tokens and signing keys from the identity
//! provider, for the `jwtgate-provision` binary.
//!
//! ## The model
//!
//! The gateway never talks to the identity provider; this module is the one
//! part of jwtgate that does. It runs on a device (or a setup host for it),
//! ahead of time, and leaves files behind that work offline:
//!
//! - [`fetch_token`] logs a device in with the OAuth 2 resource-owner
//!   password grant (`POST {domain}/oauth/token`, Auth0's `password` or
//!   `password-realm` grant) and stores the access token, or the ID token, at
//!   the `--out` path. A refresh token, when the provider returns one, goes
//!   beside it as `{out}.refresh`. Both files are mode 0600.
//! - [`refresh_token`] trades `{out}.refresh` for a new token with the
//!   `refresh_token` grant, so a timer can keep the token fresh without the
//!   device password; it keeps a rotated refresh token the provider returns.
//!   It decides from the token it holds ([`RenewWhen`]): by default it
//!   renews once less than a third of the token's lifetime is left, so a
//!   timer that runs often costs a file read while nothing is due.
//! - [`fetch_jwks`] downloads `{domain}/.well-known/jwks.json` into the
//!   gateway's keys directory, so the gateway can verify the provider's
//!   RS256/ES256 tokens.
//!
//! Why the password grant: a device has no browser and no user at it, so the
//! interactive flows do not apply, and the client-credentials grant would
//! give every device the same identity. The password grant gives each
//! device its own account (and `sub`, and topics claim), and is what the
//! seed's deprecated `/oauth/ro` call did, moved to the current endpoint.
//!
//! Every file is written atomically (a temporary file in the same directory,
//! fsynced, renamed over the target), so a failure at any point, including a
//! provider that answers garbage, leaves the previous good file in place and
//! never an empty or partial one. The temporary files are dotfiles ending in
//! `.tmp`, which the gateway's key loader ignores.
//!
//! Before a token is stored its claims are decoded (without checking the
//! signature, unless [`TokenOut::verify`] asks for the gateway's own
//! verification, under the gateway's own `[auth]` when its config file is
//! given) and [`Warning`]s name what would make the gateway refuse it, so a
//! misconfigured tenant shows at provisioning time rather than as a refused
//! CONNECT in the field.
//!
//! Secrets never come from the command line (it is visible in `ps`), only
//! from files or standard input ([`SecretReader`]), and never appear in
//! errors or logs.
//!
//! The HTTP side (HTTPS only except on loopback, bounded retries on 429 and
//! 5xx, timeouts) is in [`Provider`].

mod files;
mod http;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{AuthConfig, Config, ConfigError};
use crate::keys::{self, KeyDirError, KeyStore, SkippedJwk};
use crate::token::{self, Policy, TokenError};

pub use files::{Secret, SecretFileError, SecretReader, SecretSource};
pub use http::Provider;

use files::{read_secret_file, write_atomically};
use http::{Answer, Endpoint};

const PASSWORD_GRANT: &str = "password";
/// Auth0's password grant with an explicit database connection (`realm`).
const PASSWORD_REALM_GRANT: &str = "http://auth0.com/oauth/grant-type/password-realm";
const REFRESH_GRANT: &str = "refresh_token";

/// Tokens and refresh tokens are credentials: owner only.
const SECRET_MODE: u32 = 0o600;
/// A JWK set holds public keys only; who may read it is up to the keys
/// directory's permissions (the gateway runs as its own user).
const PUBLIC_MODE: u32 = 0o644;

/// How much of a provider's error description an error repeats.
const DESCRIPTION_CHARS: usize = 200;

/// The application the device logs in through.
#[derive(Debug)]
pub struct Client {
    pub id: String,
    /// Needed for confidential applications only.
    pub secret: Option<Secret>,
}

/// What [`fetch_token`] asks for.
#[derive(Debug)]
pub struct PasswordGrant {
    pub client: Client,
    /// The device's account.
    pub username: String,
    pub password: Secret,
    /// The database connection (Auth0 "realm"); without it the tenant's
    /// default directory is used.
    pub realm: Option<String>,
    pub audience: Option<String>,
    pub scope: Option<String>,
    /// The address of the device, when a server logs in on its behalf, for
    /// the provider's brute-force protection (`auth0-forwarded-for`).
    pub forwarded_for: Option<IpAddr>,
}

/// Which token of the provider's answer is the device's MQTT password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Access,
    /// The ID token: the seed's choice, and what a tenant without an API
    /// (no `--audience`) issues as a JWT.
    Id,
}

impl TokenKind {
    fn field(self) -> &'static str {
        match self {
            TokenKind::Access => "access_token",
            TokenKind::Id => "id_token",
        }
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenKind::Access => "access token",
            TokenKind::Id => "ID token",
        })
    }
}

/// Where a token is stored and how it is checked first.
#[derive(Debug, Clone)]
pub struct TokenOut {
    /// The token file; the refresh token goes to `{path}.refresh`.
    pub path: PathBuf,
    pub kind: TokenKind,
    /// The claim the gateway reads topic filters from.
    pub topics_claim: String,
    /// The claim the gateway reads EMQX-style rules from (a token with it
    /// and no topics claim still grants).
    pub acl_claim: String,
    /// Verify the token as the gateway would and refuse to store it when
    /// that fails.
    pub verify: Option<Verify>,
}

/// The gateway's verification, as [`TokenOut::verify`] runs it.
#[derive(Debug, Clone)]
pub struct Verify {
    /// The gateway's `[auth]`: the keys directory, and the issuer,
    /// audience, algorithms, `require_kid` and lifetime it enforces.
    pub auth: AuthConfig,
    /// The config file `auth` was read from; `None` for the built-in
    /// defaults, which enforce less than a production `[auth]` may.
    pub config: Option<PathBuf>,
}

impl Verify {
    /// The built-in `[auth]` with keys from `keys_dir`.
    pub fn defaults(keys_dir: &Path) -> Verify {
        let mut auth = Config::defaults(keys_dir).auth;
        auth.keys_dir = keys_dir.to_path_buf();
        Verify { auth, config: None }
    }

    /// The `[auth]` of the gateway's config file; `keys_dir`, when given,
    /// replaces its keys directory.
    pub fn from_config(path: &Path, keys_dir: Option<&Path>) -> Result<Verify, Error> {
        let mut auth = Config::load(path)?.auth;
        if let Some(dir) = keys_dir {
            auth.keys_dir = dir.to_path_buf();
        }
        Ok(Verify {
            auth,
            config: Some(path.to_path_buf()),
        })
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

impl TokenOut {
    /// Where the refresh token for this token lives.
    pub fn refresh_path(&self) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(".refresh");
        PathBuf::from(name)
    }
}

/// What was learnt from a token's claims (not verified unless
/// [`TokenOut::verify`] was given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub subject: Option<String>,
    /// `exp`, in seconds since the Unix epoch.
    pub expires_at: Option<u64>,
    /// The topics claim, when it is a filter or a list of them.
    pub topics: Option<Vec<String>>,
}

/// Something about a stored token that will bite later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    NotAJwt {
        kind: TokenKind,
    },
    NoExp,
    NoSubject,
    NoTopics {
        claim: String,
    },
    BadTopics {
        claim: String,
    },
    EmptyTopics {
        claim: String,
    },
    /// `token` got no refresh token, so `refresh` cannot work.
    NoRefreshToken,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::NotAJwt { kind: TokenKind::Access } => f.write_str(
                "the access token is not a JWT, so the gateway will refuse it (Auth0 issues JWT access tokens only for an API: pass --audience, or use --id-token)",
            ),
            Warning::NotAJwt { kind: TokenKind::Id } => {
                f.write_str("the ID token is not a JWT, so the gateway will refuse it")
            }
            Warning::NoExp => f.write_str(
                "the token has no \"exp\" claim; the gateway refuses tokens without one",
            ),
            Warning::NoSubject => f.write_str(
                "the token has no \"sub\" claim, or an empty one; the gateway refuses tokens without one unless [auth] require_subject = false",
            ),
            Warning::NoTopics { claim } => write!(
                f,
                "the token has no {claim:?} claim, so the gateway will refuse the connection as not authorized (add the claim in the provider, e.g. with an Auth0 Action, or name the claim with --topics-claim)"
            ),
            Warning::EmptyTopics { claim } => write!(
                f,
                "the {claim:?} claim grants no topic, so the gateway will refuse the connection as not authorized"
            ),
            Warning::BadTopics { claim } => write!(
                f,
                "the {claim:?} claim is neither a topic filter nor a list of them, so the gateway will refuse the connection as not authorized"
            ),
            Warning::NoRefreshToken => f.write_str(
                "the provider returned no refresh token, so `jwtgate-provision refresh` cannot renew this token (ask for one with --scope \"openid offline_access\" and allow offline access on the API)",
            ),
        }
    }
}

/// What happened to `{out}.refresh`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshFile {
    Written(PathBuf),
    /// The provider did not rotate the refresh token; the one there stays.
    Kept(PathBuf),
    /// A new login returned none, so the one from an earlier login, which
    /// a refresh timer would otherwise keep using, was removed.
    Removed(PathBuf),
    /// There is none, and none was returned.
    Absent,
}

/// A token that was stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub path: PathBuf,
    pub kind: TokenKind,
    pub summary: Summary,
    pub refresh: RefreshFile,
    pub warnings: Vec<Warning>,
}

/// When [`refresh_token`] renews the token it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewWhen {
    /// Whatever the token (`--force`).
    Always,
    /// Once less than a third of the token's lifetime is left, or less than
    /// `min_remaining` when that is longer: a third leaves room for a
    /// provider outage over several runs of a timer, and the floor keeps a
    /// short-lived token from expiring between two runs. A token whose
    /// expiry cannot be read (none yet, not a JWT, no `exp`) is renewed.
    Due { min_remaining: Option<Duration> },
}

impl Default for RenewWhen {
    fn default() -> RenewWhen {
        RenewWhen::Due {
            min_remaining: None,
        }
    }
}

/// How the token held stands, when [`RenewWhen::Due`] finds it fresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fresh {
    /// Until its `exp`.
    pub expires_in: Duration,
    /// `exp - iat`, or `exp` minus the token file's modification time when
    /// it has no `iat`; `None` when neither is before `exp`.
    pub lifetime: Option<Duration>,
    /// It is renewed once less than this is left.
    pub renew_within: Duration,
    /// Whether `renew_within` is the `min_remaining` asked for (else it is
    /// a third of `lifetime`).
    pub by_min_remaining: bool,
}

/// The outcome of [`refresh_token`].
#[derive(Debug, Clone)]
pub enum Refreshed {
    /// The token is fresh enough: nothing was requested or written.
    NotNeeded(Fresh),
    Stored(Stored),
}

/// A JWK set that was stored.
#[derive(Debug)]
pub struct JwksStored {
    pub path: PathBuf,
    /// The ids of the keys the gateway will load from it.
    pub key_ids: Vec<String>,
    /// Keys the gateway will leave out (it logs them too).
    pub skipped: Vec<SkippedJwk>,
}

/// Why provisioning failed. Every file is left as it was, with one
/// deliberate exception: an [`Error::Write`] for the token file can follow
/// the successful write of a rotated refresh token, which must not be lost.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    if let RenewWhen::Due { min_remaining } = when
        && let Some(fresh) = fresh(&out.path, min_remaining, SystemTime::now())
    {
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

/// Downloads the provider's JWK set to `out` (a `*.json` file in the
/// gateway's keys directory), after checking that the gateway's own loader
/// finds at least one usable key in it.
pub fn fetch_jwks(provider: &Provider, out: &Path) -> Result<JwksStored, Error> {
    check_jwks_name(out)?;
    check_out_dir(out)?;
    let answer = provider.send(&Endpoint::Jwks)?;
    if !answer.is_success() {
        return Err(refused(&answer, None));
    }
    let text = std::str::from_utf8(&answer.body).map_err(|_| answer.unexpected())?;
    // Parsed under the name it will have, so keys without `kid` get the ids
    // the gateway will give them.
    let parsed = keys::parse_jwks(text, out).map_err(|source| Error::NotJwks {
        url: answer.url.clone(),
        source,
        snippet: answer.snippet(),
    })?;
    if parsed.keys.is_empty() {
        return Err(Error::NoUsableKey {
            url: answer.url,
            skipped: parsed.skipped,
        });
    }
    write_atomically(out, &answer.body, PUBLIC_MODE)?;
    Ok(JwksStored {
        path: out.to_path_buf(),
        key_ids: parsed.keys.iter().map(|key| key.id().to_owned()).collect(),
        skipped: parsed.skipped,
    })
}

/// The JSON body of a token request; absent members are left out.
#[derive(Serialize, Default)]
struct TokenRequest<'a> {
    grant_type: &'a str,
    client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_secret: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    realm: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audience: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
}

/// The grant a request is for, which decides what a refusal means
/// (`invalid_grant` is a wrong password for one and a dead refresh token for
/// the other) and what an answer without a refresh token means.
enum Grant<'a> {
    Password {
        client_id: &'a str,
        username: &'a str,
        forwarded_for: Option<IpAddr>,
    },
    Refresh {
        client_id: &'a str,
        refresh_path: &'a Path,
    },
}

impl Grant<'_> {
    fn client_id(&self) -> &str {
        match self {
            Grant::Password { client_id, .. } | Grant::Refresh { client_id, .. } => client_id,
        }
    }

    /// The grant's name in the Auth0 dashboard's Grant Types list (it
    /// covers `password-realm` too).
    fn dashboard_name(&self) -> &'static str {
        match self {
            Grant::Password { .. } => "Password",
            Grant::Refresh { .. } => "Refresh Token",
        }
    }

    fn refusal(&self, status: u16, oauth: &OAuthError) -> Error {
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
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// The error for an answer that is not a success: what the provider's
/// OAuth error means for `grant` when it sent one, otherwise the status and
/// the first bytes.
fn refused(answer: &Answer, grant: Option<&Grant<'_>>) -> Error {
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
struct TokenAnswer {
    token: String,
    refresh: Option<String>,
}

impl TokenAnswer {
    fn parse(answer: &Answer, grant: &Grant<'_>, kind: TokenKind) -> Result<TokenAnswer, Error> {
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

/// The token endpoint round trip of both grants.
fn exchange(
    provider: &Provider,
    request: &TokenRequest<'_>,
    grant: &Grant<'_>,
    out: &TokenOut,
) -> Result<Stored, Error> {
    let forwarded_for = match grant {
        Grant::Password { forwarded_for, .. } => *forwarded_for,
        Grant::Refresh { .. } => None,
    };
    let answer = provider.send(&Endpoint::Token {
        body: request,
        forwarded_for,
    })?;
    let tokens = TokenAnswer::parse(&answer, grant, out.kind)?;
    store(tokens, out, grant)
}

fn store(tokens: TokenAnswer, out: &TokenOut, grant: &Grant<'_>) -> Result<Stored, Error> {
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
        (None, Grant::Password { .. }) => {
            warnings.push(Warning::NoRefreshToken);
            match std::fs::remove_file(&refresh_path) {
                Ok(()) => RefreshFile::Removed(refresh_path),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => RefreshFile::Absent,
                Err(source) => {
                    return Err(Error::Write {
                        path: refresh_path,
                        source,
                    });
                }
            }
        }
    };
    Ok(Stored {
        path: out.path.clone(),
        kind: out.kind,
        summary,
        refresh,
        warnings,
    })
}

/// Decodes the token's claims (verifying it first when `out.verify` asks
/// for it) and says what the gateway will think of them.
fn inspect(token: &str, out: &TokenOut) -> Result<(Summary, Vec<Warning>), Error> {
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

/// The token in `path` when it is fresh enough to keep at `now`; `None`
/// when it is due, or when its expiry cannot be told (no file, not a JWT,
/// no `exp`), which calls for a refresh too.
fn fresh(path: &Path, min_remaining: Option<Duration>, now: SystemTime) -> Option<Fresh> {
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

/// Fails before any request when the output could not be written anyway,
/// so a typo does not cost a login.
fn check_out_dir(path: &Path) -> Result<(), Error> {
    let reason = match path.file_name() {
        None => "not a file name",
        Some(_) if files::parent_dir(path).is_dir() => return Ok(()),
        Some(_) => "its directory does not exist",
    };
    Err(Error::OutPath {
        path: path.to_path_buf(),
        reason,
    })
}

/// The gateway loads `*.json` files that are not dotfiles; anything else
/// would be downloaded and then silently ignored.
fn check_jwks_name(path: &Path) -> Result<(), Error> {
    // The same test as the gateway's loader.
    let dotfile = path
        .file_name()
        .is_some_and(|name| name.as_encoded_bytes().starts_with(b"."));
    if path.extension().is_some_and(|ext| ext == "json") && !dotfile {
        return Ok(());
    }
    Err(Error::OutPath {
        path: path.to_path_buf(),
        reason: "the gateway only loads *.json files (not dotfiles) from its keys directory; name it like KEYS_DIR/provider.json",
    })
}

/// Provider text for an error message: clipped, one line.
fn clip(text: &str) -> String {
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
    use serde_json::json;

    fn jwt(claims: &Value) -> String {
        let part = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
        format!("{}.{}.c2ln", part(&json!({ "alg": "HS256" })), part(claims))
    }

    fn out(topics_claim: &str) -> TokenOut {
        TokenOut {
            path: PathBuf::from("device.jwt"),
            kind: TokenKind::Access,
            topics_claim: topics_claim.to_owned(),
            acl_claim: "acl".to_owned(),
            verify: None,
        }
    }

    #[test]
    fn renewal_is_due_once_a_third_of_the_lifetime_is_left() {
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        let min = |secs: u64| Some(Duration::from_secs(secs));
        // Issued at 0, expires at 900: due from 600 on (300 s left).
        let fresh = decide(900, Some(0), None, at(599)).unwrap();
        assert_eq!(fresh.expires_in, Duration::from_secs(301));
        assert_eq!(fresh.lifetime, Some(Duration::from_secs(900)));
        assert_eq!(fresh.renew_within, Duration::from_secs(300));
        assert!(!fresh.by_min_remaining);
        assert_eq!(decide(900, Some(0), None, at(601)), None);
        // Exactly a third left is not less than a third.
        assert!(decide(900, Some(0), None, at(600)).is_some());
        // A longer floor wins; a shorter one changes nothing.
        assert_eq!(decide(900, Some(0), min(600), at(301)), None);
        let fresh = decide(900, Some(0), min(600), at(299)).unwrap();
        assert!(fresh.by_min_remaining);
        assert_eq!(decide(900, Some(0), min(60), at(601)), None);
        assert!(
            !decide(900, Some(0), min(60), at(599))
                .unwrap()
                .by_min_remaining
        );
        // Expired, or no lifetime to take a third of and no floor: due.
        assert_eq!(decide(900, Some(0), None, at(900)), None);
        assert_eq!(decide(900, Some(0), None, at(5000)), None);
        assert_eq!(decide(900, None, None, at(10)), None);
        assert_eq!(decide(900, Some(900), None, at(10)), None);
        assert_eq!(decide(900, Some(2000), None, at(10)), None);
        // A floor alone still decides.
        assert!(decide(900, None, min(60), at(10)).unwrap().by_min_remaining);
        assert_eq!(decide(900, None, min(60), at(850)), None);
    }

    #[test]
    fn inspect_reads_claims_and_warns() {
        let token =
            jwt(&json!({ "sub": "dev-1", "exp": 1_900_000_000u64, "topics": ["a/#", "b"] }));
        let (summary, warnings) = inspect(&token, &out("topics")).unwrap();
        assert_eq!(
            summary,
            Summary {
                subject: Some("dev-1".into()),
                expires_at: Some(1_900_000_000),
                topics: Some(vec!["a/#".into(), "b".into()]),
            }
        );
        assert!(warnings.is_empty());

        let (summary, warnings) =
            inspect(&jwt(&json!({ "sub": "d", "topics": "a" })), &out("topics")).unwrap();
        assert_eq!(summary.topics, Some(vec!["a".into()]));
        assert_eq!(warnings, [Warning::NoExp]);

        for sub in [json!(null), json!("")] {
            let token = jwt(&json!({ "sub": sub, "exp": 1, "topics": "a" }));
            let (_, warnings) = inspect(&token, &out("topics")).unwrap();
            assert_eq!(warnings, [Warning::NoSubject], "{sub}");
        }

        let namespaced = "https://example.com/topics";
        let (_, warnings) =
            inspect(&jwt(&json!({ "sub": "d", "exp": 1 })), &out(namespaced)).unwrap();
        assert_eq!(
            warnings,
            [Warning::NoTopics {
                claim: namespaced.into()
            }]
        );

        let (_, warnings) = inspect(
            &jwt(&json!({ "sub": "d", "exp": 1, "topics": [] })),
            &out("topics"),
        )
        .unwrap();
        assert_eq!(
            warnings,
            [Warning::EmptyTopics {
                claim: "topics".into()
            }]
        );

        let (_, warnings) = inspect(
            &jwt(&json!({ "sub": "d", "exp": 1, "topics": [1] })),
            &out("topics"),
        )
        .unwrap();
        assert_eq!(
            warnings,
            [Warning::BadTopics {
                claim: "topics".into()
            }]
        );

        for opaque in ["opaque", "a.b", "a.!!.c", "a.e30.c.d"] {
            let (_, warnings) = inspect(opaque, &out("topics")).unwrap();
            assert_eq!(
                warnings,
                [Warning::NotAJwt {
                    kind: TokenKind::Access
                }],
                "{opaque}"
            );
        }
    }

    #[test]
    fn refusals_name_the_cause() {
        let password = Grant::Password {
            client_id: "app",
            username: "dev-1",
            forwarded_for: None,
        };
        let refresh_path = PathBuf::from("device.jwt.refresh");
        let refresh = Grant::Refresh {
            client_id: "app",
            refresh_path: &refresh_path,
        };
        let oauth = |error: &str, description: &str| OAuthError {
            error: error.into(),
            error_description: Some(description.into()),
        };
        let cases = [
            (
                &password,
                "invalid_grant",
                "Wrong email or password.",
                "wrong username or password",
            ),
            (
                &refresh,
                "invalid_grant",
                "Unknown or invalid refresh token.",
                "jwtgate-provision token",
            ),
            (
                &password,
                "unauthorized_client",
                "Grant type 'password' not allowed for the client.",
                "Grant Types > \"Password\"",
            ),
            (
                &refresh,
                "unauthorized_client",
                "Grant type 'refresh_token' not allowed for the client.",
                "\"Refresh Token\"",
            ),
            (
                &password,
                "unauthorized_client",
                "Client is not authorized",
                "check --client-id",
            ),
            (
                &password,
                "access_denied",
                "Unauthorized",
                "check --client-id",
            ),
            (
                &password,
                "mfa_required",
                "Multifactor authentication required",
                "multi-factor",
            ),
            (
                &password,
                "too_many_attempts",
                "Your account has been blocked",
                "blocked",
            ),
            (
                &password,
                "invalid_request",
                "Authorization server not configured with default connection.",
                "--realm",
            ),
            (
                &password,
                "server_error",
                "oops",
                "HTTP 400, server_error: \"oops\"",
            ),
        ];
        for (grant, code, description, expected) in cases {
            let message = grant.refusal(400, &oauth(code, description)).to_string();
            assert!(message.contains(expected), "{code}: {message}");
        }
    }

    #[test]
    fn provider_text_is_clipped_to_one_line() {
        assert_eq!(clip("a\nb\u{1b}[31m"), "a b [31m");
        let long = "x".repeat(DESCRIPTION_CHARS + 10);
        assert_eq!(clip(&long).len(), DESCRIPTION_CHARS + 3);
    }

    #[test]
    fn refresh_path_is_beside_the_token() {
        assert_eq!(
            out("topics").refresh_path(),
            PathBuf::from("device.jwt.refresh")
        );
    }

    #[test]
    fn jwks_names_the_gateway_loads() {
        for good in ["keys/provider.json", "provider.json"] {
            check_jwks_name(Path::new(good)).unwrap();
        }
        for bad in [
            "keys/provider.jwks",
            "keys/.provider.json",
            "keys/",
            "keys/provider.json.tmp",
        ] {
            assert!(check_jwks_name(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
