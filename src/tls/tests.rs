use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ::aws_lc_rs::encoding::AsDer;
use ::aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::client::{Resumption, Tls12Resumption};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{
    ClientConfig, DEFAULT_VERSIONS, HandshakeKind, RootCertStore, SupportedProtocolVersion,
};

use super::*;
use crate::firstrun::{DevTls, write_dev_tls};

fn dev_tls() -> (tempfile::TempDir, DevTls) {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = write_dev_tls(dir.path()).expect("dev TLS material");
    (dir, tls)
}

fn ca_path(tls: &DevTls) -> &Path {
    tls.ca_cert.as_deref().expect("fresh directory has a CA")
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn leaf(resolver: &CertResolver) -> CertificateDer<'static> {
    resolver.current().cert[0].clone()
}

/// A client that trusts only the development CA at `ca`.
fn client_config(ca: &Path, versions: &[&'static SupportedProtocolVersion]) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(ca).expect("CA certificate") {
        roots.add(cert).expect("CA certificate is valid");
    }
    ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

struct Handshake {
    served_leaf: CertificateDer<'static>,
    kind: Option<HandshakeKind>,
}

/// Runs a full handshake over an in-memory pipe, exchanges one byte each
/// way (which also delivers TLS 1.3 tickets to the client), and reports
/// what the client saw.
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Handshake {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let serve = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut tls = stream::accept(server, tcp).await.expect("server handshake");
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.expect("server read");
        tls.write_all(&byte).await.expect("server write");
        tls.flush().await.expect("server flush");
    });
    let mut tls = TlsConnector::from(client)
        .connect(
            name,
            tokio::net::TcpStream::connect(addr).await.expect("connect"),
        )
        .await
        .expect("client handshake");
    tls.write_all(b"x").await.expect("client write");
    let mut byte = [0u8; 1];
    tls.read_exact(&mut byte).await.expect("client read");
    serve.await.expect("server task");
    let (_, conn) = tls.get_ref();
    assert_eq!(conn.alpn_protocol(), None, "server must not negotiate ALPN");
    Handshake {
        served_leaf: conn.peer_certificates().expect("server certificate")[0].clone(),
        kind: conn.handshake_kind(),
    }
}

#[test]
fn loads_generated_pkcs8_pair() {
    let (_dir, tls) = dev_tls();
    let key = load_certified_key(&tls.server_cert, &tls.server_key).expect("pair loads");
    assert_eq!(key.cert.len(), 1);
}

#[test]
fn loads_sec1_key() {
    let (dir, tls) = dev_tls();
    let PrivateKeyDer::Pkcs8(pkcs8) = read_private_key(&tls.server_key).expect("key") else {
        panic!("generated key is PKCS#8");
    };
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.secret_pkcs8_der())
        .expect("P-256 key");
    let der = pair.private_key().as_der().expect("SEC1 encoding");
    let sec1 = dir.path().join("sec1.key");
    fs::write(&sec1, pem("EC PRIVATE KEY", der.as_ref())).expect("write SEC1 key");
    assert!(matches!(
        read_private_key(&sec1).expect("SEC1 key"),
        PrivateKeyDer::Sec1(_)
    ));
    load_certified_key(&tls.server_cert, &sec1).expect("SEC1 pair loads");
}

#[test]
fn mismatched_pair_is_refused() {
    let (_one, first) = dev_tls();
    let (_two, second) = dev_tls();
    let err =
        load_certified_key(&first.server_cert, &second.server_key).expect_err("mismatched pair");
    assert!(
        matches!(&err, TlsError::KeyMismatch { cert, key }
            if *cert == first.server_cert && *key == second.server_key),
        "{err}"
    );
}

/// The variant's name and the file it blames.
fn blamed(err: &TlsError) -> (&'static str, &Path) {
    match err {
        TlsError::Read { path, .. } => ("Read", path),
        TlsError::Pem { path, .. } => ("Pem", path),
        TlsError::NoCertificate { path } => ("NoCertificate", path),
        TlsError::NoPrivateKey { path } => ("NoPrivateKey", path),
        TlsError::UnsupportedKey { path, .. } => ("UnsupportedKey", path),
        TlsError::InvalidCertificate { path, .. } => ("InvalidCertificate", path),
        TlsError::KeyMismatch { key, .. } => ("KeyMismatch", key),
        TlsError::Config(_) => ("Config", Path::new("")),
        TlsError::InvalidCa { path, .. } => ("InvalidCa", path),
        TlsError::NoSystemRoots => ("NoSystemRoots", Path::new("")),
        TlsError::ClientConfig(_) => ("ClientConfig", Path::new("")),
        TlsError::ClientCa { path, .. } => ("ClientCa", path),
    }
}

