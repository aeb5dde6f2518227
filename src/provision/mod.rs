//! Provisioning: getting device tokens and signing keys from the identity
//! provider, for the `jwtgate-provision` binary.
//!
//! ## The model
//!
//! The gateway never talks to the identity provider; this module is the one
//! part of jwtgate that does. It runs on a device (or a setup host for it),
//! ahead of time, and leaves files behind that work offline:
//!
//! - [`fetch_client_credentials`] gets a token with the client credentials
//!   grant, the device authenticating with its own key: a short-lived
//!   assertion it signs (`private_key_jwt`, RFC 7523 §2.2), or its TLS
//!   client certificate (RFC 8705 §2), which also binds the token to that
//!   certificate. [`renew_client_credentials`] runs it again once the token
//!   held is due: the key is the long-lived credential, and the grant
//!   returns no refresh token.
//! - [`fetch_with_device_code`] gets one with the device authorization
//!   grant (RFC 8628): a technician approves the device in a browser while
//!   it polls.
//! - [`fetch_token`] logs a device in with the OAuth 2 resource-owner
//!   password grant (`POST {domain}/oauth/token`, Auth0's `password` or
//!   `password-realm` grant), which OAuth 2.1 drops; kept for fleets set up
//!   that way.
//! - Each stores the access token, or the ID token, at the `--out` path; a
//!   refresh token, when the provider returns one, goes beside it as
//!   `{out}.refresh`. Both files are mode 0600.
//! - [`refresh_token`] trades `{out}.refresh` for a new token with the
//!   `refresh_token` grant, so a timer can keep the token fresh without the
//!   technician or the password; it keeps a rotated refresh token the
//!   provider returns. It decides from the token it holds ([`RenewWhen`]):
//!   by default it renews once less than a third of the token's lifetime
//!   is left, so a timer that runs often costs a file read while nothing
//!   is due.
//! - [`keygen`] makes the device's key pair, its public JWK to register and
//!   a CSR for the mTLS path, never overwriting a key.
//! - [`fetch_jwks`] downloads `{domain}/.well-known/jwks.json` into the
//!   gateway's keys directory, so the gateway can verify the provider's
//!   RS256/ES256 tokens.
//!
//! Why keys rather than passwords: a device has no browser and often no
//! user at it. A password or a client secret stored on it can be copied
//! off and replayed from anywhere; a private key signs assertions that live
//! 60 seconds and name one token endpoint, and with mTLS the token itself
//! is useless without the key. Each device has its own key, so its own
//! identity (`sub`), and revoking one device is removing its key at the
//! provider. Where a technician is present at setup, the device code grant
//! needs no credential on the device at all until it is approved.
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
//! A file a job: `client_credentials` (the keyed grant), `device_code`
//! (RFC 8628's poll loop), `keygen`, `jwks` (the key set); below them
//! `login` (the password and refresh token grants, and the token endpoint
//! round trip, refusals and stored files every grant shares),
//! `device_key` (reading a key, signing assertions, its JWK) and `claims`
//! (what a token says: the warnings, and whether it is due). Below them,
//! what they share: `types` (what a caller hands in and gets back),
//! `secret`, `error`, `token_out` (where a token goes and how it is
//! verified first), `files` (the secrets a command reads, the atomic
//! writes) and `http` (including the client certificate). Each file imports only from files below it,
//! never from this one, which only re-exports: so each reads without the
//! rest.

// Files, the network and the command line feed all of this: what they
// send ends in an error naming the cause, never a panic. Tests are exempt
// through clippy.toml.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod claims;
mod client_credentials;
mod device_code;
mod device_key;
mod error;
mod files;
mod http;
mod jwks;
mod keygen;
mod login;
mod secret;
mod token_out;
mod types;

pub use client_credentials::{
    ClientCredentials, fetch_client_credentials, renew_client_credentials,
};
pub use device_code::{DeviceCodeGrant, UserCode, fetch_with_device_code};
pub use device_key::{ASSERTION_LIFETIME_SECS, DeviceKey};
pub use error::Error;
pub use files::SecretReader;
pub use http::{ClientCertFiles, Provider};
pub use jwks::fetch_jwks;
pub use keygen::{Generated, Keygen, keygen};
pub use login::{fetch_token, refresh_token};
pub use secret::{Secret, SecretFileError, SecretSource};
pub use token_out::{TokenOut, Verify};
pub use types::{
    Client, Fresh, JwksStored, PasswordGrant, RefreshFile, Refreshed, RenewWhen, Stored, Summary,
    TokenKind, Warning,
};
