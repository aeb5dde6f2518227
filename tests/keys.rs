//! Integration tests for the keys directory (issue 3): every supported
//! algorithm, the refusals that keep the token policy strict, hot reload of
//! keys and certificate by dropping files, revocation by removing a key or
//! through the deny list, SIGHUP, and `jwtgate check`. The real gateway,
//! over real TLS, with rumqttc clients and real files in temporary
//! directories.
//!
//! A reload is asynchronous (a file watcher, then a 200 ms debounce), so no
//! test sleeps and hopes. Each waits for evidence that the reload it caused
//! has happened: a token that starts to be accepted or refused, a live
//! connection that is closed, a line in the log. The limits on those waits
//! only keep a broken test from hanging; none is a speed requirement
//! (`benches/rotation.rs` measures the speed).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::jwk::{self, b64url};
use common::{
    ServedBinary, TestGateway, V4Client, V5Client, capture_logs, device_claims, drop_secret,
    kubelet_update, now_unix, sign_hs256_kid, sign_jwt, v4_options_for, write_atomically,
};
use jsonwebtoken::{Algorithm, EncodingKey};
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as Code5, DisconnectReasonCode};
use rumqttc::{ConnectReturnCode, QoS};
use serde_json::{Value, json};

/// How long a test waits for a reload to show before it fails. The issue's
/// target is 1 s; this only catches a reload that never comes.
const RELOAD_LIMIT: Duration = Duration::from_secs(5);

/// What a CONNECT with a revoked token gets: the token is authentic but the
/// identity may not connect, so "not authorized", the same code a live
/// connection's DISCONNECT carries when it is revoked.
const REVOKED_AT_CONNECT: ConnectReturnCode = ConnectReturnCode::NotAuthorized;

/// A gateway for this binary's tests, once its file watcher is up. The log
/// capture has to be installed before the first gateway logs, so every
/// test starts its gateway here.
async fn start() -> TestGateway {
    let logs = capture_logs();
    let gw = TestGateway::start().await;
    // The watcher starts when the gateway starts running, a moment after
    // `start` returns; a file dropped before then would go unnoticed.
    for dir in [gw.keys_dir().to_path_buf(), gw.keys_dir().join("tls")] {
        let field = format!("dir={}", dir.display());
        logs.wait_for(0, &format!("the watch on {field}"), |line| {
            line.contains("watching for key and certificate changes") && line.ends_with(&field)
        })
        .await;
    }
    gw
}

/// `claims` with the members of `extra` added or replaced.
fn with(mut claims: Value, extra: Value) -> Value {
    for (name, value) in extra.as_object().expect("extra claims are an object") {
        claims[name] = value.clone();
    }
    claims
}

/// A client id no other connection of this test binary uses, so that no
/// probe takes over another's session.
fn probe_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("probe-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Where probes connect: a gateway's port and the CA it is trusted by.
#[derive(Clone, Copy)]
struct Target<'a> {
    port: u16,
    ca_pem: &'a [u8],
}

