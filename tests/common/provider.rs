//! A local stand-in for an OAuth 2 provider that checks what a real one
//! checks, for the grants with no shared secret on the device:
//!
//! - the client credentials grant with `private_key_jwt` (RFC 7523 §2.2):
//!   the assertion's signature by the public key registered for the client
//!   (and its `alg` and `kid`), `iss` = `sub` = the client id, `aud` = the
//!   token endpoint it was sent to, `exp` in the future and at most 5
//!   minutes away (Auth0's limit), a `jti` never seen before; any failure is
//!   `invalid_client`;
//! - the same grant over mTLS (RFC 8705 §2, `tls_client_auth`): a second
//!   listener that demands a client certificate from the test CA, checks
//!   its subject against the registration, and binds the token to it
//!   (`cnf.x5t#S256`);
//! - the device authorization grant (RFC 8628): codes, a scripted state
//!   machine (pending, slow_down, then approved, denied or expired), a
//!   client that polls sooner than the interval gets `slow_down` and is
//!   recorded as a violation;
//! - the refresh token grant, for `refresh` after the device code grant.
//!
//! Tokens are ES256 JWTs signed by the stand-in's own key, served at
//! `/.well-known/jwks.json`. Everything is real TLS (rustls, aws-lc-rs),
//! served from threads of the test process.

#![allow(dead_code)]

#[path = "request.rs"]
mod request;

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
};
use serde_json::{Value, json};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// The longest assertion lifetime accepted (Auth0's).
const MAX_ASSERTION_SECS: u64 = 300;
/// How much sooner than the interval a poll may come (scheduling jitter).
const POLL_TOLERANCE: Duration = Duration::from_millis(50);

/// What one device-code poll is answered while the script lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollAnswer {
    Pending,
    SlowDown,
}

/// How a device code ends once the script is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Approve,
    Deny,
    Expire,
    /// Never decided: the client must give up by itself at `expires_in`.
    Never,
}

#[derive(Debug, Clone)]
pub struct DeviceScript {
    pub interval: u64,
    pub expires_in: u64,
    pub answers: Vec<PollAnswer>,
    pub outcome: Outcome,
}

impl Default for DeviceScript {
    fn default() -> DeviceScript {
        DeviceScript {
            interval: 1,
            expires_in: 600,
            answers: Vec::new(),
            outcome: Outcome::Approve,
        }
    }
}

/// A client the stand-in knows.
#[derive(Clone, Default)]
pub struct Registration {
    /// The public key its assertions must verify with, its algorithm and
    /// kid (an assertion naming another kid is refused).
    pub key: Option<(DecodingKey, Algorithm, Option<String>)>,
    /// `tls_client_auth_subject_dn`, as the common name the certificate
    /// must carry.
    pub cert_subject: Option<String>,
    /// The grants enabled for it.
    pub grants: Vec<&'static str>,
    /// The topics its tokens grant.
    pub topics: Vec<String>,
}

/// A poll of the token endpoint with a device code.
#[derive(Debug, Clone)]
pub struct Poll {
    pub at: Instant,
    pub answer: String,
}

/// An assertion the stand-in accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub header: Header,
    pub claims: Value,
}

#[derive(Default)]
struct State {
    clients: HashMap<String, Registration>,
    jtis: HashSet<String>,
    devices: HashMap<String, DeviceState>,
    script: DeviceScript,
    refresh_tokens: HashMap<String, String>,
    /// 503 answers still to give to token requests.
    busy: u32,
    /// Every request: path, form, whether a client certificate came with it.
    pub requests: Vec<(String, HashMap<String, String>, bool)>,
    accepted: Vec<Accepted>,
    refusals: Vec<String>,
    polls: Vec<Poll>,
    violations: Vec<String>,
    issued: Vec<Value>,
    /// The subject common name of each client certificate issued, by DER.
    subjects: HashMap<Vec<u8>, String>,
}

struct DeviceState {
    client_id: String,
    scope: String,
    audience: Option<String>,
    interval: Duration,
    expires_at: Instant,
    last: Instant,
    answered: usize,
    done: bool,
}

pub struct StandIn {
    pub port: u16,
    pub mtls_port: u16,
    /// The CA of both listeners' server certificate (`--ca-file`).
    pub ca_file: PathBuf,
    client_ca: Issuer<'static, KeyPair>,
    signing: EncodingKey,
    jwk: Jwk,
    state: Arc<Mutex<State>>,
}

