//! `jwtgate-provision`'s grants without a shared secret on the device
//! (`client-assertion`, over mTLS too, and `device-code`), and `keygen`,
//! the real binary against the provider stand-in of
//! `tests/common/provider.rs`, which checks what a provider checks.

#[path = "common/provider.rs"]
mod provider;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use provider::{DeviceScript, Outcome, PollAnswer, Registration, StandIn, key_registration};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_jwtgate-provision");
const CLIENT_ID: &str = "app-1";

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    fn ok(&self) -> &Run {
        assert_eq!(self.code, Some(0), "expected success; {self:?}");
        self
    }

    /// A failure that says `cause` in one line on stderr (after any lines
    /// meant for the technician).
    fn fails_with(&self, cause: &str) -> &Run {
        assert_eq!(self.code, Some(1), "expected failure; {self:?}");
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|line| line.starts_with("jwtgate-provision: error: "))
            .collect();
        assert_eq!(errors.len(), 1, "{self:?}");
        assert_eq!(self.stderr.lines().last(), Some(errors[0]), "{self:?}");
        assert!(
            errors[0].contains(cause),
            "stderr lacks {cause:?}; {self:?}"
        );
        self
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?} after {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.took, self.stdout, self.stderr
        )
    }
}

fn provision(args: &[String]) -> Run {
    let started = Instant::now();
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run {
        code: status.code(),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
        took: started.elapsed(),
    }
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|arg| (*arg).to_owned()).collect()
}

fn arg(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

/// A device's directory with a key made by `keygen`, registered with a
/// fresh stand-in.
struct Device {
    dir: tempfile::TempDir,
    provider: Arc<StandIn>,
    kid: String,
}

impl Device {
    fn new() -> Device {
        Device::with_csr(None)
    }

    fn with_csr(subject: Option<&str>) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let provider = StandIn::start(dir.path());
        let mut list = args(&["keygen", "--out", &arg(&dir.path().join("keys"))]);
        if let Some(subject) = subject {
            list.extend(args(&["--csr", "--subject", subject]));
        }
        let run = provision(&list);
        run.ok();
        let jwk: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("keys/device.jwk.json")).unwrap(),
        )
        .unwrap();
        let kid = jwk["kid"].as_str().unwrap().to_owned();
        let device = Device { dir, provider, kid };
        device.provider.register(
            CLIENT_ID,
            key_registration(
                &device.read("keys/device.pub.pem"),
                Algorithm::ES256,
                Some(&device.kid),
            ),
        );
        device
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }

    /// The names at the top of the directory: shows a token or temporary
    /// file left behind.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name != "keys" && name != "provider-tls")
            .collect();
        names.sort();
        names
    }

    fn common(&self, command: &str) -> Vec<String> {
        let mut list = args(&[command, "--domain", &self.provider.domain()]);
        list.extend(args(&["--ca-file", &arg(&self.provider.ca_file)]));
        list.extend(args(&["--client-id", CLIENT_ID]));
        list.extend(args(&["--out", &arg(&self.path("device.jwt"))]));
        list
    }

    fn assertion_args(&self) -> Vec<String> {
        let mut list = self.common("client-assertion");
        list.extend(args(&["--key", &arg(&self.path("keys/device.key"))]));
        list.extend(args(&["--audience", "mqtt-gateway"]));
        list
    }

    fn token_claims(&self) -> Value {
        let token = self.read("device.jwt");
        jsonwebtoken::dangerous::insecure_decode::<Value>(&token)
            .unwrap()
            .claims
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

// ---------------------------------------------------------------------------
// client-assertion (private_key_jwt)
// ---------------------------------------------------------------------------

#[test]
fn client_assertion_gets_a_token_for_an_assertion_the_provider_verifies() {
    let device = Device::new();
    let run = provision(&device.assertion_args());
    run.ok();
    assert!(run.stdout.contains("wrote the access token to"), "{run:?}");
    assert_eq!(mode(&device.path("device.jwt")), 0o600);
    assert_eq!(device.names(), ["device.jwt"]);
    let claims = device.token_claims();
    assert_eq!(claims["sub"], "app-1@clients");
    assert_eq!(claims["aud"], "mqtt-gateway");

    let accepted = device.provider.accepted();
    assert_eq!(accepted.len(), 1);
    let assertion = &accepted[0];
    assert_eq!(assertion.header.alg, Algorithm::ES256);
    assert_eq!(assertion.header.kid.as_deref(), Some(device.kid.as_str()));
    assert_eq!(assertion.claims["iss"], CLIENT_ID);
    assert_eq!(assertion.claims["sub"], CLIENT_ID);
    assert_eq!(assertion.claims["aud"], device.provider.token_url());
    let (iat, exp) = (
        assertion.claims["iat"].as_u64().unwrap(),
        assertion.claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 60);
    let (path, form, _) = &device.provider.requests()[0];
    assert_eq!(path, "/oauth/token");
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_assertion_type"], provider::ASSERTION_TYPE);
    assert_eq!(form["audience"], "mqtt-gateway");
    assert!(!form.contains_key("client_secret"));
}

#[test]
fn a_retry_carries_a_fresh_assertion_and_a_replayed_one_is_refused() {
    let device = Device::new();
    device.provider.busy(1);
    provision(&device.assertion_args()).ok();
    let requests = device.provider.requests();
    assert_eq!(requests.len(), 2, "503, then the retry");
    let (first, second) = (
        &requests[0].1["client_assertion"],
        &requests[1].1["client_assertion"],
    );
    assert_ne!(first, second, "a retry must not resend a used jti");

    // The stand-in refuses a replay, as a provider does.
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![
                    ureq::tls::Certificate::from_pem(
                        &std::fs::read(&device.provider.ca_file).unwrap(),
                    )
                    .unwrap(),
                ])))
                .unversioned_rustls_crypto_provider(Arc::new(
                    tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .build(),
        )
        .build()
        .new_agent();
    let replay = agent
        .post(device.provider.token_url())
        .send_form([
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_assertion_type", provider::ASSERTION_TYPE),
            ("client_assertion", second.as_str()),
        ])
        .unwrap();
    assert_eq!(replay.status().as_u16(), 401);
    assert_eq!(
        device.provider.refusals().last().unwrap(),
        "invalid_client: jti already used"
    );
}

