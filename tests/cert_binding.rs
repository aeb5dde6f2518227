//! README, "Tokens bound to devices": with `[tls] client_ca`, a token whose
//! `cnf.x5t#S256` names a client certificate (RFC 8705) is accepted only
//! over a connection that presented that certificate, so a copied token
//! is useless without the device's private key.
//!
//! The real binary over real TLS with real client certificates (made here
//! with rcgen): Mosquitto's `mosquitto_pub --cert/--key` and paho-mqtt's
//! `tls_set(certfile, keyfile)`, over TLS and secure WebSockets, and a raw
//! MQTT 5 client for re-authentication. Refusals say "certificate
//! binding" (CONNACK 5 / 0x87) and are counted as
//! `jwtgate_connects_total{outcome="certificate_binding"}`; a certificate
//! from another CA fails the handshake, counted as a handshake failure.

mod common;

use std::path::{Path, PathBuf};

use common::programs::{
    Driven, Program, Version, connack, mosquitto_connection, program_with_cert, tool,
};
use common::raw5::{Raw5, v5};
use common::scrape::{metrics_port, scrape, value};
use common::{DevBinary, RawClient, now_unix, web};
use jwtgate::tls::Thumbprint;
use serde_json::json;
use tokio::process::Command;

const NOT_AUTHORIZED: u8 = 0x87;
const METRICS: &str = "[metrics]\nlisten = \"127.0.0.1:0\"\n";

/// A client CA with two devices' certificates, and a stranger's from
/// another CA, as PEM files in a directory of their own.
struct Pki {
    dir: tempfile::TempDir,
    ca_pem: String,
}

/// One device's certificate and key.
struct Device {
    cert: PathBuf,
    key: PathBuf,
    thumbprint: String,
}

impl Device {
    fn pem(&self) -> (Vec<u8>, Vec<u8>) {
        (
            std::fs::read(&self.cert).expect("read the certificate"),
            std::fs::read(&self.key).expect("read the key"),
        )
    }
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let (ca_pem, _) = issue_ca(dir.path(), "clients");
        Pki { dir, ca_pem }
    }

    /// A device certificate issued by the clients' CA (`name` the CN).
    fn device(&self, name: &str) -> Device {
        issue(self.dir.path(), "clients", name)
    }

    /// A certificate from a CA the gateway does not trust.
    fn stranger(&self) -> Device {
        issue_ca(self.dir.path(), "rogue");
        issue(self.dir.path(), "rogue", "stranger")
    }
}

/// Makes CA `name` (certificate and key in `dir`); returns its PEM.
fn issue_ca(dir: &Path, name: &str) -> (String, PathBuf) {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    let cert = params.self_signed(&key).expect("self-sign the CA");
    std::fs::write(dir.join(format!("{name}-ca.crt")), cert.pem()).expect("write the CA");
    std::fs::write(dir.join(format!("{name}-ca.key")), key.serialize_pem()).expect("write");
    (cert.pem(), dir.join(format!("{name}-ca.crt")))
}

/// A client certificate for `cn`, issued by CA `ca` of `dir`.
fn issue(dir: &Path, ca: &str, cn: &str) -> Device {
    let ca_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(dir.join(format!("{ca}-ca.key"))).expect("read the CA key"),
    )
    .expect("the CA key");
    let ca_cert = std::fs::read_to_string(dir.join(format!("{ca}-ca.crt"))).expect("read");
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert, ca_key).expect("the issuer");
    let key = rcgen::KeyPair::generate().expect("device key");
    let mut params = rcgen::CertificateParams::new(vec![cn.to_owned()]).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let (cert_path, key_path) = (dir.join(format!("{cn}.crt")), dir.join(format!("{cn}.key")));
    std::fs::write(&cert_path, cert.pem()).expect("write the certificate");
    std::fs::write(&key_path, key.serialize_pem()).expect("write the key");
    Device {
        cert: cert_path,
        key: key_path,
        thumbprint: Thumbprint::of(cert.der()).to_string(),
    }
}

/// A token for `sub` on `bind/#`, bound to `device` when given.
fn token(gw: &DevBinary, sub: &str, device: Option<&Device>) -> String {
    let mut claims = json!({ "sub": sub, "topics": ["bind/#"], "exp": now_unix() + 600 });
    if let Some(device) = device {
        claims["cnf"] = json!({ "x5t#S256": device.thumbprint });
    }
    gw.sign(&claims)
}

