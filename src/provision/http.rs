//! The one way provisioning talks to the provider: HTTPS (plain HTTP only
//! on loopback), timeouts, bounded retries when the provider is busy, and
//! the TLS client certificate of RFC 8705 when the device has one.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use ureq::Agent;
use ureq::http::{Response, Uri};
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig};

use super::error::Error;

const TOKEN_PATH: &str = "/oauth/token";
const DEVICE_CODE_PATH: &str = "/oauth/device/code";
const JWKS_PATH: &str = "/.well-known/jwks.json";

/// Tries per request when the provider answers 429 or 5xx.
const ATTEMPTS: u32 = 4;
/// The wait before the first retry, doubled for each further one unless
/// the provider sends `Retry-After`.
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// No wait is longer, whatever `Retry-After` says: this runs in setup
/// scripts and timers, not in a queue.
const MAX_WAIT: Duration = Duration::from_secs(30);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Larger than any token answer or key set (the gateway's key loader has
/// the same limit).
const MAX_ANSWER_BYTES: u64 = crate::keys::MAX_KEY_FILE_BYTES;
/// How much of an unexpected body an error shows.
const SNIPPET_BYTES: usize = 160;

const USER_AGENT: &str = concat!("jwtgate-provision/", env!("CARGO_PKG_VERSION"));

/// The identity provider (an Auth0 tenant, or anything with the same
/// endpoints), reached over HTTPS.
#[derive(Debug)]
pub struct Provider {
    /// Scheme, authority and any path prefix, without a trailing `/`.
    base: String,
    /// `{base}/oauth/token`, or the mTLS endpoint given with a client
    /// certificate.
    token_url: String,
    agent: Agent,
    roots: Arc<Vec<Certificate<'static>>>,
    loopback: bool,
    mtls: bool,
}

/// The device's TLS client certificate (RFC 8705 §2): the provider
/// authenticates the device by it and binds the tokens it issues to it.
#[derive(Debug, Clone)]
pub struct ClientCertFiles {
    /// PEM: the device's certificate, then any intermediates.
    pub cert: PathBuf,
    /// PEM: its private key.
    pub key: PathBuf,
    /// The token endpoint that asks for client certificates (Auth0: on an
    /// mTLS custom domain); `None` for `{domain}/oauth/token`.
    pub endpoint: Option<String>,
}

/// A form body, built anew for each attempt: a client assertion's `jti`
/// may be used once only, so a retry must carry a fresh one.
pub(super) type FormBody<'a> = &'a dyn Fn() -> Result<Vec<(&'static str, String)>, Error>;

/// The JSON body of a token request; absent members are left out.
#[derive(Serialize, Default)]
pub(super) struct TokenRequest<'a> {
    pub(super) grant_type: &'a str,
    pub(super) client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) client_secret: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) password: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) realm: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) audience: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) scope: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) refresh_token: Option<&'a str>,
}