/// Runs `list` on a device with no token yet and asserts the failure left
/// none behind.
fn refused(device: &Device, list: &[String], cause: &str) -> Run {
    let run = provision(list);
    run.fails_with(cause);
    assert_eq!(device.names(), Vec::<String>::new(), "{run:?}");
    run
}

#[test]
fn every_refused_assertion_exits_non_zero_in_one_line_and_leaves_no_token() {
    let device = Device::new();
    // Another key is registered for the application.
    let other = tempfile::tempdir().unwrap();
    provision(&args(&["keygen", "--out", &arg(other.path())])).ok();
    let other_public = std::fs::read_to_string(other.path().join("device.pub.pem")).unwrap();
    device.provider.register(
        CLIENT_ID,
        key_registration(&other_public, Algorithm::ES256, None),
    );
    refused(&device, &device.assertion_args(), "public key registered");
    assert!(
        device.provider.refusals()[0].contains("InvalidSignature"),
        "{:?}",
        device.provider.refusals()
    );

    // The right key, but the kid registered is another.
    let public = device.read("keys/device.pub.pem");
    device.provider.register(
        CLIENT_ID,
        key_registration(&public, Algorithm::ES256, Some("auth0-generated")),
    );
    refused(&device, &device.assertion_args(), "kid");
    let mut list = device.assertion_args();
    list.extend(args(&["--kid", "auth0-generated"]));
    provision(&list).ok();
    std::fs::remove_file(device.path("device.jwt")).unwrap();

    // An audience that is not this token endpoint.
    let mut list = device.assertion_args();
    list.extend(args(&[
        "--kid",
        "auth0-generated",
        "--assertion-audience",
        "https://elsewhere/",
    ]));
    refused(&device, &list, "--assertion-audience");
    assert!(
        device
            .provider
            .refusals()
            .last()
            .unwrap()
            .contains("InvalidAudience")
    );

    // Unknown application; grant not enabled.
    let mut list = device.assertion_args();
    list.extend(args(&["--kid", "auth0-generated"]));
    let unknown: Vec<String> = list
        .iter()
        .map(|a| {
            if a == CLIENT_ID {
                "app-2".to_owned()
            } else {
                a.clone()
            }
        })
        .collect();
    refused(&device, &unknown, "\"app-2\"");
    device.provider.register(
        CLIENT_ID,
        Registration {
            grants: vec![],
            ..key_registration(&public, Algorithm::ES256, None)
        },
    );
    refused(
        &device,
        &device.assertion_args(),
        "Grant Types > \"Client Credentials\"",
    );

    // Nothing sent at all: no key, an unreadable key, no key or certificate.
    let mut list = device.common("client-assertion");
    list.extend(args(&["--key", &arg(&device.path("keys/missing.key"))]));
    refused(&device, &list, "cannot use --key");
    refused(&device, &device.common("client-assertion"), "--key");
}

