//! `jwtgate-provision`, the real binary, against a fake identity provider
//! served from this test process, and finally against the real gateway.
//!
//! [`FakeProvider`] is a small HTTP/1.1 server on `127.0.0.1:0` (plain, or
//! TLS with the development CA) that answers every request with the next
//! scripted [`Reply`] (the last one repeats) and records what it got, so a
//! test can assert the JSON body and headers the binary sent.

#[path = "common/request.rs"]
mod request;

use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwtgate::config::Config;
use jwtgate::firstrun;
use jwtgate::gateway::Gateway;
use jwtgate::keys::KeyStore;
use jwtgate::token::{self, MintClaims};
use serde_json::{Value, json};
use tokio_rustls::rustls;

const BIN: &str = env!("CARGO_BIN_EXE_jwtgate-provision");
const PASSWORD: &str = "correct horse battery staple";
const CLIENT_SECRET: &str = "client-secret-0123";

// ---------------------------------------------------------------------------
// The fake provider
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply::raw(status, &body.to_string())
    }

    fn raw(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
        }
    }

    fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_owned()));
        self
    }

    fn tokens(tokens: Value) -> Reply {
        let mut body = json!({ "token_type": "Bearer", "expires_in": 86400 });
        for (field, value) in tokens.as_object().unwrap() {
            body[field] = value.clone();
        }
        Reply::json(200, body)
    }

    fn oauth_error(status: u16, error: &str, description: &str) -> Reply {
        Reply::json(
            status,
            json!({ "error": error, "error_description": description }),
        )
    }
}

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    /// Lower-cased names.
    headers: HashMap<String, String>,
    body: String,
    at: Instant,
}

impl Recorded {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("the request body is JSON")
    }
}

struct FakeProvider {
    addr: SocketAddr,
    tls: bool,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl FakeProvider {
    /// Plain HTTP: allowed by the binary on loopback only.
    fn start(replies: Vec<Reply>) -> FakeProvider {
        FakeProvider::serve(replies, None)
    }

    /// HTTPS with a certificate for `localhost` from a development CA; the
    /// CA is at `tls_dir/ca.crt`.
    fn start_tls(replies: Vec<Reply>, tls_dir: &Path) -> FakeProvider {
        let tls = firstrun::write_dev_tls(tls_dir).unwrap();
        let certs = rustls_pemfile::certs(&mut &std::fs::read(&tls.server_cert).unwrap()[..])
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pemfile::private_key(&mut &std::fs::read(&tls.server_key).unwrap()[..])
            .unwrap()
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        FakeProvider::serve(replies, Some(Arc::new(config)))
    }

    fn serve(replies: Vec<Reply>, tls: Option<Arc<rustls::ServerConfig>>) -> FakeProvider {
        assert!(!replies.is_empty());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&requests);
        let is_tls = tls.is_some();
        std::thread::spawn(move || {
            for (count, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { continue };
                // The last reply repeats forever.
                let reply = &replies[count.min(replies.len() - 1)];
                match &tls {
                    None => {
                        exchange(stream, reply, &recorded);
                    }
                    Some(config) => {
                        let connection = rustls::ServerConnection::new(Arc::clone(config)).unwrap();
                        let stream = rustls::StreamOwned::new(connection, stream);
                        exchange(stream, reply, &recorded);
                    }
                }
            }
        });
        FakeProvider {
            addr,
            tls: is_tls,
            requests,
        }
    }