/// A request to one of the provider's two endpoints.
pub(super) enum Endpoint<'a> {
    /// `POST /oauth/token`.
    Token {
        body: &'a TokenRequest<'a>,
        forwarded_for: Option<IpAddr>,
    },
    /// `POST` to the token endpoint, form-encoded (RFC 6749 §4.4.2, RFC 8628
    /// §3.4): the grants added after the password grant.
    TokenForm(FormBody<'a>),
    /// `POST /oauth/device/code` (RFC 8628 §3.1).
    DeviceCode(FormBody<'a>),
    /// `GET /.well-known/jwks.json`.
    Jwks,
}

/// The provider's final answer to a request.
pub(super) struct Answer {
    pub url: String,
    pub status: u16,
    pub body: Vec<u8>,
    /// Set when the answer is still a 429 or 5xx after every attempt.
    pub gave_up_after: Option<u32>,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn unexpected(&self) -> Error {
        Error::UnexpectedAnswer {
            url: self.url.clone(),
            status: self.status,
            snippet: self.snippet(),
        }
    }

    /// The first bytes of the body, quoted, for an error message.
    pub fn snippet(&self) -> String {
        if self.body.is_empty() {
            return "(empty)".to_owned();
        }
        let head = &self.body[..self.body.len().min(SNIPPET_BYTES)];
        let ellipsis = if head.len() < self.body.len() {
            "..."
        } else {
            ""
        };
        format!("{:?}{ellipsis}", String::from_utf8_lossy(head))
    }
}

impl Provider {
    /// Checks `domain` (refusing plain HTTP except on loopback; a bare host
    /// name means `https://`) and sets up the client, trusting the Mozilla
    /// roots and the certificates of `ca_file`. Nothing is sent yet.
    pub fn new(domain: &str, ca_file: Option<&Path>) -> Result<Provider, Error> {
        let (base, loopback) = parse_domain(domain)?;
        let mut roots: Vec<Certificate<'static>> = webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .map(|der| Certificate::from_der(der))
            .collect();
        if let Some(path) = ca_file {
            roots.extend(read_ca_file(path)?);
        }
        let roots = Arc::new(roots);
        Ok(Provider {
            token_url: format!("{base}{TOKEN_PATH}"),
            base,
            agent: agent(&roots, None, loopback),
            roots,
            loopback,
            mtls: false,
        })
    }

    /// The same provider, reached with the device's client certificate: its
    /// token requests go to `files.endpoint` (an `https://` URL) when given.
    /// Nothing is sent yet.
    pub fn with_client_cert(self, files: &ClientCertFiles) -> Result<Provider, Error> {
        let cert = read_client_cert(files)?;
        let (token_url, loopback) = match &files.endpoint {
            Some(url) => parse_mtls_endpoint(url)?,
            None if self.token_url.starts_with("https://") => (self.token_url, self.loopback),
            None => {
                return Err(Error::MtlsEndpoint {
                    url: self.token_url,
                    reason: "a client certificate needs https:// (give --mtls-endpoint)",
                });
            }
        };
        Ok(Provider {
            agent: agent(&self.roots, Some(cert), loopback),
            token_url,
            mtls: true,
            ..self
        })
    }

    /// Where token requests go: what a client assertion's `aud` names by
    /// default.
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// Whether the device authenticates with its TLS client certificate.
    pub fn has_client_cert(&self) -> bool {
        self.mtls
    }

    /// Sends `endpoint` until it gets an answer that is not 429 or 5xx, at
    /// most [`ATTEMPTS`] times. Transport failures (unreachable, TLS,
    /// timeout) are errors at once: retrying them would only delay the
    /// message.
    pub(super) fn send(&self, endpoint: &Endpoint<'_>) -> Result<Answer, Error> {
        let url = match endpoint {
            Endpoint::Token { .. } | Endpoint::TokenForm(_) => self.token_url.clone(),
            Endpoint::DeviceCode(_) => format!("{}{DEVICE_CODE_PATH}", self.base),
            Endpoint::Jwks => format!("{}{JWKS_PATH}", self.base),
        };
        let mut attempt = 1;
        loop {
            let response = self
                .send_once(&url, endpoint)?
                .map_err(|error| match error {
                    // A TLS 1.3 server refuses a client certificate after
                    // the client thinks the handshake is over: the request
                    // then meets a closed connection, not an alert.
                    ureq::Error::Io(error) if self.mtls && is_closed(&error) => {
                        Error::ClientCertClosed {
                            url: url.clone(),
                            reason: error.to_string(),
                        }
                    }
                    error => transport_error(&url, error),
                })?;
            let retry_after = retry_after(&response);
            let mut answer = read_answer(url.clone(), response)?;
            if !is_busy(&answer) {
                return Ok(answer);
            }
            if attempt == ATTEMPTS {
                answer.gave_up_after = Some(attempt);
                return Ok(answer);
            }
            let wait = backoff(attempt, retry_after);
            tracing::warn!(
                "{url} answered HTTP {}; retrying in {} s (attempt {} of {ATTEMPTS})",
                answer.status,
                wait.as_secs_f32(),
                attempt + 1,
            );
            std::thread::sleep(wait);
            attempt += 1;
        }
    }

    /// One attempt; the outer error is building the body, the inner one
    /// the transport's.
    #[allow(clippy::type_complexity)]
    fn send_once(
        &self,
        url: &str,
        endpoint: &Endpoint<'_>,
    ) -> Result<Result<Response<ureq::Body>, ureq::Error>, Error> {
        Ok(match endpoint {
            Endpoint::Token {
                body,
                forwarded_for,
            } => {
                let mut request = self.agent.post(url).header("accept", "application/json");
                if let Some(ip) = forwarded_for {
                    request = request.header("auth0-forwarded-for", ip.to_string());
                }
                request.send_json(body)
            }
            Endpoint::TokenForm(form) | Endpoint::DeviceCode(form) => {
                let pairs = form()?;
                self.agent
                    .post(url)
                    .header("accept", "application/json")
                    .send_form(pairs.iter().map(|(name, value)| (*name, value.as_str())))
            }
            Endpoint::Jwks => self
                .agent
                .get(url)
                .header("accept", "application/json")
                .call(),
        })
    }
}

/// The HTTP client: the given roots, aws-lc-rs, the device's certificate
/// when it has one, no redirects, timeouts.
fn agent(
    roots: &Arc<Vec<Certificate<'static>>>,
    client_cert: Option<ClientCert>,
    loopback: bool,
) -> Agent {
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::clone(roots)))
        .client_cert(client_cert)
        .unversioned_rustls_crypto_provider(Arc::new(aws_lc_rs::default_provider()))
        .build();
    let mut config = Agent::config_builder()
        .http_status_as_error(false)
        // A redirect of a POST carrying a password is not followed
        // anywhere; it is reported as the unexpected answer it is.
        .max_redirects(0)
        .max_redirects_will_error(false)
        .timeout_resolve(Some(CONNECT_TIMEOUT))
        .timeout_connect(Some(CONNECT_TIMEOUT))
        .timeout_recv_response(Some(READ_TIMEOUT))
        .timeout_recv_body(Some(READ_TIMEOUT))
        .user_agent(USER_AGENT)
        .tls_config(tls);
    if loopback {
        // A proxy from the environment cannot reach this machine's
        // loopback interface.
        config = config.proxy(None);
    }
    config.build().new_agent()
}

