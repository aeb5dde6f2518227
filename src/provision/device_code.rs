//! The device authorization grant (RFC 8628), for a device with a
//! technician beside it: the device asks for a code, the technician
//! approves it in a browser elsewhere, and the device polls the token
//! endpoint until then, at the pace the provider sets.

use std::time::{Duration, Instant};

use serde::Deserialize;

use super::error::Error;
use super::files::check_out_dir;
use super::http::{Answer, Endpoint, Provider};
use super::login::{Grant, OAuthError, TokenAnswer, refused, store};
use super::secret::Secret;
use super::token_out::TokenOut;
use super::types::{Client, Stored};

const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The wait between polls when the provider names none (RFC 8628 §3.2).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest wait honoured, whatever the provider says: an interval of 0
/// would poll in a tight loop.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// What `slow_down` adds to the interval, for that poll and every later one
/// (RFC 8628 §3.5).
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// What [`fetch_with_device_code`] asks for.
#[derive(Debug)]
pub struct DeviceCodeGrant {
    pub client: Client,
    pub audience: Option<String>,
    /// E.g. `openid offline_access`: `offline_access` asks for a refresh
    /// token, so that `refresh` can renew without the technician.
    pub scope: Option<String>,
}

/// What the technician is to do, from the provider's answer (control
/// characters replaced: it goes to a terminal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCode {
    pub verification_uri: String,
    /// The URI with the code in it, when the provider gives one (for a QR
    /// code, or a click).
    pub verification_uri_complete: Option<String>,
    pub user_code: String,
    /// How long the code stays good.
    pub expires_in: Duration,
}

/// Time as the poll loop sees it, so that tests need not wait.
pub(super) trait Clock {
    fn now(&self) -> Instant;
    fn sleep(&self, duration: Duration);
}

struct RealClock;

impl Clock for RealClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// Asks the provider for a device code, hands `show` what the technician
/// is to do, polls until the code is approved, denied or expired, and
/// stores the token like [`fetch_token`](super::fetch_token) does.
pub fn fetch_with_device_code(
    provider: &Provider,
    grant: &DeviceCodeGrant,
    out: &TokenOut,
    show: &mut dyn FnMut(&UserCode),
) -> Result<Stored, Error> {
    fetch_on(provider, grant, out, show, &RealClock)
}

fn fetch_on(
    provider: &Provider,
    grant: &DeviceCodeGrant,
    out: &TokenOut,
    show: &mut dyn FnMut(&UserCode),
    clock: &dyn Clock,
) -> Result<Stored, Error> {
    check_out_dir(&out.path)?;
    let request = Grant::DeviceCode {
        client_id: &grant.client.id,
    };
    let client_secret = grant.client.secret.as_ref().map(Secret::expose);
    let form = || {
        let mut pairs = vec![("client_id", grant.client.id.clone())];
        if let Some(secret) = client_secret {
            pairs.push(("client_secret", secret.to_owned()));
        }
        if let Some(scope) = &grant.scope {
            pairs.push(("scope", scope.clone()));
        }
        if let Some(audience) = &grant.audience {
            pairs.push(("audience", audience.clone()));
        }
        Ok(pairs)
    };
    let answer = provider.send(&Endpoint::DeviceCode(&form))?;
    let authorization = Authorization::parse(&answer, &request)?;
    show(&authorization.user_code);
    let started = clock.now();
    let poll_form = || {
        let mut pairs = vec![
            ("grant_type", DEVICE_CODE_GRANT.to_owned()),
            ("device_code", authorization.device_code.clone()),
            ("client_id", grant.client.id.clone()),
        ];
        if let Some(secret) = client_secret {
            pairs.push(("client_secret", secret.to_owned()));
        }
        Ok(pairs)
    };
    let tokens = poll(
        clock,
        started,
        authorization.interval,
        authorization.user_code.expires_in,
        || {
            let answer = provider.send(&Endpoint::TokenForm(&poll_form))?;
            Poll::read(&answer, &request, out)
        },
    )?;
    store(tokens, out, &request)
}

/// The provider's answer to the device authorization request (RFC 8628
/// §3.2).
struct Authorization {
    device_code: String,
    user_code: UserCode,
    interval: Duration,
}