#[test]
fn refresh_with_the_key_runs_the_grant_again_once_due() {
    let device = Device::new();
    provision(&device.assertion_args()).ok();
    let first = device.read("device.jwt");
    let mut list = device.common("refresh");
    list.extend(args(&["--key", &arg(&device.path("keys/device.key"))]));
    list.extend(args(&["--audience", "mqtt-gateway"]));
    let run = provision(&list);
    assert!(run.ok().stdout.contains("not refreshed"), "{run:?}");
    assert_eq!(
        device.provider.accepted().len(),
        1,
        "nothing sent while fresh"
    );

    list.push("--force".into());
    provision(&list).ok();
    let accepted = device.provider.accepted();
    assert_eq!(accepted.len(), 2);
    assert_ne!(accepted[0].claims["jti"], accepted[1].claims["jti"]);
    assert_ne!(device.read("device.jwt"), first);
    assert_eq!(device.names(), ["device.jwt"]);

    // The refresh token grant's flags do not mix with the key's.
    let mut mixed = list.clone();
    mixed.extend(args(&[
        "--client-secret-file",
        &arg(&device.path("keys/device.key")),
    ]));
    provision(&mixed).fails_with("--client-secret-file");
}

// ---------------------------------------------------------------------------
// client-assertion over mTLS (RFC 8705)
// ---------------------------------------------------------------------------

fn mtls_args(device: &Device, cert: &Path) -> Vec<String> {
    let mut list = device.common("client-assertion");
    list.extend(args(&["--mtls-cert", &arg(cert)]));
    list.extend(args(&["--mtls-key", &arg(&device.path("keys/device.key"))]));
    list.extend(args(&[
        "--mtls-endpoint",
        &device.provider.mtls_token_url(),
    ]));
    list.extend(args(&["--audience", "mqtt-gateway"]));
    list
}

#[test]
fn an_mtls_token_is_bound_to_the_devices_certificate() {
    let device = Device::with_csr(Some("thermostat-1a"));
    device.provider.register(
        CLIENT_ID,
        Registration {
            cert_subject: Some("thermostat-1a".into()),
            ..key_registration(&device.read("keys/device.pub.pem"), Algorithm::ES256, None)
        },
    );
    let pem = device.provider.sign_csr(&device.read("keys/device.csr"));
    std::fs::write(device.path("keys/device.crt"), &pem).unwrap();
    provision(&mtls_args(&device, &device.path("keys/device.crt"))).ok();

    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let claims = device.token_claims();
    assert_eq!(claims["cnf"]["x5t#S256"], provider::thumbprint(&der));
    let (path, form, with_cert) = &device.provider.requests()[0];
    assert_eq!(path, "/oauth/token");
    assert!(with_cert);
    assert_eq!(form["client_id"], CLIENT_ID);
    assert!(!form.contains_key("client_assertion"), "{form:?}");
    assert_eq!(device.names(), ["device.jwt"]);
}