impl StandIn {
    pub fn start(dir: &Path) -> Arc<StandIn> {
        let tls = jwtgate::firstrun::write_dev_tls(&dir.join("provider-tls")).unwrap();
        let certs = rustls_pemfile::certs(&mut &std::fs::read(&tls.server_cert).unwrap()[..])
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut &std::fs::read(&tls.server_key).unwrap()[..])
            .unwrap()
            .unwrap();
        let crypto = Arc::new(rustls::crypto::aws_lc_rs::default_provider());

        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "device CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&crypto))
                .build()
                .unwrap();

        let server = |verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>| {
            let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&crypto))
                .with_safe_default_protocol_versions()
                .unwrap();
            let builder = match verifier {
                Some(verifier) => builder.with_client_cert_verifier(verifier),
                None => builder.with_no_client_auth(),
            };
            Arc::new(
                builder
                    .with_single_cert(certs.clone(), key.clone_key())
                    .unwrap(),
            )
        };
        let plain = server(None);
        let mtls = server(Some(verifier));

        let signing_pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let signing = EncodingKey::from_ec_der(signing_pair.serialized_der());
        let mut jwk = Jwk::from_encoding_key(&signing, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some("stand-in-1".into());

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mtls_listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stand_in = Arc::new(StandIn {
            port: listener.local_addr().unwrap().port(),
            mtls_port: mtls_listener.local_addr().unwrap().port(),
            ca_file: tls.ca_cert.clone().unwrap(),
            client_ca: Issuer::new(ca_params, ca_key),
            signing,
            jwk,
            state: Arc::new(Mutex::new(State::default())),
        });
        for (listener, config) in [(listener, plain), (mtls_listener, mtls)] {
            let stand_in = Arc::clone(&stand_in);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    let connection = rustls::ServerConnection::new(Arc::clone(&config)).unwrap();
                    let mut stream = rustls::StreamOwned::new(connection, stream);
                    // A failed handshake (no or a foreign client
                    // certificate) ends here; the client reports it.
                    let _ = stand_in.serve(&mut stream);
                }
            });
        }
        stand_in
    }

    pub fn domain(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.domain())
    }

    pub fn mtls_token_url(&self) -> String {
        format!("https://localhost:{}/oauth/token", self.mtls_port)
    }

    pub fn register(&self, client_id: &str, registration: Registration) {
        let mut state = self.state.lock().unwrap();
        state.clients.insert(client_id.to_owned(), registration);
    }

    pub fn script(&self, script: DeviceScript) {
        self.state.lock().unwrap().script = script;
    }

    pub fn busy(&self, answers: u32) {
        self.state.lock().unwrap().busy = answers;
    }

    /// Signs a CSR as the device CA, for client authentication.
    pub fn sign_csr(&self, csr_pem: &str) -> String {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).unwrap();
        csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cn = match csr.params.distinguished_name.get(&DnType::CommonName) {
            Some(rcgen::DnValue::Utf8String(cn)) => cn.clone(),
            other => format!("{other:?}"),
        };
        let cert = csr.signed_by(&self.client_ca).unwrap();
        let mut state = self.state.lock().unwrap();
        state.subjects.insert(cert.der().to_vec(), cn);
        cert.pem()
    }

    pub fn accepted(&self) -> Vec<Accepted> {
        self.state.lock().unwrap().accepted.clone()
    }

    pub fn refusals(&self) -> Vec<String> {
        self.state.lock().unwrap().refusals.clone()
    }

    pub fn polls(&self) -> Vec<Poll> {
        self.state.lock().unwrap().polls.clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.state.lock().unwrap().violations.clone()
    }

    pub fn issued(&self) -> Vec<Value> {
        self.state.lock().unwrap().issued.clone()
    }

    pub fn requests(&self) -> Vec<(String, HashMap<String, String>, bool)> {
        self.state.lock().unwrap().requests.clone()
    }

    /// The public key tokens verify with, as a JWK set.
    pub fn jwks(&self) -> Value {
        serde_json::to_value(JwkSet {
            keys: vec![self.jwk.clone()],
        })
        .unwrap()
    }

    /// Reads one request and answers it.
    fn serve(
        &self,
        stream: &mut rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>,
    ) -> Option<()> {
        let mut reader = BufReader::new(&mut *stream);
        let request::Request {
            method,
            path,
            headers,
            body,
        } = request::read(&mut reader)?;
        let cert = stream
            .conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| cert.clone().into_owned());
        let local_port = stream.sock.local_addr().ok()?.port();
        let form_type = headers
            .get("content-type")
            .is_some_and(|kind| kind.starts_with("application/x-www-form-urlencoded"));
        let form: HashMap<String, String> = if form_type {
            form_urlencoded::parse(&body).into_owned().collect()
        } else {
            // Auth0 takes JSON too, which the password and refresh token
            // grants send; the grants of RFC 7523 and 8628 must be forms.
            serde_json::from_slice::<HashMap<String, Value>>(&body)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(name, value)| Some((name, value.as_str()?.to_owned())))
                .collect()
        };
        let json_refresh = form
            .get("grant_type")
            .is_some_and(|grant| grant == "refresh_token");
        let (status, answer) = match (method.as_str(), path.as_str()) {
            ("GET", "/.well-known/jwks.json") => (200, self.jwks()),
            ("POST", _) if !form_type && !json_refresh => {
                error(400, "invalid_request", "not a form body")
            }
            ("POST", "/oauth/token") => {
                let endpoint = format!("https://localhost:{local_port}/oauth/token");
                self.token(&form, &endpoint, cert.as_ref())
            }
            ("POST", "/oauth/device/code") => self.device_code(&form),
            _ => error(404, "not_found", "no such endpoint"),
        };
        {
            let mut state = self.state.lock().unwrap();
            state.requests.push((path, form, cert.is_some()));
            if status >= 400 && status != 503 {
                let code = answer["error"].as_str().unwrap_or_default().to_owned();
                let why = answer["error_description"].as_str().unwrap_or_default();
                state.refusals.push(format!("{code}: {why}"));
            }
        }
        let body = answer.to_string();
        let response = format!(
            "HTTP/1.1 {status} Stand-in\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).ok()?;
        stream.flush().ok()?;
        stream.conn.send_close_notify();
        stream.flush().ok()
    }

    fn token(
        &self,
        form: &HashMap<String, String>,
        endpoint: &str,
        cert: Option<&CertificateDer<'static>>,
    ) -> (u16, Value) {
        let mut state = self.state.lock().unwrap();
        if state.busy > 0 {
            state.busy -= 1;
            return (503, json!({ "error": "temporarily_unavailable" }));
        }
        let field = |name: &str| form.get(name).map(String::as_str);
        match field("grant_type") {
            Some("client_credentials") => {
                let client_id = match authenticate(&mut state, form, endpoint, cert) {
                    Ok(client_id) => client_id,
                    Err(why) => return error(401, "invalid_client", &why),
                };
                if !state.clients[&client_id]
                    .grants
                    .contains(&"client_credentials")
                {
                    return error(
                        403,
                        "unauthorized_client",
                        "Grant type 'client_credentials' not allowed for the client.",
                    );
                }
                let claims = self.claims(
                    &state,
                    &client_id,
                    &format!("{client_id}@clients"),
                    field("audience"),
                    cert,
                );
                state.issued.push(claims.clone());
                (200, self.answer(&claims, None))
            }
            Some(DEVICE_GRANT) => self.poll(&mut state, form),
            Some("refresh_token") => {
                let refresh = field("refresh_token").unwrap_or_default();
                match state.refresh_tokens.get(refresh).cloned() {
                    Some(client_id) if field("client_id") == Some(&client_id) => {
                        let claims = self.claims(&state, &client_id, "device|1", None, None);
                        state.issued.push(claims.clone());
                        (200, self.answer(&claims, None))
                    }
                    _ => error(403, "invalid_grant", "Unknown or invalid refresh token."),
                }
            }
            _ => error(400, "unsupported_grant_type", "unknown grant_type"),
        }
    }

    fn device_code(&self, form: &HashMap<String, String>) -> (u16, Value) {
        let mut state = self.state.lock().unwrap();
        let Some(client_id) = form.get("client_id") else {
            return error(400, "invalid_request", "client_id missing");
        };
        let Some(client) = state.clients.get(client_id) else {
            return error(401, "invalid_client", "Unknown client.");
        };
        if !client.grants.contains(&DEVICE_GRANT) {
            return error(
                403,
                "unauthorized_client",
                "Grant type 'urn:ietf:params:oauth:grant-type:device_code' not allowed for the client.",
            );
        }
        let device_code = random();
        let user_code = "WDJB-MJHT";
        let script = state.script.clone();
        let now = Instant::now();
        state.devices.insert(
            device_code.clone(),
            DeviceState {
                client_id: client_id.clone(),
                scope: form.get("scope").cloned().unwrap_or_default(),
                audience: form.get("audience").cloned(),
                interval: Duration::from_secs(script.interval),
                expires_at: now + Duration::from_secs(script.expires_in),
                last: now,
                answered: 0,
                done: false,
            },
        );
        let activate = format!("{}/activate", self.domain());
        (
            200,
            json!({
                "device_code": device_code,
                "user_code": user_code,
                "verification_uri": activate,
                "verification_uri_complete": format!("{activate}?user_code={user_code}"),
                "expires_in": script.expires_in,
                "interval": script.interval,
            }),
        )
    }

    /// One poll of RFC 8628 §3.4, answered as §3.5 says.
    fn poll(&self, state: &mut State, form: &HashMap<String, String>) -> (u16, Value) {
        let now = Instant::now();
        let code = form.get("device_code").cloned().unwrap_or_default();
        let script = state.script.clone();
        let Some(device) = state.devices.get_mut(&code) else {
            return error(400, "invalid_grant", "Invalid or expired device code.");
        };
        if form.get("client_id") != Some(&device.client_id) || device.done {
            return error(400, "invalid_grant", "Invalid or expired device code.");
        }
        let since = now - device.last;
        device.last = now;
        let (status, answer, name) = if since + POLL_TOLERANCE < device.interval {
            let violation = format!(
                "polled {} ms after the last request; the interval is {} s",
                since.as_millis(),
                device.interval.as_secs()
            );
            device.interval += Duration::from_secs(5);
            state.violations.push(violation);
            slow_down()
        } else if now > device.expires_at {
            let (status, answer) = error(400, "expired_token", "The device code has expired.");
            (status, answer, "expired_token")
        } else if let Some(answer) = script.answers.get(device.answered) {
            device.answered += 1;
            match answer {
                PollAnswer::Pending => pending(),
                PollAnswer::SlowDown => {
                    device.interval += Duration::from_secs(5);
                    slow_down()
                }
            }
        } else {
            match script.outcome {
                Outcome::Never => pending(),
                Outcome::Deny => {
                    device.done = true;
                    let (status, answer) = error(403, "access_denied", "User denied access");
                    (status, answer, "access_denied")
                }
                Outcome::Expire => {
                    device.done = true;
                    let (status, answer) =
                        error(400, "expired_token", "The device code has expired.");
                    (status, answer, "expired_token")
                }
                Outcome::Approve => {
                    device.done = true;
                    let (client_id, scope, audience) = (
                        device.client_id.clone(),
                        device.scope.clone(),
                        device.audience.clone(),
                    );
                    let claims =
                        self.claims(state, &client_id, "device|1", audience.as_deref(), None);
                    let refresh = scope.split(' ').any(|s| s == "offline_access").then(|| {
                        let token = random();
                        state
                            .refresh_tokens
                            .insert(token.clone(), client_id.clone());
                        token
                    });
                    state.issued.push(claims.clone());
                    (200, self.answer(&claims, refresh.as_deref()), "approved")
                }
            }
        };
        state.polls.push(Poll {
            at: now,
            answer: name.to_owned(),
        });
        (status, answer)
    }

    fn claims(
        &self,
        state: &State,
        client_id: &str,
        sub: &str,
        audience: Option<&str>,
        cert: Option<&CertificateDer<'static>>,
    ) -> Value {
        let now = now();
        let mut claims = json!({
            "iss": format!("{}/", self.domain()),
            "sub": sub,
            "azp": client_id,
            "iat": now,
            "exp": now + 3600,
            "topics": state.clients[client_id].topics,
        });
        if let Some(audience) = audience {
            claims["aud"] = json!(audience);
        }
        if let Some(cert) = cert {
            // RFC 8705 §3.1: the token is bound to the certificate.
            claims["cnf"] = json!({ "x5t#S256": thumbprint(cert) });
        }
        claims
    }

    fn answer(&self, claims: &Value, refresh: Option<&str>) -> Value {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("stand-in-1".into());
        let token = jsonwebtoken::encode(&header, claims, &self.signing).unwrap();
        let mut answer = json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 3600,
        });
        if let Some(refresh) = refresh {
            answer["refresh_token"] = json!(refresh);
        }
        answer
    }
}