    fn domain(&self) -> String {
        if self.tls {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://127.0.0.1:{}", self.addr.port())
        }
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

/// Reads one request, records it and answers it; `None` when the client
/// gave up (a failed TLS handshake). The request is recorded before the
/// answer goes out, so it is there by the time the binary exits.
fn exchange(
    stream: impl Read + Write,
    reply: &Reply,
    recorded: &Mutex<Vec<Recorded>>,
) -> Option<()> {
    let mut reader = BufReader::new(stream);
    let request::Request {
        method,
        path,
        headers,
        body,
    } = request::read(&mut reader)?;
    recorded.lock().unwrap().push(Recorded {
        method,
        path,
        headers,
        body: String::from_utf8(body).unwrap(),
        at: Instant::now(),
    });

    let mut response = format!(
        "HTTP/1.1 {} Scripted\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str("\r\n");
    response.push_str(&reply.body);
    let stream = reader.get_mut();
    stream.write_all(response.as_bytes()).ok()?;
    stream.flush().ok()
}

// ---------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> &Run {
        assert_eq!(self.code, Some(0), "expected success; {self:?}");
        self
    }

    /// Asserts a failure whose stderr contains every one of `causes`.
    fn fails_with(&self, causes: &[&str]) -> &Run {
        assert_eq!(self.code, Some(1), "expected failure; {self:?}");
        for cause in causes {
            assert!(
                self.stderr.contains(cause),
                "stderr lacks {cause:?}; {self:?}"
            );
        }
        self
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn provision(args: &[String], stdin: Option<&str>) -> Run {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    Run {
        code: status.code(),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|arg| (*arg).to_owned()).collect()
}

fn path_arg(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

/// A device's working directory: the password file, and where its token
/// goes.
struct Device {
    dir: tempfile::TempDir,
}

impl Device {
    fn new() -> Device {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("password"), format!("{PASSWORD}\n")).unwrap();
        std::fs::write(dir.path().join("client-secret"), CLIENT_SECRET).unwrap();
        Device { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn token_path(&self) -> PathBuf {
        self.path("device.jwt")
    }

    fn refresh_path(&self) -> PathBuf {
        self.path("device.jwt.refresh")
    }

    /// `token` with the required arguments; more can be pushed.
    fn token_args(&self, provider: &FakeProvider) -> Vec<String> {
        let mut list = args(&[
            "token",
            "--domain",
            &provider.domain(),
            "--client-id",
            "app-1",
            "--username",
            "thermostat-1a",
        ]);
        list.extend(["--password-file".into(), path_arg(&self.path("password"))]);
        list.extend(["--out".into(), path_arg(&self.token_path())]);
        list
    }

    fn refresh_args(&self, provider: &FakeProvider) -> Vec<String> {
        let mut list = args(&[
            "refresh",
            "--domain",
            &provider.domain(),
            "--client-id",
            "app-1",
        ]);
        list.extend(["--out".into(), path_arg(&self.token_path())]);
        list
    }

    fn read(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.path(name)).ok()
    }

    /// The names in the directory, sorted: shows leftover temporary files.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An unsigned-looking JWT with these claims (the binary does not check
/// signatures unless told to).
fn jwt(claims: &Value) -> String {
    let part = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
    format!(
        "{}.{}.{}",
        part(&json!({ "alg": "HS256", "typ": "JWT" })),
        part(claims),
        URL_SAFE_NO_PAD.encode(b"not a real signature")
    )
}

fn device_jwt(ttl: u64) -> String {
    jwt(&json!({
        "sub": "auth0|thermostat-1a",
        "exp": now() + ttl,
        "topics": ["devices/thermostat-1a/#"],
    }))
}

// ---------------------------------------------------------------------------
// token
// ---------------------------------------------------------------------------

#[test]
fn token_stores_access_and_refresh_tokens_with_mode_0600() {
    let access = device_jwt(3600);
    let provider = FakeProvider::start(vec![Reply::tokens(
        json!({ "access_token": access, "refresh_token": "refresh-1" }),
    )]);
    let device = Device::new();
    let mut list = device.token_args(&provider);
    list.extend(args(&[
        "--audience",
        "https://mqtt.example/",
        "--scope",
        "openid offline_access",
        "--forwarded-for",
        "203.0.113.7",
    ]));
    list.extend([
        "--client-secret-file".into(),
        path_arg(&device.path("client-secret")),
    ]);
    let run = provision(&list, None);
    run.ok();
    assert!(run.stdout.contains("wrote the access token"), "{run:?}");
    assert!(
        run.stdout.contains("expires in 59m") || run.stdout.contains("expires in 1h"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("warning"), "{run:?}");

    assert_eq!(device.read("device.jwt").unwrap(), access);
    assert_eq!(device.read("device.jwt.refresh").unwrap(), "refresh-1");
    assert_eq!(mode(&device.token_path()), 0o600);
    assert_eq!(mode(&device.refresh_path()), 0o600);
    assert_eq!(
        device.names(),
        [
            "client-secret",
            "device.jwt",
            "device.jwt.refresh",
            "password"
        ]
    );

    let requests = provider.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/oauth/token")
    );
    assert!(request.headers["content-type"].starts_with("application/json"));
    assert_eq!(request.headers["auth0-forwarded-for"], "203.0.113.7");
    assert_eq!(
        request.json(),
        json!({
            "grant_type": "password",
            "client_id": "app-1",
            "client_secret": CLIENT_SECRET,
            "username": "thermostat-1a",
            "password": PASSWORD,
            "audience": "https://mqtt.example/",
            "scope": "openid offline_access",
        })
    );
}

#[test]
fn token_with_realm_stores_the_id_token_and_reads_the_password_from_stdin() {
    let id = device_jwt(3600);
    let provider = FakeProvider::start(vec![Reply::tokens(
        json!({ "access_token": "opaque-access", "id_token": id }),
    )]);
    let device = Device::new();
    let mut list = device.token_args(&provider);
    let at = list
        .iter()
        .position(|arg| arg == "--password-file")
        .unwrap();
    list[at + 1] = "-".into();
    list.extend(args(&["--realm", "Thermostats", "--id-token"]));
    provision(&list, Some("from-stdin\n")).ok();

    assert_eq!(device.read("device.jwt").unwrap(), id);
    let body = provider.requests()[0].json();
    assert_eq!(
        body["grant_type"],
        "http://auth0.com/oauth/grant-type/password-realm"
    );
    assert_eq!(body["realm"], "Thermostats");
    assert_eq!(body["password"], "from-stdin");
    assert!(body.get("client_secret").is_none() && body.get("audience").is_none());
    assert!(
        !provider.requests()[0]
            .headers
            .contains_key("auth0-forwarded-for")
    );
}

#[test]
fn only_one_secret_may_come_from_stdin() {
    let provider = FakeProvider::start(vec![Reply::tokens(json!({ "access_token": "x" }))]);
    let device = Device::new();
    let mut list = device.token_args(&provider);
    let at = list
        .iter()
        .position(|arg| arg == "--password-file")
        .unwrap();
    list[at + 1] = "-".into();
    list.extend(args(&["--client-secret-file", "-"]));
    provision(&list, Some("secret\n")).fails_with(&["standard input", "--password-file"]);
    assert!(provider.requests().is_empty());
}

#[test]
fn an_empty_password_file_is_refused_before_any_request() {
    let provider = FakeProvider::start(vec![Reply::tokens(json!({ "access_token": "x" }))]);
    let device = Device::new();
    std::fs::write(device.path("password"), "\n").unwrap();
    provision(&device.token_args(&provider), None).fails_with(&["--password-file", "empty"]);
    assert!(provider.requests().is_empty());
}

#[test]
fn a_token_without_exp_or_topics_is_stored_with_warnings() {
    let token = jwt(&json!({ "sub": "thermostat-1a" }));
    let provider = FakeProvider::start(vec![Reply::tokens(json!({ "access_token": token }))]);
    let device = Device::new();
    let run = provision(&device.token_args(&provider), None);
    run.ok();
    assert!(
        run.stderr
            .contains("warning: the token has no \"exp\" claim"),
        "{run:?}"
    );
    assert!(
        run.stderr
            .contains("warning: the token has no \"topics\" claim"),
        "{run:?}"
    );
    assert!(run.stderr.contains("no refresh token"), "{run:?}");
    assert_eq!(device.read("device.jwt").unwrap(), token);

    // The claim name follows --topics-claim.
    let mut list = device.token_args(&provider);
    list.extend(args(&["--topics-claim", "https://mqtt.example/topics"]));
    let run = provision(&list, None);
    run.ok();
    assert!(
        run.stderr.contains("\"https://mqtt.example/topics\" claim"),
        "{run:?}"
    );
}

#[test]
fn an_opaque_access_token_is_stored_with_a_warning() {
    let provider = FakeProvider::start(vec![Reply::tokens(json!({ "access_token": "opaque" }))]);
    let device = Device::new();
    let run = provision(&device.token_args(&provider), None);
    run.ok();
    assert!(
        run.stderr.contains("not a JWT") && run.stderr.contains("--audience"),
        "{run:?}"
    );
}

#[test]
fn a_new_login_without_refresh_token_removes_the_stale_one() {
    let provider = FakeProvider::start(vec![Reply::tokens(
        json!({ "access_token": device_jwt(60) }),
    )]);
    let device = Device::new();
    std::fs::write(device.refresh_path(), "refresh-from-an-earlier-login").unwrap();
    let run = provision(&device.token_args(&provider), None);
    run.ok();
    assert!(run.stdout.contains("removed"), "{run:?}");
    assert!(!device.refresh_path().exists());
}

/// Each refusal names its cause, exits 1 and leaves the previous token.
fn assert_refused(reply: Reply, causes: &[&str]) {
    let provider = FakeProvider::start(vec![reply]);
    let device = Device::new();
    std::fs::write(device.token_path(), "previous good token").unwrap();
    std::fs::write(device.refresh_path(), "previous refresh token").unwrap();
    provision(&device.token_args(&provider), None).fails_with(causes);
    assert_eq!(device.read("device.jwt").unwrap(), "previous good token");
    assert_eq!(
        device.read("device.jwt.refresh").unwrap(),
        "previous refresh token"
    );
    assert_eq!(
        device.names(),
        [
            "client-secret",
            "device.jwt",
            "device.jwt.refresh",
            "password"
        ]
    );
}

#[test]
fn wrong_password() {
    assert_refused(
        Reply::oauth_error(403, "invalid_grant", "Wrong email or password."),
        &[
            "wrong username or password",
            "Wrong email or password.",
            "--username",
        ],
    );
}

#[test]
fn password_grant_not_enabled() {
    assert_refused(
        Reply::oauth_error(
            403,
            "unauthorized_client",
            "Grant type 'http://auth0.com/oauth/grant-type/password-realm' not allowed for the client.",
        ),
        &["\"Password\" grant", "Advanced Settings > Grant Types"],
    );
}

#[test]
fn unknown_client() {
    assert_refused(
        Reply::oauth_error(401, "access_denied", "Unauthorized"),
        &[
            "refused application \"app-1\"",
            "access_denied",
            "--client-id",
        ],
    );
}

#[test]
fn mfa_required() {
    assert_refused(
        Reply::json(
            403,
            json!({ "error": "mfa_required", "error_description": "Multifactor authentication required", "mfa_token": "mfa-secret" }),
        ),
        &["multi-factor authentication", "thermostat-1a"],
    );
}

#[test]
fn malformed_json() {
    assert_refused(
        Reply::raw(200, "{\"access_token\": \"abc"),
        &[
            "HTTP 200",
            "not the JSON expected",
            "{\\\"access_token\\\": \\\"abc",
        ],
    );
}

#[test]
fn html_error_page() {
    assert_refused(
        Reply::raw(502, "<html>Bad Gateway</html>").header("retry-after", "0"),
        &["gave up after 4 attempts", "HTTP 502", "<html>Bad Gateway"],
    );
}

#[test]
fn answer_without_the_token_asked_for() {
    assert_refused(
        Reply::tokens(json!({ "id_token": "x", "refresh_token": "y" })),
        &[
            "no access_token",
            "expires_in, id_token, refresh_token, token_type",
        ],
    );
    let provider = FakeProvider::start(vec![Reply::tokens(json!({ "access_token": "x" }))]);
    let device = Device::new();
    let mut list = device.token_args(&provider);
    list.push("--id-token".into());
    provision(&list, None).fails_with(&["no id_token", "--scope openid"]);
    assert!(!device.token_path().exists());
}

#[test]
fn a_429_is_retried_after_retry_after() {
    let provider = FakeProvider::start(vec![
        Reply::oauth_error(429, "too_many_requests", "Global limit has been reached")
            .header("retry-after", "1"),
        Reply::tokens(json!({ "access_token": device_jwt(3600) })),
    ]);
    let device = Device::new();
    let run = provision(&device.token_args(&provider), None);
    run.ok();
    assert!(run.stderr.contains("HTTP 429; retrying in 1 s"), "{run:?}");
    let requests = provider.requests();
    assert_eq!(requests.len(), 2);
    let waited = requests[1].at - requests[0].at;
    assert!(waited >= Duration::from_millis(950), "waited {waited:?}");
    assert_eq!(requests[0].body, requests[1].body);
    assert!(device.token_path().exists());
}

#[test]
fn a_provider_that_stays_down_is_tried_four_times() {
    let provider = FakeProvider::start(vec![Reply::oauth_error(
        503,
        "temporarily_unavailable",
        "down for maintenance",
    )]);
    let device = Device::new();
    let started = Instant::now();
    provision(&device.token_args(&provider), None).fails_with(&[
        "gave up after 4 attempts",
        "HTTP 503",
        "down for maintenance",
    ]);
    assert_eq!(provider.requests().len(), 4);
    // Backoff without Retry-After: 1 s, 2 s, 4 s.
    assert!(
        started.elapsed() >= Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );
    assert!(!device.token_path().exists());
    assert_eq!(device.names(), ["client-secret", "password"]);
}

#[test]
fn a_redirect_is_not_followed_with_the_password() {
    let elsewhere = FakeProvider::start(vec![Reply::tokens(json!({ "access_token": "x" }))]);
    let location = format!("{}/oauth/token", elsewhere.domain());
    assert_refused(
        Reply::raw(307, "").header("location", &location),
        &["HTTP 307", "(empty)"],
    );
    assert!(elsewhere.requests().is_empty());
}

#[test]
fn a_blocked_account_is_not_retried() {
    let provider = FakeProvider::start(vec![Reply::oauth_error(
        429,
        "too_many_attempts",
        "Your account has been blocked after multiple consecutive login attempts.",
    )]);
    let device = Device::new();
    provision(&device.token_args(&provider), None).fails_with(&["blocked", "thermostat-1a"]);
    assert_eq!(provider.requests().len(), 1);
}

#[test]
fn plain_http_is_refused_unless_loopback() {
    let device = Device::new();
    for domain in ["http://tenant.example.com", "http://192.0.2.1:8080"] {
        let mut list = args(&[
            "token",
            "--domain",
            domain,
            "--client-id",
            "app-1",
            "--username",
            "d",
        ]);
        list.extend(["--password-file".into(), path_arg(&device.path("password"))]);
        list.extend(["--out".into(), path_arg(&device.token_path())]);
        let started = Instant::now();
        provision(&list, None).fails_with(&["refusing --domain", "https://"]);
        // 192.0.2.1 is unroutable: a request would have hung until the
        // connect timeout.
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    let jwks = args(&["jwks", "--domain", "http://tenant.example.com", "--out"]);
    let mut list = jwks;
    list.push(path_arg(&device.path("provider.json")));
    provision(&list, None).fails_with(&["refusing --domain"]);
    assert!(!device.token_path().exists());
}

#[test]
fn an_unreachable_provider_is_named() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let device = Device::new();
    let mut list = args(&["token", "--domain", &format!("http://127.0.0.1:{port}")]);
    list.extend(args(&[
        "--client-id",
        "app-1",
        "--username",
        "d",
        "--password-file",
    ]));
    list.push(path_arg(&device.path("password")));
    list.extend(["--out".into(), path_arg(&device.token_path())]);
    provision(&list, None)
        .fails_with(&[&format!("cannot reach http://127.0.0.1:{port}/oauth/token")]);
}

#[test]
fn tls_failure_and_ca_file() {
    let tls_dir = tempfile::tempdir().unwrap();
    let provider = FakeProvider::start_tls(
        vec![Reply::tokens(json!({ "access_token": device_jwt(3600) }))],
        tls_dir.path(),
    );
    let device = Device::new();
    // The development CA is not a trust anchor by default.
    provision(&device.token_args(&provider), None)
        .fails_with(&["TLS with https://localhost", "--ca-file"]);
    assert!(provider.requests().is_empty());
    assert!(!device.token_path().exists());

    let mut list = device.token_args(&provider);
    list.extend(["--ca-file".into(), path_arg(&tls_dir.path().join("ca.crt"))]);
    provision(&list, None).ok();
    assert_eq!(provider.requests().len(), 1);
    assert!(device.token_path().exists());

    // A plain HTTP server where TLS is expected is a TLS failure.
    let plain = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = plain.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in plain.incoming().flatten() {
            let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let mut list = device.token_args(&provider);
    let at = list.iter().position(|arg| arg == "--domain").unwrap();
    list[at + 1] = format!("https://127.0.0.1:{port}");
    provision(&list, None).fails_with(&[&format!("TLS with https://127.0.0.1:{port}")]);
}

#[test]
fn a_missing_output_directory_is_refused_before_any_request() {
    let provider = FakeProvider::start(vec![Reply::tokens(json!({ "access_token": "x" }))]);
    let device = Device::new();
    let mut list = device.token_args(&provider);
    let at = list.iter().position(|arg| arg == "--out").unwrap();
    list[at + 1] = path_arg(&device.path("no/such/dir/device.jwt"));
    provision(&list, None).fails_with(&["--out", "directory does not exist"]);
    assert!(provider.requests().is_empty());
}

// ---------------------------------------------------------------------------
// refresh
// ---------------------------------------------------------------------------

#[test]
fn refresh_is_a_no_op_while_the_token_is_fresh() {
    let provider = FakeProvider::start(vec![Reply::tokens(json!({ "access_token": "new" }))]);
    let device = Device::new();
    let fresh = device_jwt(2 * 3600 - 30);
    std::fs::write(device.token_path(), &fresh).unwrap();
    std::fs::write(device.refresh_path(), "refresh-1").unwrap();
    let mut list = device.refresh_args(&provider);
    list.extend(args(&["--if-expiring-within", "1h"]));
    let run = provision(&list, None);
    run.ok();
    assert!(run.stdout.contains("not refreshed"), "{run:?}");
    assert!(run.stdout.contains("expires in 1h 59m"), "{run:?}");
    assert!(provider.requests().is_empty());
    assert_eq!(device.read("device.jwt").unwrap(), fresh);
}

#[test]
fn refresh_replaces_an_expiring_token_and_stores_a_rotated_refresh_token() {
    let renewed = device_jwt(24 * 3600);
    let provider = FakeProvider::start(vec![Reply::tokens(
        json!({ "access_token": renewed, "refresh_token": "refresh-2" }),
    )]);
    let device = Device::new();
    std::fs::write(device.token_path(), device_jwt(600)).unwrap();
    std::fs::write(device.refresh_path(), "refresh-1\n").unwrap();
    let mut list = device.refresh_args(&provider);
    list.extend(args(&[
        "--if-expiring-within",
        "1h",
        "--client-secret-file",
        "-",
    ]));
    let run = provision(&list, Some("from-stdin"));
    run.ok();
    assert!(run.stdout.contains("wrote the refresh token"), "{run:?}");
    assert_eq!(device.read("device.jwt").unwrap(), renewed);
    assert_eq!(device.read("device.jwt.refresh").unwrap(), "refresh-2");
    assert_eq!(mode(&device.token_path()), 0o600);
    assert_eq!(
        provider.requests()[0].json(),
        json!({
            "grant_type": "refresh_token",
            "client_id": "app-1",
            "client_secret": "from-stdin",
            "refresh_token": "refresh-1",
        })
    );
}

#[test]
fn refresh_without_rotation_keeps_the_refresh_token() {
    let renewed = device_jwt(24 * 3600);
    let provider = FakeProvider::start(vec![Reply::tokens(json!({ "id_token": renewed }))]);
    let device = Device::new();
    // No token yet (or an unreadable one): refresh regardless of the window.
    std::fs::write(device.refresh_path(), "refresh-1").unwrap();
    let mut list = device.refresh_args(&provider);
    list.extend(args(&["--if-expiring-within", "1h", "--id-token"]));
    let run = provision(&list, None);
    run.ok();
    assert!(run.stdout.contains("kept the refresh token"), "{run:?}");
    assert_eq!(device.read("device.jwt").unwrap(), renewed);
    assert_eq!(device.read("device.jwt.refresh").unwrap(), "refresh-1");
}

#[test]
fn a_revoked_refresh_token_says_to_log_in_again() {
    let provider = FakeProvider::start(vec![Reply::oauth_error(
        403,
        "invalid_grant",
        "Unknown or invalid refresh token.",
    )]);
    let device = Device::new();
    std::fs::write(device.token_path(), "old token").unwrap();
    std::fs::write(device.refresh_path(), "refresh-1").unwrap();
    provision(&device.refresh_args(&provider), None)
        .fails_with(&["refused the refresh token", "jwtgate-provision token"]);
    assert_eq!(device.read("device.jwt").unwrap(), "old token");
    assert_eq!(device.read("device.jwt.refresh").unwrap(), "refresh-1");
}

#[test]
fn refresh_without_a_refresh_token_file() {
    let provider = FakeProvider::start(vec![Reply::tokens(json!({ "access_token": "x" }))]);
    let device = Device::new();
    provision(&device.refresh_args(&provider), None)
        .fails_with(&["device.jwt.refresh", "offline_access"]);
    assert!(provider.requests().is_empty());
}

/// A token issued `age` seconds ago that lives `lifetime` seconds, with
/// `iat`.
fn token_issued(age: u64, lifetime: u64) -> String {
    let iat = now() - age;
    jwt(&json!({
        "sub": "auth0|thermostat-1a",
        "iat": iat,
        "exp": iat + lifetime,
        "topics": ["devices/thermostat-1a/#"],
    }))
}

/// Sets the token file's modification time to `age` seconds ago.
fn age_file(path: &Path, age: u64) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(age))
        .unwrap();
}

#[test]
fn refresh_renews_once_a_third_of_the_lifetime_is_left() {
    let renewed = device_jwt(3600);
    // An hour's token half-way through: 30 minutes left, more than a third.
    let provider = FakeProvider::start(vec![Reply::tokens(json!({ "access_token": renewed }))]);
    let device = Device::new();
    let fresh = token_issued(30 * 60, 3600);
    std::fs::write(device.token_path(), &fresh).unwrap();
    std::fs::write(device.refresh_path(), "refresh-1").unwrap();
    let run = provision(&device.refresh_args(&provider), None);
    run.ok();
    assert!(
        run.stdout.contains(
            "renewed once less than 20m 0s is left (a third of its 1h 0m lifetime): not refreshed"
        ),
        "{run:?}"
    );
    assert!(provider.requests().is_empty());
    assert_eq!(device.read("device.jwt").unwrap(), fresh);

    // Three quarters through: 15 minutes left, less than a third.
    std::fs::write(device.token_path(), token_issued(45 * 60, 3600)).unwrap();
    let run = provision(&device.refresh_args(&provider), None);
    run.ok();
    assert!(run.stdout.contains("wrote the access token"), "{run:?}");
    assert_eq!(provider.requests().len(), 1);
    assert_eq!(device.read("device.jwt").unwrap(), renewed);
}

#[test]
fn without_iat_the_token_files_age_gives_the_lifetime() {
    let renewed = device_jwt(900);
    let provider = FakeProvider::start(vec![Reply::tokens(json!({ "access_token": renewed }))]);
    let device = Device::new();
    std::fs::write(device.refresh_path(), "refresh-1").unwrap();
    // Just written, 15 minutes to go: fresh.
    std::fs::write(device.token_path(), device_jwt(15 * 60)).unwrap();
    let run = provision(&device.refresh_args(&provider), None);
    assert!(run.ok().stdout.contains("not refreshed"), "{run:?}");
    assert!(provider.requests().is_empty());
    // Written 11 minutes ago with 4 to go: a 15-minute token with less
    // than a third left.
    std::fs::write(device.token_path(), device_jwt(4 * 60)).unwrap();
    age_file(&device.token_path(), 11 * 60);
    let run = provision(&device.refresh_args(&provider), None);
    assert!(
        run.ok().stdout.contains("wrote the access token"),
        "{run:?}"
    );
    assert_eq!(device.read("device.jwt").unwrap(), renewed);
}

#[test]
fn min_remaining_renews_earlier_than_a_third_and_force_at_once() {
    let provider = FakeProvider::start(vec![
        Reply::tokens(json!({ "access_token": device_jwt(900) })),
        Reply::tokens(json!({ "access_token": device_jwt(900) })),
    ]);
    let device = Device::new();
    std::fs::write(device.refresh_path(), "refresh-1").unwrap();
    // A 15-minute token 5 minutes in: 10 minutes left, more than a third.
    std::fs::write(device.token_path(), token_issued(5 * 60, 15 * 60)).unwrap();
    let run = provision(&device.refresh_args(&provider), None);
    assert!(run.ok().stdout.contains("not refreshed"), "{run:?}");
    // A shorter floor changes nothing; the message says which rule held.
    let mut list = device.refresh_args(&provider);
    list.extend(args(&["--min-remaining", "2m"]));
    let run = provision(&list, None);
    assert!(
        run.ok()
            .stdout
            .contains("renewed once less than 5m 0s is left (a third"),
        "{run:?}"
    );
    let mut list = device.refresh_args(&provider);
    list.extend(args(&["--min-remaining", "9m"]));
    let run = provision(&list, None);
    assert!(
        run.ok()
            .stdout
            .contains("renewed once less than 9m 0s is left (--min-remaining): not refreshed"),
        "{run:?}"
    );
    assert!(provider.requests().is_empty());
    // A floor above the time left renews.
    let mut list = device.refresh_args(&provider);
    list.extend(args(&["--min-remaining", "11m"]));
    provision(&list, None).ok();
    assert_eq!(provider.requests().len(), 1);
    // --force renews the fresh token just written.
    let mut list = device.refresh_args(&provider);
    list.push("--force".into());
    provision(&list, None).ok();
    assert_eq!(provider.requests().len(), 2);
    let mut list = device.refresh_args(&provider);
    list.extend(args(&["--force", "--min-remaining", "1m"]));
    let run = provision(&list, None);
    assert_eq!(run.code, Some(2), "a usage error; {run:?}");
    assert!(run.stderr.contains("cannot be used with"), "{run:?}");
}

#[test]
fn a_refresh_that_cannot_read_its_client_secret_fails_even_when_nothing_is_due() {
    let provider = FakeProvider::start(vec![Reply::tokens(json!({ "access_token": "x" }))]);
    let device = Device::new();
    std::fs::write(device.token_path(), token_issued(60, 3600)).unwrap();
    std::fs::write(device.refresh_path(), "refresh-1").unwrap();
    let mut list = device.refresh_args(&provider);
    list.extend([
        "--client-secret-file".into(),
        path_arg(&device.path("provision/client-secret")),
    ]);
    provision(&list, None).fails_with(&[
        "cannot read --client-secret-file",
        "provision/client-secret",
    ]);
    assert!(provider.requests().is_empty());
}

/// The packaged refresh unit's command line, as systemd would expand it
/// with the README's provision.env, runs against this binary: renews a
/// 15-minute token with less than its 10-minute floor left, and reads the
/// client secret from /etc/jwtgate/provision/ (here, a directory standing
/// in for it).
#[test]
fn the_refresh_units_command_line_renews_a_15_minute_token_in_time() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit =
        std::fs::read_to_string(root.join("systemd/jwtgate-provision-refresh.service")).unwrap();
    let timer =
        std::fs::read_to_string(root.join("systemd/jwtgate-provision-refresh.timer")).unwrap();
    assert!(timer.contains("\nOnCalendar=*:0/5\n"), "{timer}");
    let exec_start = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .unwrap();
    let floor = unit
        .lines()
        .find_map(|line| line.strip_prefix("Environment=PROVISION_MIN_REMAINING="))
        .unwrap();
    // Two runs of the timer: one may come just before the floor is reached.
    assert_eq!(floor, "10m");

    let renewed = device_jwt(900);
    let provider = FakeProvider::start(vec![Reply::tokens(json!({ "id_token": renewed }))]);
    let device = Device::new();
    std::fs::create_dir(device.path("provision")).unwrap();
    std::fs::write(device.path("provision/client-secret"), CLIENT_SECRET).unwrap();
    std::fs::write(device.refresh_path(), "refresh-1").unwrap();
    // 15 minutes long, 9 minutes left: more than a third, less than the floor.
    std::fs::write(device.token_path(), token_issued(6 * 60, 15 * 60)).unwrap();
    let provision_args = format!(
        "--id-token --client-secret-file {}",
        path_arg(&device.path("provision/client-secret"))
    );
    let line = exec_start
        .replace("${PROVISION_DOMAIN}", &provider.domain())
        .replace("${PROVISION_CLIENT_ID}", "app-1")
        .replace("${PROVISION_OUT}", &path_arg(&device.token_path()))
        .replace("${PROVISION_MIN_REMAINING}", floor)
        .replace("$PROVISION_ARGS", &provision_args);
    let mut words = line.split_whitespace().map(str::to_owned);
    assert_eq!(words.next().as_deref(), Some("/usr/bin/jwtgate-provision"));
    let run = provision(&words.collect::<Vec<_>>(), None);
    assert!(run.ok().stdout.contains("wrote the ID token"), "{run:?}");
    assert_eq!(device.read("device.jwt").unwrap(), renewed);
    assert_eq!(
        provider.requests()[0].json()["client_secret"],
        json!(CLIENT_SECRET)
    );
}

// ---------------------------------------------------------------------------
// jwks
// ---------------------------------------------------------------------------

fn ec_jwk(kid: &str) -> Value {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = pair.public_key_raw();
    json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..]),
    })
}

