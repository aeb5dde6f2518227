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
//!
//! ## Layout
//!
//! A file a job: `login` (the password and refresh token grants), `jwks`
//! (the key set) and `claims` (what a token says: the warnings, and whether
//! it is due). Below them, what they share: `types` (what a caller hands in
//! and gets back), `secret`, `error`, `token_out` (where a token goes and
//! how it is verified first), `files` (the secrets a command reads, the
//! atomic writes) and `http`. Each file imports only from files below it,
//! never from this one, which only re-exports: so each reads without the
//! rest.

mod claims;
mod error;
mod files;
mod http;
mod jwks;
mod login;
mod secret;
mod token_out;
mod types;

pub use error::Error;
pub use files::SecretReader;
pub use http::Provider;
pub use jwks::fetch_jwks;
pub use login::{fetch_token, refresh_token};
pub use secret::{Secret, SecretFileError, SecretSource};
pub use token_out::{TokenOut, Verify};
pub use types::{
    Client, Fresh, JwksStored, PasswordGrant, RefreshFile, Refreshed, RenewWhen, Stored, Summary,
    TokenKind, Warning,
};