#[test]
fn mtls_failures_exit_non_zero_and_leave_no_token() {
    let device = Device::with_csr(Some("thermostat-1a"));
    // A certificate the device CA did not sign: the handshake fails.
    let key = rcgen::KeyPair::from_pem(&device.read("keys/device.key")).unwrap();
    let params = rcgen::CertificateParams::new(vec!["thermostat-1a".to_owned()]).unwrap();
    let self_signed = params.self_signed(&key).unwrap().pem();
    std::fs::write(device.path("keys/self.crt"), self_signed).unwrap();
    refused(
        &device,
        &mtls_args(&device, &device.path("keys/self.crt")),
        "TLS with",
    );

    // Signed, but the application registered another subject.
    device.provider.register(
        CLIENT_ID,
        Registration {
            cert_subject: Some("thermostat-2b".into()),
            ..key_registration(&device.read("keys/device.pub.pem"), Algorithm::ES256, None)
        },
    );
    let pem = device.provider.sign_csr(&device.read("keys/device.csr"));
    std::fs::write(device.path("keys/device.crt"), &pem).unwrap();
    refused(
        &device,
        &mtls_args(&device, &device.path("keys/device.crt")),
        "--mtls-cert",
    );

    // A client certificate over plain http is no client certificate.
    let mut list = mtls_args(&device, &device.path("keys/device.crt"));
    let at = list.iter().position(|a| a == "--mtls-endpoint").unwrap();
    list[at + 1] = format!("http://127.0.0.1:{}/oauth/token", device.provider.mtls_port);
    refused(&device, &list, "needs https://");
}

// ---------------------------------------------------------------------------
// device-code (RFC 8628)
// ---------------------------------------------------------------------------

fn device_code_args(device: &Device) -> Vec<String> {
    let mut list = device.common("device-code");
    list.extend(args(&["--scope", "openid offline_access"]));
    list.extend(args(&["--audience", "mqtt-gateway"]));
    list
}

/// The gaps between the stand-in's polls, in whole seconds rounded down.
fn gaps(polls: &[provider::Poll]) -> Vec<u64> {
    polls
        .windows(2)
        .map(|pair| (pair[1].at - pair[0].at).as_millis() as u64 / 1000)
        .collect()
}

#[test]
fn device_code_shows_the_code_polls_at_the_interval_and_stores_both_tokens() {
    let device = Device::new();
    device.provider.script(DeviceScript {
        answers: vec![PollAnswer::Pending, PollAnswer::Pending],
        ..DeviceScript::default()
    });
    let run = provision(&device_code_args(&device));
    run.ok();
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{run:?}");
    assert!(lines[0].contains(&format!("open {}/activate", device.provider.domain())));
    assert!(lines[0].contains("enter the code WDJB-MJHT"), "{run:?}");
    assert!(
        lines[1].contains("/activate?user_code=WDJB-MJHT"),
        "{run:?}"
    );
    let polls = device.provider.polls();
    let answers: Vec<&str> = polls.iter().map(|poll| poll.answer.as_str()).collect();
    assert_eq!(
        answers,
        ["authorization_pending", "authorization_pending", "approved"]
    );
    assert_eq!(gaps(&polls), [1, 1]);
    assert_eq!(device.provider.violations(), Vec::<String>::new());
    assert_eq!(device.names(), ["device.jwt", "device.jwt.refresh"]);
    assert_eq!(mode(&device.path("device.jwt")), 0o600);
    assert_eq!(mode(&device.path("device.jwt.refresh")), 0o600);

    // `refresh` renews with the refresh token, without the technician.
    let before = device.provider.issued().len();
    let mut list = device.common("refresh");
    list.push("--force".into());
    provision(&list).ok();
    assert_eq!(device.provider.issued().len(), before + 1);
}

#[test]
fn slow_down_adds_five_seconds_to_every_later_poll() {
    let device = Device::new();
    device.provider.script(DeviceScript {
        answers: vec![PollAnswer::SlowDown],
        ..DeviceScript::default()
    });
    provision(&device_code_args(&device)).ok();
    let polls = device.provider.polls();
    let answers: Vec<&str> = polls.iter().map(|poll| poll.answer.as_str()).collect();
    assert_eq!(answers, ["slow_down", "approved"]);
    assert_eq!(gaps(&polls), [6]);
    assert_eq!(device.provider.violations(), Vec::<String>::new());
}