impl Authorization {
    fn parse(answer: &Answer, grant: &Grant<'_>) -> Result<Authorization, Error> {
        #[derive(Deserialize)]
        struct Fields {
            device_code: Option<String>,
            user_code: Option<String>,
            verification_uri: Option<String>,
            verification_uri_complete: Option<String>,
            expires_in: Option<u64>,
            interval: Option<u64>,
        }
        if !answer.is_success() {
            return Err(refused(answer, Some(grant)));
        }
        let fields: Fields =
            serde_json::from_slice(&answer.body).map_err(|_| answer.unexpected())?;
        let missing = |field| Error::MissingToken {
            url: answer.url.clone(),
            field,
            present: "see the provider's documentation of RFC 8628 §3.2".to_owned(),
        };
        let device_code = fields
            .device_code
            .filter(|code| !code.is_empty())
            .ok_or_else(|| missing("device_code"))?;
        let user_code = fields
            .user_code
            .filter(|code| !code.is_empty())
            .ok_or_else(|| missing("user_code"))?;
        let verification_uri = fields
            .verification_uri
            .ok_or_else(|| missing("verification_uri"))?;
        let expires_in = fields.expires_in.ok_or_else(|| missing("expires_in"))?;
        Ok(Authorization {
            device_code,
            user_code: UserCode {
                verification_uri: printable(&verification_uri),
                verification_uri_complete: fields
                    .verification_uri_complete
                    .as_deref()
                    .map(printable),
                user_code: printable(&user_code),
                expires_in: Duration::from_secs(expires_in),
            },
            interval: fields
                .interval
                .map_or(DEFAULT_INTERVAL, Duration::from_secs),
        })
    }
}

fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// What one poll of the token endpoint said.
pub(super) enum Poll<T> {
    Approved(T),
    /// `authorization_pending`: not yet.
    Pending,
    /// `slow_down`: not yet, and poll less often.
    SlowDown,
}

impl Poll<TokenAnswer> {
    fn read(answer: &Answer, grant: &Grant<'_>, out: &TokenOut) -> Result<Self, Error> {
        if answer.is_success() {
            return TokenAnswer::parse(answer, grant, out.kind).map(Poll::Approved);
        }
        match serde_json::from_slice::<OAuthError>(&answer.body) {
            Ok(oauth) if oauth.error == "authorization_pending" => Ok(Poll::Pending),
            Ok(oauth) if oauth.error == "slow_down" => Ok(Poll::SlowDown),
            _ => Err(refused(answer, Some(grant))),
        }
    }
}

/// Polls with `ask` every `interval` (at least [`MIN_INTERVAL`], longer
/// after each `slow_down`, twice as long after each poll the network
/// failed) until it is approved or a refusal ends it, and
/// gives up once the next poll would come after the code expires,
/// `expires_in` after `started`.
pub(super) fn poll<T>(
    clock: &dyn Clock,
    started: Instant,
    interval: Duration,
    expires_in: Duration,
    mut ask: impl FnMut() -> Result<Poll<T>, Error>,
) -> Result<T, Error> {
    let deadline = started + expires_in;
    let mut interval = interval.max(MIN_INTERVAL);
    loop {
        if clock.now() + interval > deadline {
            return Err(Error::DeviceCodeExpired {
                description: format!(
                    "it was good for {} s, and the provider's answer is still pending",
                    expires_in.as_secs()
                ),
            });
        }
        clock.sleep(interval);
        match ask() {
            Ok(Poll::Approved(tokens)) => return Ok(tokens),
            Ok(Poll::Pending) => {}
            // A network that drops for a moment should not cost the user
            // the code they are typing in; polling less often while it is
            // down is what RFC 8628 §3.5 asks.
            Err(e @ (Error::Unreachable { .. } | Error::Timeout { .. })) => {
                interval *= 2;
                tracing::warn!(
                    error = %e,
                    "the provider could not be asked; trying again in {} s",
                    interval.as_secs()
                );
            }
            Err(e) => return Err(e),
            Ok(Poll::SlowDown) => {
                interval += SLOW_DOWN_STEP;
                tracing::info!(
                    "the provider asked to poll less often; polling every {} s",
                    interval.as_secs()
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