/// Splits `--domain` into the base URL requests are made under and whether
/// it is a loopback address.
fn parse_domain(domain: &str) -> Result<(String, bool), Error> {
    let bad = |reason| Error::BadDomain {
        domain: domain.to_owned(),
        reason,
    };
    let trimmed = domain.trim();
    let url = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("https://{trimmed}")
    };
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    let Some(authority) = uri.authority() else {
        return Err(bad("no host name"));
    };
    if authority.as_str().contains('@') {
        return Err(bad("credentials do not belong in the URL"));
    }
    if uri.query().is_some() {
        return Err(bad("a query does not belong in the URL"));
    }
    let loopback = is_loopback(authority.host());
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if loopback => {}
        Some("http") => {
            return Err(Error::NotHttps {
                domain: domain.to_owned(),
            });
        }
        _ => return Err(bad("the scheme must be https://")),
    }
    let path = uri.path().trim_end_matches('/');
    Ok((
        format!(
            "{}://{authority}{path}",
            uri.scheme_str().unwrap_or("https")
        ),
        loopback,
    ))
}

fn is_loopback(host: &str) -> bool {
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks `--mtls-endpoint`: a whole URL, over `https://` (a client
/// certificate means TLS), without credentials or query.
fn parse_mtls_endpoint(url: &str) -> Result<(String, bool), Error> {
    let bad = |reason| Error::MtlsEndpoint {
        url: url.to_owned(),
        reason,
    };
    let uri: Uri = url.trim().parse().map_err(|_| bad("not a URL"))?;
    let Some(authority) = uri.authority() else {
        return Err(bad("no host name"));
    };
    if uri.scheme_str() != Some("https") {
        return Err(bad("a client certificate needs https://"));
    }
    if authority.as_str().contains('@') {
        return Err(bad("credentials do not belong in the URL"));
    }
    if uri.query().is_some() {
        return Err(bad("a query does not belong in the URL"));
    }
    Ok((
        format!("https://{authority}{}", uri.path()),
        is_loopback(authority.host()),
    ))
}

/// The device's certificate chain and key for the TLS handshake.
fn read_client_cert(files: &ClientCertFiles) -> Result<ClientCert, Error> {
    let failed = |flag, path: &Path, reason: String| Error::ClientCert {
        flag,
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(&files.cert)
        .map_err(|error| failed("--mtls-cert", &files.cert, error.to_string()))?;
    let chain = rustls_pemfile::certs(&mut pem.as_slice())
        .map(|cert| cert.map(|der| Certificate::from_der(&der).to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| failed("--mtls-cert", &files.cert, error.to_string()))?;
    if chain.is_empty() {
        return Err(failed(
            "--mtls-cert",
            &files.cert,
            "it holds no PEM certificate".to_owned(),
        ));
    }
    let pem = std::fs::read(&files.key)
        .map_err(|error| failed("--mtls-key", &files.key, error.to_string()))?;
    let key = PrivateKey::from_pem(&pem)
        .map_err(|error| failed("--mtls-key", &files.key, error.to_string()))?;
    Ok(ClientCert::new_with_certs(&chain, key))
}

fn read_ca_file(path: &Path) -> Result<Vec<Certificate<'static>>, Error> {
    let failed = |source| Error::CaFile {
        path: path.to_path_buf(),
        source,
    };
    let pem = std::fs::read(path).map_err(failed)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .map(|cert| cert.map(|der| Certificate::from_der(&der).to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(failed)?;
    if certs.is_empty() {
        return Err(Error::CaFileEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_answer(url: String, mut response: Response<ureq::Body>) -> Result<Answer, Error> {
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER_BYTES)
        .read_to_vec()
        .map_err(|error| transport_error(&url, error))?;
    Ok(Answer {
        url,
        status,
        body,
        gave_up_after: None,
    })
}

/// 429 and 5xx say "later", except Auth0's 429 `too_many_attempts`, which
/// blocks an account after failed logins: retrying it only adds failures;
/// and its 429 `slow_down` to a device code poll, which the poll loop
/// answers by waiting longer (RFC 8628 §3.5), not sooner.
fn is_busy(answer: &Answer) -> bool {
    #[derive(serde::Deserialize)]
    struct Code {
        error: String,
    }
    match answer.status {
        500..=599 => true,
        429 => serde_json::from_slice::<Code>(&answer.body).map_or(true, |code| {
            code.error != "too_many_attempts" && code.error != "slow_down"
        }),
        _ => false,
    }
}

/// `Retry-After` in seconds; the HTTP-date form is rare on APIs and falls
/// back to the backoff.
fn retry_after(response: &Response<ureq::Body>) -> Option<Duration> {
    let value = response.headers().get("retry-after")?.to_str().ok()?;
    value.trim().parse().ok().map(Duration::from_secs)
}

/// The wait after failed attempt `attempt` (from 1).
fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    retry_after
        .unwrap_or_else(|| FIRST_WAIT.saturating_mul(1 << (attempt - 1).min(16)))
        .min(MAX_WAIT)
}

fn transport_error(url: &str, error: ureq::Error) -> Error {
    let url = url.to_owned();
    match error {
        ureq::Error::Timeout(what) => Error::Timeout {
            url,
            what: what.to_string(),
        },
        ureq::Error::BodyExceedsLimit(limit) => Error::TooLarge { url, limit },
        ureq::Error::Tls(reason) => Error::Tls {
            url,
            reason: reason.to_owned(),
        },
        ureq::Error::Rustls(error) => Error::Tls {
            url,
            reason: error.to_string(),
        },
        // rustls reports handshake failures through the socket's I/O.
        ureq::Error::Io(error) if is_tls(&error) => Error::Tls {
            url,
            reason: error.to_string(),
        },
        ureq::Error::Io(error) => Error::Unreachable {
            url,
            reason: error.to_string(),
        },
        ureq::Error::HostNotFound => Error::Unreachable {
            url,
            reason: "host not found".to_owned(),
        },
        other => Error::Unreachable {
            url,
            reason: other.to_string(),
        },
    }
}

fn is_closed(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    matches!(
        error.kind(),
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof
    )
}

fn is_tls(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<tokio_rustls::rustls::Error>())
}

#[cfg(test)]
mod tests;