#[test]
fn device_code_refusals_and_expiry_exit_non_zero_and_leave_no_token() {
    for (outcome, cause) in [
        (Outcome::Deny, "declined"),
        (Outcome::Expire, "expired_token"),
    ] {
        let device = Device::new();
        device.provider.script(DeviceScript {
            outcome,
            ..DeviceScript::default()
        });
        let run = refused(&device, &device_code_args(&device), cause);
        assert_eq!(
            run.stderr.lines().count(),
            3,
            "the code, then the error: {run:?}"
        );
    }

    // Never approved: the device gives up by itself when the code expires.
    let device = Device::new();
    device.provider.script(DeviceScript {
        outcome: Outcome::Never,
        expires_in: 3,
        ..DeviceScript::default()
    });
    let run = refused(
        &device,
        &device_code_args(&device),
        "expired before anyone approved it",
    );
    assert!(run.took < Duration::from_secs(5), "{run:?}");
    assert_eq!(device.provider.polls().len(), 2, "{run:?}");

    // The application may not use the grant.
    let device = Device::new();
    device.provider.register(
        CLIENT_ID,
        Registration {
            grants: vec!["client_credentials"],
            ..key_registration(&device.read("keys/device.pub.pem"), Algorithm::ES256, None)
        },
    );
    refused(
        &device,
        &device_code_args(&device),
        "Grant Types > \"Device Code\"",
    );
}

// ---------------------------------------------------------------------------
// keygen, and the help
// ---------------------------------------------------------------------------

#[test]
fn keygen_never_overwrites_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys");
    provision(&args(&["keygen", "--out", &arg(&out)])).ok();
    let key = std::fs::read(out.join("device.key")).unwrap();
    assert_eq!(mode(&out.join("device.key")), 0o600);
    provision(&args(&["keygen", "--out", &arg(&out)])).fails_with("refusing to overwrite");
    provision(&args(&[
        "keygen",
        "--out",
        &arg(&out),
        "--csr",
        "--subject",
        "x",
    ]))
    .fails_with("refusing to overwrite");
    assert_eq!(std::fs::read(out.join("device.key")).unwrap(), key);
    assert!(!out.join("device.csr").exists());
}

#[test]
fn every_new_command_has_an_example_in_its_help() {
    for command in ["client-assertion", "device-code", "keygen"] {
        let run = provision(&args(&[command, "--help"]));
        run.ok();
        assert!(
            run.stdout
                .contains(&format!("jwtgate-provision {command} --")),
            "{command}: {run:?}"
        );
    }
}

/// The packaged refresh unit's command line, expanded with the README's
/// provision.env for a device key, renews by running the grant again.
#[test]
fn the_refresh_units_command_line_renews_with_the_device_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let unit =
        std::fs::read_to_string(root.join("systemd/jwtgate-provision-refresh.service")).unwrap();
    let exec_start = unit
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .unwrap();
    let device = Device::new();
    let provision_args = format!(
        "--key {} --audience mqtt-gateway --ca-file {}",
        arg(&device.path("keys/device.key")),
        arg(&device.provider.ca_file)
    );
    let line = exec_start
        .replace("${PROVISION_DOMAIN}", &device.provider.domain())
        .replace("${PROVISION_CLIENT_ID}", CLIENT_ID)
        .replace("${PROVISION_OUT}", &arg(&device.path("device.jwt")))
        .replace("${PROVISION_MIN_REMAINING}", "10m")
        .replace("$PROVISION_ARGS", &provision_args);
    let mut words = line.split_whitespace().map(str::to_owned);
    assert_eq!(words.next().as_deref(), Some("/usr/bin/jwtgate-provision"));
    let words: Vec<String> = words.collect();
    // No token yet: renewed at once; then fresh: nothing sent.
    assert!(
        provision(&words)
            .ok()
            .stdout
            .contains("wrote the access token")
    );
    assert!(provision(&words).ok().stdout.contains("not refreshed"));
    assert_eq!(device.provider.accepted().len(), 1);
}