/// RFC 8705 §3.1: the base64url SHA-256 of the certificate's DER.
pub fn thumbprint(cert: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert);
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Authenticates the client of a client credentials request, as RFC 7523
/// §3 and RFC 8705 §2 say; the error is the `invalid_client` description.
fn authenticate(
    state: &mut State,
    form: &HashMap<String, String>,
    endpoint: &str,
    cert: Option<&CertificateDer<'static>>,
) -> Result<String, String> {
    let field = |name: &str| form.get(name).map(String::as_str);
    let Some(assertion) = field("client_assertion") else {
        let Some(cert) = cert else {
            return Err("no client authentication".into());
        };
        let client_id = field("client_id").ok_or("client_id missing")?;
        let registration = state.clients.get(client_id).ok_or("unknown client")?;
        let expected = registration
            .cert_subject
            .as_deref()
            .ok_or("the client does not use tls_client_auth")?;
        // The CA here is the stand-in's own, so it knows the subject of
        // every certificate it issued.
        let cn = state
            .subjects
            .get(cert.as_ref())
            .cloned()
            .unwrap_or_default();
        if cn != expected {
            return Err(format!(
                "certificate subject {cn:?} is not the registered one"
            ));
        }
        return Ok(client_id.to_owned());
    };
    if field("client_assertion_type") != Some(ASSERTION_TYPE) {
        return Err("unsupported client_assertion_type".into());
    }
    let unverified: Value = jsonwebtoken::dangerous::insecure_decode::<Value>(assertion)
        .map_err(|e| format!("not a JWT: {e}"))?
        .claims;
    let client_id = field("client_id")
        .or(unverified["iss"].as_str())
        .ok_or("no client id")?
        .to_owned();
    let registration = state.clients.get(&client_id).ok_or("unknown client")?;
    let (key, alg, kid) = registration
        .key
        .clone()
        .ok_or("no key registered for the client")?;
    let header = jsonwebtoken::decode_header(assertion).map_err(|e| e.to_string())?;
    if header.alg != alg {
        return Err(format!(
            "alg {:?} is not the registered {alg:?}",
            header.alg
        ));
    }
    if let (Some(sent), Some(registered)) = (&header.kid, &kid)
        && sent != registered
    {
        return Err(format!("kid {sent:?} is not registered"));
    }
    let mut validation = Validation::new(alg);
    validation.set_audience(&[endpoint]);
    validation.set_issuer(&[&client_id]);
    validation.sub = Some(client_id.clone());
    validation.leeway = 5;
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    let claims = jsonwebtoken::decode::<Value>(assertion, &key, &validation)
        .map_err(|e| format!("assertion refused: {e}"))?
        .claims;
    let exp = claims["exp"].as_u64().ok_or("exp is not a number")?;
    if exp > now() + MAX_ASSERTION_SECS {
        return Err("exp is too far in the future".into());
    }
    let jti = claims["jti"].as_str().ok_or("jti missing")?.to_owned();
    if !state.jtis.insert(jti) {
        return Err("jti already used".into());
    }
    state.accepted.push(Accepted { header, claims });
    Ok(client_id)
}