fn jwks_args(provider: &FakeProvider, out: &Path) -> Vec<String> {
    let mut list = args(&["jwks", "--domain", &provider.domain(), "--out"]);
    list.push(path_arg(out));
    list
}

#[test]
fn jwks_is_checked_and_written_where_the_gateway_loads_it() {
    let jwks = json!({ "keys": [ec_jwk("ec-1"), { "kty": "EC", "crv": "P-521", "kid": "big" }] });
    let provider = FakeProvider::start(vec![Reply::json(200, jwks.clone())]);
    let keys = tempfile::tempdir().unwrap();
    let out = keys.path().join("provider.json");
    let run = provision(&jwks_args(&provider, &out), None);
    run.ok();
    assert!(
        run.stdout.contains("wrote 1 key(s)") && run.stdout.contains("ec-1"),
        "{run:?}"
    );
    assert!(run.stderr.contains("\"big\""), "{run:?}");
    let requests = provider.requests();
    assert_eq!(
        (requests[0].method.as_str(), requests[0].path.as_str()),
        ("GET", "/.well-known/jwks.json")
    );
    assert_eq!(
        serde_json::from_str::<Value>(&std::fs::read_to_string(&out).unwrap()).unwrap(),
        jwks
    );
    assert_eq!(mode(&out), 0o644);
    let names: Vec<_> = std::fs::read_dir(keys.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["provider.json"]);
    // The gateway's loader agrees.
    let (store, report) = KeyStore::open(keys.path()).unwrap();
    assert!(store.snapshot().get("ec-1").is_some(), "{report}");
}