impl<'a> Target<'a> {
    fn of(gw: &'a TestGateway) -> Target<'a> {
        Target {
            port: gw.port(),
            ca_pem: gw.ca_pem(),
        }
    }

    /// The CONNACK code a fresh MQTT 3.1.1 connection gets with `token`.
    async fn connack(self, token: &str) -> ConnectReturnCode {
        let opts = v4_options_for(self.port, self.ca_pem, &probe_id(), token);
        V4Client::start(opts).connack().await.code
    }

    /// The CONNACK reason a fresh MQTT 5 connection gets with `token`.
    async fn connack_v5(self, token: &str) -> Code5 {
        let opts = common::v5_options_for(self.port, self.ca_pem, &probe_id(), token);
        V5Client::start(opts).connack().await.code
    }

    /// Connects with `token` until the CONNACK is `want`: the evidence that
    /// a reload has happened. Panics after [`RELOAD_LIMIT`].
    async fn until(self, token: &str, want: ConnectReturnCode) {
        let deadline = Instant::now() + RELOAD_LIMIT;
        loop {
            let got = self.connack(token).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still {got:?}, not {want:?}, {RELOAD_LIMIT:?} after the change"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Algorithms and the strict policy
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_is_accepted_from_a_dropped_jwks_and_a_b64_secret() {
    let gw = start().await;
    let target = Target::of(&gw);
    let (rsa, ec, ed) = (jwk::rsa("rsa-1"), jwk::ec("ec-1"), jwk::ed("ed-1"));
    let tokens: Vec<(Algorithm, String)> = [
        (Algorithm::RS256, &rsa),
        (Algorithm::PS256, &rsa),
        (Algorithm::ES256, &ec),
        (Algorithm::EdDSA, &ed),
    ]
    .into_iter()
    .map(|(alg, key)| {
        let kid = key.jwk["kid"].as_str().expect("the JWK has a kid");
        (
            alg,
            sign_jwt(alg, Some(kid), &device_claims("d1"), &key.encoding_key()),
        )
    })
    .collect();
    // Not yet: the JWKS is not there.
    assert_eq!(
        target.connack(&tokens[0].1).await,
        ConnectReturnCode::BadUserNamePassword
    );
    // HS256 with the gateway's `dev.b64`.
    let hs = gw.token_signed_by(
        "dev",
        "d-hs",
        &["devices/d-hs/#"],
        Duration::from_secs(3600),
    );
    assert_eq!(target.connack(&hs).await, ConnectReturnCode::Success);

    let jwks = jwk::jwks(&[rsa.jwk.clone(), ec.jwk.clone(), ed.jwk.clone()]);
    write_atomically(&gw.keys_dir().join("idp.json"), jwks);
    // Without a restart, once the watcher has reloaded.
    target.until(&tokens[0].1, ConnectReturnCode::Success).await;
    for (alg, token) in &tokens {
        assert_eq!(
            target.connack(token).await,
            ConnectReturnCode::Success,
            "{alg:?} over MQTT 3.1.1"
        );
        assert_eq!(
            target.connack_v5(token).await,
            Code5::Success,
            "{alg:?} over MQTT 5"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_alg_confusion_and_alg_none_are_refused() {
    let gw = start().await;
    let logs = capture_logs();
    let target = Target::of(&gw);
    let rsa = jwk::rsa("rsa-1");
    write_atomically(
        &gw.keys_dir().join("idp.json"),
        jwk::jwks(std::slice::from_ref(&rsa.jwk)),
    );
    let genuine = sign_jwt(
        Algorithm::RS256,
        Some("rsa-1"),
        &device_claims("d1"),
        &rsa.encoding_key(),
    );
    target.until(&genuine, ConnectReturnCode::Success).await;

    // A kid unique to this test, to find its own refusal in the log.
    let unknown_kid = format!("unknown-{}", gw.port());
    // The "HMAC secret" an attacker knows: the RSA public key, as PEM.
    let public_pem = EncodingKey::from_secret(rsa.pair.public_key_pem().as_bytes());
    let none = |header: Value| {
        let encode = |value: &Value| b64url(value.to_string().as_bytes());
        format!("{}.{}.", encode(&header), encode(&device_claims("d1")))
    };
    let refused = [
        (
            "unknown kid",
            sign_hs256_kid(&gw.secret(), &unknown_kid, &device_claims("d1")),
        ),
        (
            "HS256 with the RSA public key, naming the RSA key",
            sign_jwt(
                Algorithm::HS256,
                Some("rsa-1"),
                &device_claims("d1"),
                &public_pem,
            ),
        ),
        (
            "HS256 with the RSA public key, naming no key",
            sign_jwt(Algorithm::HS256, None, &device_claims("d1"), &public_pem),
        ),
        ("alg none", none(json!({ "alg": "none" }))),
        (
            "alg none naming a key",
            none(json!({ "alg": "none", "kid": "dev" })),
        ),
    ];
    let since = logs.position();
    for (what, token) in &refused {
        assert_eq!(
            target.connack(token).await,
            ConnectReturnCode::BadUserNamePassword,
            "{what}: MQTT 3.1.1"
        );
        assert_eq!(
            target.connack_v5(token).await,
            Code5::BadUserNamePassword,
            "{what}: MQTT 5"
        );
    }
    // The refusal names the unknown kid.
    logs.wait_for_line(
        since,
        &[
            "connection refused",
            &format!("no key has id \"{unknown_kid}\""),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------
// Rotation and revocation by files
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_secret_refuses_its_tokens_and_closes_its_connections() {
    let gw = start().await;
    let target = Target::of(&gw);
    let next_secret = b"the next fleet secret, 32 bytes!";
    drop_secret(gw.keys_dir(), "next", next_secret);
    let next_token = sign_hs256_kid(next_secret, "next", &device_claims("new-1"));
    target.until(&next_token, ConnectReturnCode::Success).await;

    let old_token = gw.token_signed_by(
        "dev",
        "old-1",
        &["devices/old-1/#"],
        Duration::from_secs(3600),
    );
    let mut on_old = gw.v5_connected("on-old-key", &old_token).await;
    let mut on_next = gw.v5_connected("on-next-key", &next_token).await;

    std::fs::remove_file(gw.keys_dir().join("dev.b64")).expect("remove dev.b64");
    let end = on_old.closed().await;
    assert_eq!(
        end.disconnect,
        Some(DisconnectReasonCode::NotAuthorized),
        "{end:?}"
    );
    // That connection was closed by the reload that dropped the key, so
    // the key is gone for new connections too.
    assert_eq!(
        target.connack(&old_token).await,
        ConnectReturnCode::BadUserNamePassword
    );
    // The connection on the new key is untouched and still works.
    on_next
        .subscribe("devices/new-1/#", QoS5::AtLeastOnce)
        .await;
    on_next
        .publish("devices/new-1/t", QoS5::AtLeastOnce, false, b"still here")
        .await;
    assert_eq!(
        &on_next.expect_publish("devices/new-1/t").await.payload[..],
        b"still here"
    );
    on_next.assert_alive().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_secrets_are_reported_and_cannot_sign_a_token() {
    let gw = start().await;
    let logs = capture_logs();
    let target = Target::of(&gw);
    let short_secret = b"sixteen bytes!!!";
    // Long enough for HS256, not for HS384 (48 bytes).
    let mid_secret = b"forty bytes: enough for HS256 only......";
    let short_file = gw.keys_dir().join("short.b64").display().to_string();
    let since = logs.position();
    drop_secret(gw.keys_dir(), "short", short_secret);
    drop_secret(gw.keys_dir(), "mid", mid_secret);
    let on_mid = sign_hs256_kid(mid_secret, "mid", &device_claims("d1"));
    target.until(&on_mid, ConnectReturnCode::Success).await;
    logs.wait_for_line(
        since,
        &[
            "keys directory problem",
            &short_file,
            "the secret is 16 bytes long; HS256 needs at least 32",
        ],
    )
    .await;

    let short_key = EncodingKey::from_secret(short_secret);
    let mid_key = EncodingKey::from_secret(mid_secret);
    let refused = [
        sign_jwt(
            Algorithm::HS256,
            Some("short"),
            &device_claims("d1"),
            &short_key,
        ),
        // Tried against every HMAC key in force, and none is this one.
        sign_jwt(Algorithm::HS256, None, &device_claims("d1"), &short_key),
        sign_jwt(
            Algorithm::HS384,
            Some("mid"),
            &device_claims("d1"),
            &mid_key,
        ),
        sign_jwt(Algorithm::HS384, None, &device_claims("d1"), &mid_key),
    ];
    let since = logs.position();
    for token in &refused {
        assert_eq!(
            target.connack(token).await,
            ConnectReturnCode::BadUserNamePassword
        );
    }
    logs.wait_for_line(
        since,
        &[
            "connection refused",
            "key \"mid\" does not allow signature algorithm HS384",
        ],
    )
    .await;
    // The keys in force before are untouched.
    let on_dev = gw.token_signed_by("dev", "d2", &["devices/d2/#"], Duration::from_secs(3600));
    assert_eq!(target.connack(&on_dev).await, ConnectReturnCode::Success);
}

/// Spoils the JWKS at the path; given the good new version to spoil.
type BadWrite = fn(&Path, &str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_and_half_written_files_leave_the_old_keys_in_force() {
    let gw = start().await;
    let logs = capture_logs();
    let target = Target::of(&gw);
    let idp = gw.keys_dir().join("idp.json");
    let idp_name = idp.display().to_string();
    let (ec_1, ec_2) = (jwk::ec("ec-1"), jwk::ec("ec-2"));
    let on_ec_1 = sign_jwt(
        Algorithm::ES256,
        Some("ec-1"),
        &device_claims("d1"),
        &ec_1.encoding_key(),
    );
    let on_ec_2 = sign_jwt(
        Algorithm::ES256,
        Some("ec-2"),
        &device_claims("d2"),
        &ec_2.encoding_key(),
    );
    write_atomically(&idp, jwk::jwks(std::slice::from_ref(&ec_1.jwk)));
    target.until(&on_ec_1, ConnectReturnCode::Success).await;

    // Each bad write goes with a good key dropped after it: once that key
    // is accepted, the reload that loaded it has read the bad file too.
    let bad_writes: [(&str, BadWrite); 2] = [
        ("garbage replacing the JWKS atomically", |path, _| {
            write_atomically(path, "{\"keys\": [ this is not JSON");
        }),
        ("a truncated new version written in place", |path, good| {
            std::fs::write(path, &good[..good.len() / 2]).expect("write half a JWKS");
        }),
    ];
    let new_version = jwk::jwks(std::slice::from_ref(&ec_2.jwk));
    for (round, (what, write_bad)) in bad_writes.into_iter().enumerate() {
        let since = logs.position();
        write_bad(&idp, &new_version);
        let evidence_secret = format!("evidence secret of round {round}......");
        let evidence_kid = format!("evidence-{round}");
        drop_secret(gw.keys_dir(), &evidence_kid, evidence_secret.as_bytes());
        let evidence = sign_hs256_kid(
            evidence_secret.as_bytes(),
            &evidence_kid,
            &device_claims("d3"),
        );
        target.until(&evidence, ConnectReturnCode::Success).await;

        assert_eq!(
            target.connack(&on_ec_1).await,
            ConnectReturnCode::Success,
            "{what}"
        );
        assert_eq!(
            target.connack(&on_ec_2).await,
            ConnectReturnCode::BadUserNamePassword,
            "{what}"
        );
        logs.wait_for_line(
            since,
            &[
                "keys directory problem",
                &idp_name,
                "(1 keys) stays in force",
            ],
        )
        .await;
    }

    // A good version, written in place, replaces the kept one.
    std::fs::write(&idp, &new_version).expect("write the JWKS");
    target.until(&on_ec_2, ConnectReturnCode::Success).await;
    assert_eq!(
        target.connack(&on_ec_1).await,
        ConnectReturnCode::BadUserNamePassword
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_list_refuses_at_connect_and_closes_matching_connections() {
    let gw = start().await;
    let logs = capture_logs();
    let target = Target::of(&gw);
    let spare_secret = b"a spare secret for the kid entry";
    drop_secret(gw.keys_dir(), "spare", spare_secret);
    let dev = gw.secret();
    let by_jti = sign_hs256_kid(
        &dev,
        "dev",
        &with(device_claims("d1"), json!({ "jti": "leaked-1" })),
    );
    let by_sub = sign_hs256_kid(
        &dev,
        "dev",
        &with(device_claims("stolen"), json!({ "jti": "s-1" })),
    );
    let by_kid = sign_hs256_kid(spare_secret, "spare", &device_claims("d3"));
    let fine = sign_hs256_kid(
        &dev,
        "dev",
        &with(device_claims("d4"), json!({ "jti": "fine" })),
    );
    target.until(&by_kid, ConnectReturnCode::Success).await;

    let mut live = Vec::new();
    for (id, token) in [("jti", &by_jti), ("sub", &by_sub), ("kid", &by_kid)] {
        live.push((id, gw.v5_connected(&format!("denied-by-{id}"), token).await));
    }
    let mut untouched = gw.v5_connected("not-denied", &fine).await;

    let revoked = gw.keys_dir().join("revoked");
    let since = logs.position();
    write_atomically(
        &revoked,
        "# incident 42\n\
         jti:leaked-1   # one leaked token\n\
         sub:stolen     # every token of a stolen unit\n\
         \n\
         kid:spare\n\
         stolen         # no kind: reported and skipped\n",
    );
    for (id, mut client) in live {
        let end = client.closed().await;
        assert_eq!(
            end.disconnect,
            Some(DisconnectReasonCode::NotAuthorized),
            "the connection denied by {id}: {end:?}"
        );
    }
    // The reload that closed them is the one new CONNECTs are judged by.
    let another_of_stolen = sign_hs256_kid(
        &dev,
        "dev",
        &with(device_claims("stolen"), json!({ "jti": "s-2" })),
    );
    for token in [&by_jti, &by_sub, &another_of_stolen, &by_kid] {
        assert_eq!(target.connack(token).await, REVOKED_AT_CONNECT);
    }
    assert_eq!(target.connack(&fine).await, ConnectReturnCode::Success);
    untouched.subscribe("devices/d4/#", QoS5::AtLeastOnce).await;
    untouched
        .publish("devices/d4/t", QoS5::AtLeastOnce, false, b"ok")
        .await;
    untouched.expect_publish("devices/d4/t").await;
    // The malformed line is reported with its file and line; the entries
    // around it are in force (above).
    logs.wait_for_line(
        since,
        &[
            "keys directory problem",
            &revoked.display().to_string(),
            "line 6: no \"kind:\" prefix",
        ],
    )
    .await;

    // Taking an entry out admits its tokens again.
    write_atomically(&revoked, "jti:leaked-1\nkid:spare\n");
    target.until(&by_sub, ConnectReturnCode::Success).await;
    assert_eq!(target.connack(&by_jti).await, REVOKED_AT_CONNECT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_secret_update_swaps_the_key() {
    let gw = start().await;
    let target = Target::of(&gw);
    let (old_secret, new_secret) = (
        b"the mounted secret before update",
        b"the mounted secret after update.",
    );
    let old_token = sign_hs256_kid(old_secret, "k8s", &device_claims("k1"));
    let new_token = sign_hs256_kid(new_secret, "k8s", &device_claims("k2"));
    kubelet_update(
        gw.keys_dir(),
        "2026_12_01_14_00_00.123456789",
        &[("k8s.b64", old_secret)],
    );
    target.until(&old_token, ConnectReturnCode::Success).await;
    let mut on_old = gw.v5_connected("on-old-mount", &old_token).await;

    // The update touches nothing but the kubelet's `..` names: `k8s.b64`
    // is the same link before and after.
    kubelet_update(
        gw.keys_dir(),
        "2026_12_01_14_05_00.987654321",
        &[("k8s.b64", new_secret)],
    );
    target.until(&new_token, ConnectReturnCode::Success).await;
    assert_eq!(
        target.connack(&old_token).await,
        ConnectReturnCode::BadUserNamePassword
    );
    let end = on_old.closed().await;
    assert_eq!(
        end.disconnect,
        Some(DisconnectReasonCode::NotAuthorized),
        "{end:?}"
    );
    // The kubelet's names are followed, never loaded as keys.
    let kids: Vec<String> = gw
        .key_store()
        .snapshot()
        .iter()
        .map(|key| key.id().to_owned())
        .collect();
    assert_eq!(kids, ["dev", "k8s"]);
}

// ---------------------------------------------------------------------------
// The server certificate
// ---------------------------------------------------------------------------

/// The first certificate of a PEM file, as DER.
fn leaf_der(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).expect("read the certificate");
    rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .expect("a certificate in the file")
        .expect("the certificate decodes")
        .to_vec()
}

/// A new server certificate and key for localhost from the gateway's own
/// development CA, in a directory of their own.
fn new_leaf_from_the_dev_ca(gw: &TestGateway) -> (tempfile::TempDir, jwtgate::firstrun::DevTls) {
    let dir = tempfile::tempdir().expect("temp dir");
    for file in ["ca.crt", "ca.key"] {
        std::fs::copy(gw.keys_dir().join("tls").join(file), dir.path().join(file))
            .expect("copy the dev CA");
    }
    let tls = jwtgate::firstrun::write_dev_tls(dir.path()).expect("issue a new leaf");
    (dir, tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_certificate_serves_new_handshakes_and_keeps_connections() {
    let gw = start().await;
    let logs = capture_logs();
    let tls_dir = gw.keys_dir().join("tls");
    let (server_crt, server_key) = (tls_dir.join("server.crt"), tls_dir.join("server.key"));
    let token = gw.token("tls-1", &["devices/tls-1/#"], Duration::from_secs(3600));
    let mut live = gw.v4_connected("tls-live", &token).await;
    live.subscribe("devices/tls-1/#", QoS::AtLeastOnce).await;
    let first = leaf_der(&server_crt);
    assert_eq!(gw.raw().await.peer_certificate(), first);

    // The key first, then the certificate, each atomically: the debounce
    // makes the watcher read them as one change.
    let (_second_dir, second) = new_leaf_from_the_dev_ca(&gw);
    let second_der = leaf_der(&second.server_cert);
    assert_ne!(second_der, first);
    write_atomically(
        &server_key,
        std::fs::read(&second.server_key).expect("read the new key"),
    );
    write_atomically(
        &server_crt,
        std::fs::read(&second.server_cert).expect("read the new certificate"),
    );
    let deadline = Instant::now() + RELOAD_LIMIT;
    while gw.raw().await.peer_certificate() != second_der {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The connection made under the first certificate is up and working.
    live.publish(
        "devices/tls-1/t",
        QoS::AtLeastOnce,
        false,
        b"after the swap",
    )
    .await;
    assert_eq!(
        &live.expect_publish("devices/tls-1/t").await.payload[..],
        b"after the swap"
    );
    live.assert_alive().await;

    // A key that does not belong to the certificate: reported, and the
    // second certificate stays. Once the refusal is logged, the files do
    // not change again, so neither does the certificate in force.
    let (_third_dir, third) = new_leaf_from_the_dev_ca(&gw);
    let since = logs.position();
    write_atomically(
        &server_key,
        std::fs::read(&third.server_key).expect("read the third key"),
    );
    logs.wait_for_line(
        since,
        &[
            "TLS reload failed",
            "does not belong to certificate",
            &server_key.display().to_string(),
        ],
    )
    .await;
    assert_eq!(gw.raw().await.peer_certificate(), second_der);
    assert_eq!(
        Target::of(&gw).connack(&token).await,
        ConnectReturnCode::Success
    );
}

// ---------------------------------------------------------------------------
// The binary: SIGHUP and `jwtgate check`
// ---------------------------------------------------------------------------

/// Writes `jwtgate.toml` in `dir`: keys in `dir/keys`, the certificate in
/// `dir/tls`.
fn write_config(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("jwtgate.toml");
    std::fs::write(
        &config,
        "[tls]\ncert = \"tls/server.crt\"\nkey = \"tls/server.key\"\n\n[auth]\nkeys_dir = \"keys\"\n",
    )
    .expect("write the config");
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_keys() {
    // To tell a SIGHUP reload from a watcher reload, the keys directory is
    // a symbolic link, `keys -> keys-a`. inotify resolves the link when the
    // watch is added, so the watcher watches `keys-a` itself. Pointing the
    // link at `keys-b` (an atomic rename in the unwatched parent) changes
    // what a reload reads without any event the watcher sees: the new key
    // can only come into force through the SIGHUP.
    let root = tempfile::tempdir().expect("temp dir");
    let tls = jwtgate::firstrun::write_dev_tls(&root.path().join("tls")).expect("dev TLS");
    let ca_pem = std::fs::read(tls.ca_cert.expect("a dev CA")).expect("read the CA");
    let (old_secret, new_secret) = (
        b"the old secret, before the HUP..",
        b"the new secret, after the HUP...",
    );
    for dir in ["keys-a", "keys-b"] {
        std::fs::create_dir(root.path().join(dir)).expect("create a keys dir");
        drop_secret(&root.path().join(dir), "old", old_secret);
    }
    drop_secret(&root.path().join("keys-b"), "new", new_secret);
    std::os::unix::fs::symlink("keys-a", root.path().join("keys")).expect("link keys");
    let served =
        ServedBinary::start(&write_config(root.path()), root.path().join("serve.log")).await;
    let target = Target {
        port: served.port(),
        ca_pem: &ca_pem,
    };
    let old_token = sign_hs256_kid(old_secret, "old", &device_claims("d1"));
    let new_token = sign_hs256_kid(new_secret, "new", &device_claims("d2"));
    assert_eq!(target.connack(&old_token).await, ConnectReturnCode::Success);
    assert_eq!(
        target.connack(&new_token).await,
        ConnectReturnCode::BadUserNamePassword
    );

    // The control: the watcher is up, and watches `keys-a`. A key dropped
    // there comes into force without a signal.
    let probe_secret = b"a probe for the watcher, in keys-a";
    drop_secret(&root.path().join("keys-a"), "probe", probe_secret);
    let probe_token = sign_hs256_kid(probe_secret, "probe", &device_claims("d3"));
    target.until(&probe_token, ConnectReturnCode::Success).await;

    let link = root.path().join(".keys.tmp");
    std::os::unix::fs::symlink("keys-b", &link).expect("link keys-b");
    std::fs::rename(&link, root.path().join("keys")).expect("swap the link");
    // No reload happens without the signal: well past the watcher's
    // debounce (and the reload the control took, well under a second), the
    // new key is still refused and the probe, which only `keys-a` holds,
    // still accepted.
    tokio::time::sleep(10 * jwtgate::reload::DEBOUNCE).await;
    assert_eq!(
        target.connack(&new_token).await,
        ConnectReturnCode::BadUserNamePassword,
        "the watcher saw the link swap:\n{}",
        served.log()
    );
    assert_eq!(
        target.connack(&probe_token).await,
        ConnectReturnCode::Success,
        "keys reloaded without the signal:\n{}",
        served.log()
    );

    served.signal("HUP");
    // The reload read `keys-b`: its new key is in force, the probe's gone.
    target.until(&new_token, ConnectReturnCode::Success).await;
    assert_eq!(
        target.connack(&probe_token).await,
        ConnectReturnCode::BadUserNamePassword
    );
    assert_eq!(target.connack(&old_token).await, ConnectReturnCode::Success);
}

/// Runs `jwtgate check --config CONFIG ARGS`, with `stdin` as its input;
/// returns the exit code and standard output.
fn run_check(config: &Path, args: &[&str], stdin: &str) -> (i32, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .arg("check")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn jwtgate check");
    child
        .stdin
        .take()
        .expect("a stdin pipe")
        .write_all(stdin.as_bytes())
        .expect("write the token to stdin");
    let out = child.wait_with_output().expect("jwtgate check finishes");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    let code = out.status.code().expect("an exit code, not a signal");
    (code, stdout)
}

#[test]
fn check_command_says_whether_and_why() {
    let root = tempfile::tempdir().expect("temp dir");
    let keys = root.path().join("keys");
    std::fs::create_dir(&keys).expect("create the keys dir");
    let secret = b"the fleet secret for the check...";
    drop_secret(&keys, "fleet", secret);
    std::fs::write(keys.join("revoked"), "sub:stolen\n").expect("write the deny list");
    let config = write_config(root.path());
    let valid = sign_hs256_kid(
        secret,
        "fleet",
        &with(
            device_claims("dev-9"),
            json!({ "topics": ["devices/dev-9/#", "config"] }),
        ),
    );

    let (code, out) = run_check(&config, &[&valid], "");
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("valid:"), "{out}");
    let key_file = keys.join("fleet.b64").display().to_string();
    assert!(
        out.contains(&format!("key:      fleet ({key_file})")),
        "{out}"
    );
    assert!(out.contains("subject:  dev-9"), "{out}");
    // In filter order, not the token's.
    assert!(out.contains("topics:   config, devices/dev-9/#"), "{out}");

    let (code, out) = run_check(&config, &["--json", &valid], "");
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(report["accepted"], json!(true), "{report}");
    assert_eq!(report["key_id"], json!("fleet"));
    assert_eq!(report["key_file"], json!(key_file));
    assert_eq!(report["subject"], json!("dev-9"));
    assert_eq!(report["topics"], json!(["config", "devices/dev-9/#"]));

    // From stdin, with the newline a pipe brings.
    let (code, out) = run_check(&config, &["-"], &format!("{valid}\n"));
    assert_eq!(code, 0, "{out}");

    let refused = [
        (
            sign_hs256_kid(secret, "fleet", &device_claims("stolen")),
            "refused: revoked by the deny-list entry \"sub:stolen\"",
        ),
        (
            sign_hs256_kid(
                secret,
                "fleet",
                &with(device_claims("dev-9"), json!({ "exp": now_unix() - 3600 })),
            ),
            "refused: expired at",
        ),
        (
            sign_hs256_kid(secret, "nope", &device_claims("dev-9")),
            "refused: no key has id \"nope\"",
        ),
    ];
    for (token, reason) in &refused {
        let (code, out) = run_check(&config, &[token], "");
        assert_eq!(code, 1, "{out}");
        assert!(out.starts_with(reason), "{out}");
        let (code, out) = run_check(&config, &["--json", token], "");
        assert_eq!(code, 1, "{out}");
        let report: Value = serde_json::from_str(&out).expect("--json prints JSON");
        assert_eq!(report["accepted"], json!(false), "{report}");
    }
    // The revoked token names the key that verified it.
    let (_, out) = run_check(&config, &[&refused[0].0], "");
    assert!(out.contains("key:      fleet"), "{out}");
}

#[test]
fn check_warns_about_a_secret_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().expect("temp dir");
    let keys = root.path().join("keys");
    std::fs::create_dir(&keys).expect("create the keys dir");
    let secret = b"a fleet secret left world-readab";
    drop_secret(&keys, "fleet", secret);
    let key_file = keys.join("fleet.b64");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644))
        .expect("chmod the secret");
    let token = sign_hs256_kid(secret, "fleet", &device_claims("dev-9"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .arg("check")
        .arg("--config")
        .arg(write_config(root.path()))
        .arg(&token)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .output()
        .expect("run jwtgate check");
    let stderr = String::from_utf8(out.stderr).expect("UTF-8 log");
    // A warning, not a refusal: the key is in force.
    assert!(out.status.success(), "{stderr}");
    let warning = stderr
        .lines()
        .find(|line| line.contains("keys directory warning"))
        .unwrap_or_else(|| panic!("no warning in {stderr:?}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(&key_file.display().to_string()),
        "{warning}"
    );
    assert!(warning.contains("mode 0644"), "{warning}");
}

/// The repository's own `keys/` folder (issue 13): its README, examples
/// and `.gitignore` are never read as keys, a first run fills it as it
/// would an empty folder, and what that run makes stays out of git.
#[test]
fn the_repository_keys_folder_takes_a_first_run_and_keeps_its_secrets_out_of_git() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shipped = repo.join("keys");
    let scratch = tempfile::tempdir().expect("temp dir");
    let keys = scratch.path().join("keys");
    std::fs::create_dir_all(keys.join("examples")).expect("keys/examples");
    for file in [
        ".gitignore",
        "README.md",
        "examples/idp-example.json",
        "examples/revoked",
    ] {
        std::fs::copy(shipped.join(file), keys.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }

    // As shipped: no key, and nothing reported about the files there.
    let (store, report) = jwtgate::keys::KeyStore::open(&keys).expect("opens");
    assert!(report.issues.is_empty(), "{report}");
    assert!(store.snapshot().is_empty());

    let made = jwtgate::firstrun::ensure_dev_material(&keys).expect("first run");
    assert_eq!(made.secret, keys.join("dev.b64"));
    let (store, report) = jwtgate::keys::KeyStore::open(&keys).expect("opens");
    assert!(report.issues.is_empty(), "{report}");
    let set = store.snapshot();
    let kids: Vec<&str> = set.iter().map(|k| k.id()).collect();
    assert_eq!(kids, ["dev"], "the example JWK set is not a key");

    // Every name a first run (or an operator) puts there is ignored by git;
    // the README and the examples are not. Without git this cannot be
    // checked, which fails the test rather than passing it unchecked.
    let git = std::process::Command::new("git").arg("--version").output();
    assert!(
        git.is_ok_and(|out| out.status.success()),
        "git is needed to check what the keys folder keeps out of the repository; install it"
    );
    let ignored = |name: &str| {
        std::process::Command::new("git")
            .current_dir(repo)
            .args(["check-ignore", "-q", "--no-index", name])
            .status()
            .expect("git check-ignore")
            .success()
    };
    for generated in [
        "keys/dev.b64",
        "keys/auth0.b64",
        "keys/idp.json",
        "keys/revoked",
        "keys/tls/ca.key",
        "keys/tls/server.key",
        "keys/tls/server.crt",
        "keys/.next.b64.tmp",
    ] {
        assert!(ignored(generated), "{generated} would be committed");
    }
    for shipped in ["keys/README.md", "keys/.gitignore", "keys/examples/revoked"] {
        assert!(!ignored(shipped), "{shipped} is ignored");
    }
}