fn error(status: u16, code: &str, description: &str) -> (u16, Value) {
    (
        status,
        json!({ "error": code, "error_description": description }),
    )
}

fn pending() -> (u16, Value, &'static str) {
    let (status, answer) = error(
        403,
        "authorization_pending",
        "User has yet to authorize device code.",
    );
    (status, answer, "authorization_pending")
}

fn slow_down() -> (u16, Value, &'static str) {
    let (status, answer) = error(429, "slow_down", "You are polling faster than allowed.");
    (status, answer, "slow_down")
}

fn random() -> String {
    let mut bytes = [0_u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A registration for `public_pem` (ES256 or RS256) with `kid`.
pub fn key_registration(public_pem: &str, alg: Algorithm, kid: Option<&str>) -> Registration {
    let key = match alg {
        Algorithm::ES256 => DecodingKey::from_ec_pem(public_pem.as_bytes()).unwrap(),
        _ => DecodingKey::from_rsa_pem(public_pem.as_bytes()).unwrap(),
    };
    Registration {
        key: Some((key, alg, kid.map(str::to_owned))),
        grants: vec!["client_credentials", DEVICE_GRANT],
        topics: vec!["devices/thermostat-1a/#".to_owned()],
        ..Registration::default()
    }
}

pub fn private_key_der(pem: &str) -> PrivateKeyDer<'static> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .unwrap()
        .unwrap()
}