#[test]
fn bad_files_are_refused_by_name() {
    let (dir, tls) = dev_tls();
    let (cert, key) = (tls.server_cert.as_path(), tls.server_key.as_path());
    let file = |name: &str, contents: &[u8]| {
        let path = dir.path().join(name);
        fs::write(&path, contents).expect("write test file");
        path
    };
    let empty = file("empty.pem", b"");
    let garbage = file("garbage.pem", b"this is not PEM\n");
    let broken = file(
        "broken.pem",
        b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    let not_der = file("not-der.pem", pem("CERTIFICATE", b"not DER").as_bytes());
    let not_key = file("not-key.pem", pem("PRIVATE KEY", b"not a key").as_bytes());
    let missing = dir.path().join("missing.pem");

    let cases: [(&Path, &Path, &str, &Path); 9] = [
        (&empty, key, "NoCertificate", &empty),
        (&garbage, key, "NoCertificate", &garbage),
        (&broken, key, "Pem", &broken),
        (&not_der, key, "InvalidCertificate", &not_der),
        (&missing, key, "Read", &missing),
        (cert, &empty, "NoPrivateKey", &empty),
        (cert, &garbage, "NoPrivateKey", &garbage),
        // A certificate where the key belongs: swapped arguments.
        (cert, cert, "NoPrivateKey", cert),
        (cert, &not_key, "UnsupportedKey", &not_key),
    ];
    for (cert, key, variant, path) in cases {
        let err = load_certified_key(cert, key).expect_err("bad input refused");
        assert_eq!(blamed(&err), (variant, path), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn failed_reload_keeps_old_pair() {
    let (_one, first) = dev_tls();
    let (_two, second) = dev_tls();
    let resolver = CertResolver::load(&first.server_cert, &first.server_key).expect("load");
    let before = leaf(&resolver);
    let err = resolver
        .reload(&second.server_cert, &first.server_key)
        .expect_err("half-rotated pair");
    assert!(matches!(err, TlsError::KeyMismatch { .. }));
    let err = resolver
        .reload(&first.server_cert.with_extension("gone"), &first.server_key)
        .expect_err("missing file");
    assert!(matches!(err, TlsError::Read { .. }));
    assert_eq!(leaf(&resolver), before);
}

#[tokio::test]
async fn reload_swaps_served_certificate() {
    let (_one, first) = dev_tls();
    let (_two, second) = dev_tls();
    let resolver =
        Arc::new(CertResolver::load(&first.server_cert, &first.server_key).expect("load"));
    let server = server_config(resolver.clone(), None).expect("config");
    let name = ServerName::try_from("localhost").expect("name");

    let old_client = Arc::new(client_config(ca_path(&first), DEFAULT_VERSIONS));
    let old = handshake(server.clone(), old_client, name.clone()).await;
    assert_eq!(old.served_leaf, leaf(&resolver));

    resolver
        .reload(&second.server_cert, &second.server_key)
        .expect("good pair");
    let new_client = Arc::new(client_config(ca_path(&second), DEFAULT_VERSIONS));
    let new = handshake(server, new_client, name).await;
    assert_ne!(new.served_leaf, old.served_leaf);
    assert_eq!(new.served_leaf, leaf(&resolver));
}

#[tokio::test]
async fn handshakes_by_name_and_by_ip() {
    let (_dir, tls) = dev_tls();
    let resolver = Arc::new(CertResolver::load(&tls.server_cert, &tls.server_key).expect("load"));
    let server = server_config(resolver, None).expect("config");
    let plain = client_config(ca_path(&tls), DEFAULT_VERSIONS);
    // Built afresh: a clone would share the session store, and resume.
    let mut mqtt = client_config(ca_path(&tls), DEFAULT_VERSIONS);
    mqtt.alpn_protocols = vec![b"mqtt".to_vec()];
    let names = [
        ServerName::try_from("localhost").expect("name"),
        // rustls sends no SNI for an IP address.
        ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into()),
        ServerName::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST).into()),
    ];
    // Devices may offer ALPN "mqtt" or no ALPN at all; neither is refused.
    for client in [Arc::new(plain), Arc::new(mqtt)] {
        for name in names.clone() {
            let done = handshake(server.clone(), client.clone(), name).await;
            assert_eq!(done.kind, Some(HandshakeKind::Full));
        }
    }
}

#[tokio::test]
async fn sessions_resume_on_tls12_and_tls13() {
    let (_dir, tls) = dev_tls();
    let resolver = Arc::new(CertResolver::load(&tls.server_cert, &tls.server_key).expect("load"));
    let server = server_config(resolver, None).expect("config");
    let cases = [
        (&rustls::version::TLS13, Tls12Resumption::SessionIdOrTickets),
        (&rustls::version::TLS12, Tls12Resumption::SessionIdOrTickets),
        // Many embedded TLS stacks resume by session ID only, which
        // exercises the server's session cache rather than its tickets.
        (&rustls::version::TLS12, Tls12Resumption::SessionIdOnly),
    ];
    for (version, tls12) in cases {
        // A fresh client per case, so the second connection can only
        // resume a session from the first.
        let mut client = client_config(ca_path(&tls), &[version]);
        client.resumption = Resumption::in_memory_sessions(8).tls12_resumption(tls12);
        let client = Arc::new(client);
        let name = ServerName::try_from("localhost").expect("name");
        let first = handshake(server.clone(), client.clone(), name.clone()).await;
        assert_eq!(
            first.kind,
            Some(HandshakeKind::Full),
            "{version:?} {tls12:?}"
        );
        let again = handshake(server.clone(), client, name).await;
        assert_eq!(
            again.kind,
            Some(HandshakeKind::Resumed),
            "{version:?} {tls12:?}"
        );
    }
}

/// A CA and a client certificate it issued, as PEM, and the client's DER.
fn client_pki(name: &str) -> (String, String, CertificateDer<'static>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), cert.der().clone())
}

#[test]
fn client_certificates_of_the_ca_in_force_verify_and_a_broken_reload_keeps_it() {
    use tokio_rustls::rustls::pki_types::UnixTime;
    use tokio_rustls::rustls::server::danger::ClientCertVerifier;
    let dir = tempfile::tempdir().unwrap();
    let (ca_a, _, device_a) = client_pki("device-a");
    let (ca_b, _, device_b) = client_pki("device-b");
    let ca = dir.path().join("clients-ca.crt");
    fs::write(&ca, &ca_a).unwrap();
    let verifier = ClientVerifier::load(&ca, false).unwrap();
    assert!(!verifier.client_auth_mandatory());
    assert!(
        ClientVerifier::load(&ca, true)
            .unwrap()
            .client_auth_mandatory()
    );
    let now = UnixTime::now();
    assert!(verifier.verify_client_cert(&device_a, &[], now).is_ok());
    assert!(verifier.verify_client_cert(&device_b, &[], now).is_err());
    // A CA file turned to garbage: refused, the CA in force kept.
    fs::write(&ca, "not PEM").unwrap();
    assert!(verifier.reload(&ca).is_err());
    assert!(verifier.verify_client_cert(&device_a, &[], now).is_ok());
    // Rotated to the other CA: the other devices verify.
    fs::write(&ca, &ca_b).unwrap();
    verifier.reload(&ca).unwrap();
    assert!(verifier.verify_client_cert(&device_b, &[], now).is_ok());
    assert!(verifier.verify_client_cert(&device_a, &[], now).is_err());
}

#[test]
fn a_thumbprint_is_the_base64url_sha256_of_the_der() {
    let der = CertificateDer::from(b"not really a certificate".to_vec());
    let shown = Thumbprint::of(&der).to_string();
    assert_eq!(shown.len(), 43, "32 bytes, unpadded base64url");
    assert!(!shown.contains(['+', '/', '=']));
    // echo -n 'not really a certificate' | openssl dgst -sha256 -binary | basenc --base64url
    assert_eq!(shown, "1hgiVeVznVX8l4F1nHqCPU3_PSt9F5SecIXufAzCKs8");
}
