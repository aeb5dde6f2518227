//! What a caller hands provisioning and what it gets back: plain data,
//! shared by the jobs.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::keys::SkippedJwk;

use super::secret::Secret;

/// The application the device logs in through.
#[derive(Debug)]
pub struct Client {
    pub id: String,
    /// Needed for confidential applications only.
    pub secret: Option<Secret>,
}

/// What [`fetch_token`](super::fetch_token) asks for.
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
    pub(super) fn field(self) -> &'static str {
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

/// What was learnt from a token's claims (not verified unless
/// [`TokenOut::verify`](super::TokenOut::verify) was given).
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

/// When [`refresh_token`](super::refresh_token) renews the token it holds.
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

/// The outcome of [`refresh_token`](super::refresh_token).
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