#[test]
fn a_bad_jwks_leaves_the_previous_file() {
    let keys = tempfile::tempdir().unwrap();
    let out = keys.path().join("provider.json");
    std::fs::write(&out, "previous").unwrap();
    for (reply, causes) in [
        (
            Reply::raw(200, "<html>garbage</html>"),
            &["did not answer with a JWK set", "<html>garbage"][..],
        ),
        (
            Reply::json(200, json!({ "keys": [] })),
            &["no key the gateway can use", "the set is empty"],
        ),
        (
            Reply::json(
                200,
                json!({ "keys": [{ "kty": "EC", "crv": "P-521", "kid": "big" }] }),
            ),
            &["no key the gateway can use", "\"big\""],
        ),
        (Reply::raw(404, "Not Found"), &["HTTP 404", "Not Found"]),
    ] {
        let provider = FakeProvider::start(vec![reply]);
        provision(&jwks_args(&provider, &out), None).fails_with(causes);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "previous");
    }
    let names: Vec<_> = std::fs::read_dir(keys.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["provider.json"]);
}

#[test]
fn jwks_out_must_be_a_json_file_the_gateway_loads() {
    let provider = FakeProvider::start(vec![Reply::json(200, json!({ "keys": [ec_jwk("ec-1")] }))]);
    let keys = tempfile::tempdir().unwrap();
    provision(
        &jwks_args(&provider, &keys.path().join("provider.jwks")),
        None,
    )
    .fails_with(&["*.json"]);
    assert!(provider.requests().is_empty());
}