/// `mosquitto_pub -d` publishing one QoS 1 message as `client_id`,
/// presenting `device`'s certificate when given: the CONNACK code it
/// printed (`None` when no CONNACK came: the handshake failed).
async fn mosquitto_connack(
    gw: &DevBinary,
    version: Version,
    client_id: &str,
    token: &str,
    device: Option<&Device>,
) -> Option<u8> {
    let mut command = Command::new(tool("mosquitto_pub", "mosquitto-clients"));
    command
        .args(mosquitto_connection(gw, version, client_id, token))
        .args(["-d", "-q", "1", "-t", "bind/x", "-m", "hello"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(device) = device {
        command
            .arg("--cert")
            .arg(&device.cert)
            .arg("--key")
            .arg(&device.key);
    }
    let output = tokio::time::timeout(common::WAIT, command.output())
        .await
        .expect("mosquitto_pub ends")
        .expect("run mosquitto_pub");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let code = text
        .split("received CONNACK (")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|code| code.parse().ok());
    if code == Some(0) {
        assert!(text.contains("received PUBACK"), "{text}");
    }
    code
}

/// paho-mqtt (MQTT 5) presenting `device`'s certificate: its CONNACK code.
async fn paho_connack(
    gw: &DevBinary,
    driven: Driven,
    client_id: &str,
    token: &str,
    device: &Device,
) -> u8 {
    let mut client: Program = program_with_cert(
        gw,
        driven,
        Version::V5,
        client_id,
        token,
        None,
        Some((&device.cert, &device.key)),
    );
    connack(&mut client).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_token_is_accepted_only_with_its_certificate() {
    let pki = Pki::new();
    let (a, b) = (pki.device("device-a"), pki.device("device-b"));
    let gw = DevBinary::start_with_client_ca(&pki.ca_pem, "", "", METRICS).await;
    let bound = token(&gw, "device-a", Some(&a));

    // Its own certificate: in, over MQTT 5 and 3.1.1, with either client.
    for version in [Version::V5, Version::V311] {
        assert_eq!(
            mosquitto_connack(&gw, version, "a-own", &bound, Some(&a)).await,
            Some(0),
            "{version:?}"
        );
    }
    assert_eq!(
        paho_connack(&gw, Driven::Paho, "a-paho", &bound, &a).await,
        0
    );

    // Another valid certificate, or none: refused, 0x87 / 5.
    for (version, code) in [(Version::V5, NOT_AUTHORIZED), (Version::V311, 5)] {
        assert_eq!(
            mosquitto_connack(&gw, version, "a-stolen", &bound, Some(&b)).await,
            Some(code),
            "another certificate, {version:?}"
        );
        assert_eq!(
            mosquitto_connack(&gw, version, "a-bare", &bound, None).await,
            Some(code),
            "no certificate, {version:?}"
        );
    }
    assert_eq!(
        paho_connack(&gw, Driven::Paho, "a-paho-b", &bound, &b).await,
        NOT_AUTHORIZED
    );
    // An unbound token still works, with or without a certificate
    // (client_auth is optional and binding not required).
    let unbound = token(&gw, "device-c", None);
    assert_eq!(
        mosquitto_connack(&gw, Version::V5, "c", &unbound, None).await,
        Some(0)
    );
    assert_eq!(
        mosquitto_connack(&gw, Version::V5, "c", &unbound, Some(&b)).await,
        Some(0)
    );

    let port = metrics_port(&gw).await;
    let scraped = scrape(port).await;
    assert_eq!(
        value(
            &scraped,
            "jwtgate_connects_total{outcome=\"certificate_binding\"}"
        ),
        5.0,
        "each refusal counted once"
    );
    let log = gw.served.log();
    assert!(
        log.contains("certificate binding: the token is bound to another client certificate")
            && log.contains("certificate binding: the token is bound to a client certificate and the connection presented none"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_ca_a_bound_token_is_refused() {
    let pki = Pki::new();
    let a = pki.device("device-a");
    let gw = DevBinary::start("", "").await;
    // mosquitto_pub offers its certificate; the gateway asks for none.
    assert_eq!(
        mosquitto_connack(
            &gw,
            Version::V5,
            "a",
            &token(&gw, "device-a", Some(&a)),
            Some(&a)
        )
        .await,
        Some(NOT_AUTHORIZED)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_certificate_binding_refuses_unbound_tokens() {
    let pki = Pki::new();
    let a = pki.device("device-a");
    let gw = DevBinary::start_with_client_ca(
        &pki.ca_pem,
        "",
        "require_certificate_binding = true\n",
        "",
    )
    .await;
    assert_eq!(
        mosquitto_connack(
            &gw,
            Version::V5,
            "u",
            &token(&gw, "device-a", None),
            Some(&a)
        )
        .await,
        Some(NOT_AUTHORIZED)
    );
    assert_eq!(
        mosquitto_connack(
            &gw,
            Version::V5,
            "b",
            &token(&gw, "device-a", Some(&a)),
            Some(&a)
        )
        .await,
        Some(0)
    );
    assert!(
        gw.served
            .log()
            .contains("require_certificate_binding is on")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_another_ca_fail_the_handshake_and_required_means_required() {
    let pki = Pki::new();
    let (a, stranger) = (pki.device("device-a"), pki.stranger());
    let gw =
        DevBinary::start_with_client_ca(&pki.ca_pem, "client_auth = \"required\"\n", "", METRICS)
            .await;
    let bound = token(&gw, "device-a", Some(&a));
    assert_eq!(
        mosquitto_connack(&gw, Version::V5, "a", &bound, Some(&a)).await,
        Some(0)
    );
    assert_eq!(
        mosquitto_connack(
            &gw,
            Version::V5,
            "s",
            &token(&gw, "s", None),
            Some(&stranger)
        )
        .await,
        None,
        "a certificate of another CA: no handshake"
    );
    assert_eq!(
        mosquitto_connack(&gw, Version::V5, "n", &token(&gw, "n", None), None).await,
        None,
        "required: no certificate, no handshake"
    );
    let port = metrics_port(&gw).await;
    let failures = value(
        &scrape(port).await,
        "jwtgate_tls_handshake_failures_total{reason=\"error\"}",
    );
    assert!(failures >= 2.0, "{failures}");
}

/// Over secure WebSockets the binding holds the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binding_holds_over_websockets() {
    let pki = Pki::new();
    let (a, b) = (pki.device("device-a"), pki.device("device-b"));
    let gw = DevBinary::start_with_client_ca(&pki.ca_pem, "", "", web::WEBSOCKET).await;
    let bound = token(&gw, "device-a", Some(&a));
    assert_eq!(
        paho_connack(&gw, Driven::PahoWss, "a-wss", &bound, &a).await,
        0
    );
    assert_eq!(
        paho_connack(&gw, Driven::PahoWss, "a-wss-b", &bound, &b).await,
        NOT_AUTHORIZED
    );
}

/// MQTT 5 re-authentication must bring a token bound to the same
/// certificate: one bound to another ends the session with 0x87.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauthentication_with_a_token_bound_to_another_certificate_ends_the_session() {
    let pki = Pki::new();
    let (a, b) = (pki.device("device-a"), pki.device("device-b"));
    let gw = DevBinary::start_with_client_ca(&pki.ca_pem, "", "", "").await;
    let (cert, key) = a.pem();
    let connect_as_a = || async {
        let raw = RawClient::connect_with_cert(gw.addr(), &gw.ca, (&cert, &key)).await;
        let connect = v5::Connect::enhanced("device-a", &token(&gw, "device-a", Some(&a)));
        let (device, ack) = Raw5::over(raw, connect).await;
        assert_eq!(ack.reason, 0, "{ack:?}");
        device
    };
    let mut device = connect_as_a().await;
    match device
        .reauthenticate(&token(&gw, "device-a", Some(&a)))
        .await
    {
        Some(v5::Packet::Auth { reason: 0, .. }) => {}
        other => panic!("a token bound to the same certificate: {other:?}"),
    }
    match device
        .reauthenticate(&token(&gw, "device-a", Some(&b)))
        .await
    {
        Some(v5::Packet::Disconnect { reason, .. }) => {
            assert_eq!(reason, NOT_AUTHORIZED)
        }
        other => panic!("a token bound to another certificate: {other:?}"),
    }
    assert_eq!(device.closed().await, None);
}