// ---------------------------------------------------------------------------
// Help
// ---------------------------------------------------------------------------

#[test]
fn every_command_has_an_example_in_its_help() {
    let run = provision(&args(&["--help"]), None);
    assert!(run.ok().stdout.contains("Examples:"), "{run:?}");
    for command in ["token", "refresh", "jwks"] {
        let run = provision(&args(&[command, "--help"]), None);
        run.ok();
        assert!(run.stdout.contains("Example"), "{command}: {run:?}");
        assert!(
            run.stdout
                .contains(&format!("jwtgate-provision {command} --domain")),
            "{command}: {run:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// The whole path: provision, then connect to the real gateway
// ---------------------------------------------------------------------------

/// A gateway in a temp dir with development material, and a token for
/// `thermostat-1a` minted with its dev secret, as a provider sharing that
/// secret would issue it.
struct Site {
    dir: tempfile::TempDir,
    config: Config,
    ca_pem: Vec<u8>,
    token: String,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::defaults(dir.path());
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let material = firstrun::ensure_dev_material(&config.auth.keys_dir).unwrap();
        let ca_pem = std::fs::read(material.ca_cert.unwrap()).unwrap();
        let (store, _report) = KeyStore::open(&config.auth.keys_dir).unwrap();
        let keys = store.snapshot();
        let claims = MintClaims {
            subject: "thermostat-1a".into(),
            topics: vec!["devices/thermostat-1a/#".into()],
            ttl: Duration::from_secs(3600),
            topics_claim: config.auth.topics_claim.clone(),
            issuer: None,
            audience: Vec::new(),
        };
        let token = token::mint(keys.newest_hmac().unwrap(), &claims).unwrap();
        Site {
            dir,
            config,
            ca_pem,
            token,
        }
    }
}

#[test]
fn keys_dir_verification_refuses_a_token_the_gateway_would_refuse() {
    let site = Site::new();
    let forged = jwt(&json!({ "sub": "x", "exp": now() + 60, "topics": ["#"] }));
    let provider = FakeProvider::start(vec![Reply::tokens(json!({ "access_token": forged }))]);
    let device = Device::new();
    let mut list = device.token_args(&provider);
    list.extend(["--keys-dir".into(), path_arg(&site.config.auth.keys_dir)]);
    provision(&list, None).fails_with(&["does not verify against the keys in", "signature"]);
    assert!(!device.token_path().exists());
}

/// The site's config file, with `auth` as its `[auth]` table body.
fn site_config(site: &Site, auth: &str) -> PathBuf {
    let path = site.dir.path().join("jwtgate.toml");
    std::fs::write(
        &path,
        format!(
            "[tls]\ncert = \"keys/tls/server.crt\"\nkey = \"keys/tls/server.key\"\n\n[auth]\nkeys_dir = \"keys\"\n{auth}"
        ),
    )
    .unwrap();
    path
}

#[test]
fn config_verifies_under_the_gateways_own_auth() {
    let site = Site::new();
    let config = site_config(&site, "issuer = \"https://idp.example/\"\n");
    let provider = FakeProvider::start(vec![
        Reply::tokens(json!({ "access_token": site.token })),
        Reply::tokens(json!({ "access_token": site.token })),
    ]);
    let device = Device::new();
    // The default policy takes the dev token; the gateway's [auth] does not.
    let mut list = device.token_args(&provider);
    list.extend(["--keys-dir".into(), path_arg(&site.config.auth.keys_dir)]);
    provision(&list, None).ok();
    let _ = std::fs::remove_file(device.token_path());
    let mut list = device.token_args(&provider);
    list.extend(["--config".into(), path_arg(&config)]);
    provision(&list, None).fails_with(&[
        "does not verify against the keys in",
        &format!("under the [auth] of {}", config.display()),
        "no \"iss\" claim",
    ]);
    assert!(!device.token_path().exists());
}

#[test]
fn config_names_the_claims_and_a_broken_one_is_refused_before_any_request() {
    let site = Site::new();
    // A provider's token with the topics under the claim [auth] names.
    let (store, _report) = KeyStore::open(&site.config.auth.keys_dir).unwrap();
    let claims = MintClaims {
        subject: "thermostat-1a".into(),
        topics: vec!["devices/thermostat-1a/#".into()],
        ttl: Duration::from_secs(3600),
        topics_claim: "https://example.com/topics".into(),
        issuer: None,
        audience: Vec::new(),
    };
    let token = token::mint(store.snapshot().newest_hmac().unwrap(), &claims).unwrap();
    let config = site_config(&site, "topics_claim = \"https://example.com/topics\"\n");
    let provider = FakeProvider::start(vec![Reply::tokens(
        json!({ "access_token": token, "refresh_token": "r" }),
    )]);
    let device = Device::new();
    let mut list = device.token_args(&provider);
    list.extend(["--config".into(), path_arg(&config)]);
    let run = provision(&list, None);
    run.ok();
    assert!(!run.stderr.contains("warning"), "{run:?}");
    assert!(run.stdout.contains("devices/thermostat-1a/#"), "{run:?}");
    // --topics-claim would contradict the config.
    list.extend(args(&["--topics-claim", "topics"]));
    let run = provision(&list, None);
    assert_eq!(run.code, Some(2), "a usage error; {run:?}");
    assert!(run.stderr.contains("cannot be used with"), "{run:?}");

    let broken = site_config(&site, "issuer = 42\n");
    let mut list = device.token_args(&provider);
    list.extend(["--config".into(), path_arg(&broken)]);
    provision(&list, None).fails_with(&["jwtgate.toml:", "issuer"]);
    assert_eq!(provider.requests().len(), 1);
}

fn mqtt_options(
    site_ca: &[u8],
    port: u16,
    client_id: &str,
    password: &str,
) -> rumqttc::MqttOptions {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &site_ca[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut options = rumqttc::MqttOptions::new(client_id, "localhost", port);
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(Arc::new(tls)),
    ));
    options.set_credentials("JWT", password);
    options.set_max_packet_size(64 * 1024, 64 * 1024);
    options
}

/// Polls `eventloop` until `wanted` picks an incoming packet; panics on a
/// connection error or after 10 s.
async fn wait_for<T>(
    eventloop: &mut rumqttc::EventLoop,
    mut wanted: impl FnMut(&rumqttc::Packet) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let event = tokio::time::timeout_at(deadline, eventloop.poll())
            .await
            .expect("timed out waiting for a packet")
            .expect("the MQTT connection failed");
        if let rumqttc::Event::Incoming(packet) = event
            && let Some(found) = wanted(&packet)
        {
            return found;
        }
    }
}

#[test]
fn a_provisioned_token_connects_publishes_and_is_delivered() {
    let site = Site::new();
    let provider = FakeProvider::start(vec![Reply::tokens(
        json!({ "access_token": "opaque", "id_token": site.token, "refresh_token": "r" }),
    )]);
    let out = site.dir.path().join("device.jwt");
    let password_file = site.dir.path().join("password");
    std::fs::write(&password_file, PASSWORD).unwrap();
    let mut list = args(&[
        "token",
        "--domain",
        &provider.domain(),
        "--client-id",
        "app-1",
        "--username",
        "thermostat-1a",
        "--realm",
        "Thermostats",
        "--scope",
        "openid offline_access",
        "--id-token",
    ]);
    for (flag, path) in [
        ("--password-file", &password_file),
        ("--keys-dir", &site.config.auth.keys_dir),
        ("--out", &out),
    ] {
        list.extend([flag.into(), path_arg(path)]);
    }
    let run = provision(&list, None);
    run.ok();
    assert!(!run.stderr.contains("warning"), "{run:?}");
    let password = std::fs::read_to_string(&out).unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let gateway = Gateway::bind(&site.config).await.unwrap();
        let port = gateway.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(gateway.run(async move {
            let _ = stopped.await;
        }));

        let topic = "devices/thermostat-1a/temperature";
        let (subscriber, mut sub_events) = rumqttc::AsyncClient::new(
            mqtt_options(&site.ca_pem, port, "thermostat-1a-sub", &password),
            10,
        );
        let code = wait_for(&mut sub_events, |packet| match packet {
            rumqttc::Packet::ConnAck(ack) => Some(ack.code),
            _ => None,
        })
        .await;
        assert_eq!(code, rumqttc::ConnectReturnCode::Success);
        subscriber
            .subscribe(topic, rumqttc::QoS::AtLeastOnce)
            .await
            .unwrap();
        let granted = wait_for(&mut sub_events, |packet| match packet {
            rumqttc::Packet::SubAck(ack) => Some(ack.return_codes.clone()),
            _ => None,
        })
        .await;
        assert_eq!(
            granted,
            [rumqttc::SubscribeReasonCode::Success(
                rumqttc::QoS::AtLeastOnce
            )]
        );

        let (publisher, mut pub_events) = rumqttc::AsyncClient::new(
            mqtt_options(&site.ca_pem, port, "thermostat-1a-pub", &password),
            10,
        );
        publisher
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, "21.5")
            .await
            .unwrap();
        let publishing = tokio::spawn(async move {
            wait_for(&mut pub_events, |packet| {
                matches!(packet, rumqttc::Packet::PubAck(_)).then_some(())
            })
            .await;
        });
        let delivered = wait_for(&mut sub_events, |packet| match packet {
            rumqttc::Packet::Publish(publish) => Some(publish.clone()),
            _ => None,
        })
        .await;
        assert_eq!(delivered.topic, topic);
        assert_eq!(&delivered.payload[..], b"21.5");
        publishing.await.unwrap();

        stop.send(()).unwrap();
        running.await.unwrap();
    });
}
