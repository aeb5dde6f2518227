//! The fuzz targets' logic, one `pub fn <target>(data: &[u8])` per target.
//!
//! It lives in the library, not in `fuzz/`, so that the cargo-fuzz targets
//! (each a one-line `fuzz_target!` calling the function of its name) and
//! the replay test `tests/fuzz_replay.rs` (which runs on stable, in every
//! `cargo test`, over `fuzz/corpus/` and `fuzz/regressions/`) run exactly
//! the same code. A function panics only on a real bug: an assertion it
//! states, or a panic in the code under test. See `fuzz/README.md` for each
//! target's input format and what it asserts.
//!
//! The fixed key material below is for these targets only: it signs inputs
//! so that everything after the signature check gets fuzzed. It is not
//! secret and is never loaded by the gateway itself.

// Asserting is this module's job; its `expect`s are on its own fixed setup
// (embedded keys, a temporary directory), never on the fuzzed input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::Value;

mod memory;

pub use memory::{CountingAllocator, peak_during};

use crate::acl::{Bindings, ClaimForm, Grants};

use crate::config::Config;
use crate::gateway::{self, SessionSetup};
use crate::keys::{self, KeySet, KeyStore, Problem};
use crate::mqtt::QoS;
use crate::mqtt::{FilterError, RequestedFilter, TopicFilter};
use crate::token::{self, Policy};

/// The HMAC key, 64 bytes so that it allows HS256, HS384 and HS512.
const HMAC_B64: &str =
    "3qIF0KlnOK787Xs6K/+h+vbsPbr8nwsFsntN81mvH6tdVudpOML1lFd9D2Sn6Rutr+i944mpoS0k9QIAxq0tuQ==";
/// A fixed EC P-256 key (PKCS#8), public half served as the JWK `ec`.
const EC_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgdHnE6M10ugTETgyA
ll0z0/59vP6hhWofE1a76tfp42WhRANCAAQfF5HTbElIaHXpHBTuVtp75WefRP96
ifNKszPmgv6ghqwS2MYZ/T4ZzGmmhKzIe/wI/F4Wq35YcjoLdn8SWi8g
-----END PRIVATE KEY-----
";
/// A fixed Ed25519 key (PKCS#8), public half served as the JWK `ed`.
const ED_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIMvKNKpSiNvojCfmKWtjTrplUSkATsARf+/NzJsI9d/m
-----END PRIVATE KEY-----
";

/// The strict policy's issuer and audiences.
const ISSUER: &str = "https://idp.fuzz.example/";
const AUDIENCES: [&str; 2] = ["gw-fuzz", "gw-other"];

/// The token `mqtt_session` connects with: fixed claims that never expire
/// before 2100, so the same bytes stay valid in every corpus file.
const SESSION_HEADER: &str = r#"{"alg":"HS256","typ":"JWT","kid":"hs"}"#;
const SESSION_CLAIMS: &str = r#"{"sub":"fuzz-device","iat":1700000000,"exp":4102444800,"topics":["devices/fuzz-device/#","fleet/+/status","up"]}"#;

/// Separates the parts of a multi-part input. Never valid in UTF-8, so no
/// JSON or topic the fuzzer writes needs it.
const SEPARATOR: u8 = 0xFF;

struct Fixture {
    keys: Arc<KeyStore>,
    set: Arc<KeySet>,
    default_policy: Policy,
    strict_policy: Policy,
    hmac: EncodingKey,
    ec: EncodingKey,
    ed: EncodingKey,
    /// `SESSION_HEADER.SESSION_CLAIMS`, encoded and signed.
    session_token: String,
    /// Its header and claims part: a stream holding these bytes may carry
    /// a valid token; one without them cannot.
    session_signed_part: String,
    session_grants: Grants,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let ec_pair = rcgen::KeyPair::from_pem(EC_PEM).expect("fixed EC key");
        let ed_pair = rcgen::KeyPair::from_pem(ED_PEM).expect("fixed Ed25519 key");
        let ec_point = ec_pair.public_key_raw();
        let jwks = serde_json::json!({ "keys": [
            { "kty": "EC", "crv": "P-256", "kid": "ec", "use": "sig",
              "x": b64(&ec_point[1..33]), "y": b64(&ec_point[33..]) },
            { "kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(ed_pair.public_key_raw()) },
        ]});
        let dir = tempfile::tempdir().expect("temporary keys directory");
        let secret = dir.path().join("hs.b64");
        std::fs::write(&secret, HMAC_B64).expect("write hs.b64");
        set_private(&secret);
        std::fs::write(dir.path().join("idp.json"), jwks.to_string()).expect("write idp.json");
        let (store, report) = KeyStore::open(dir.path()).expect("open keys directory");
        assert!(
            report.issues.is_empty() && report.warnings.is_empty() && report.keys == 3,
            "{report}"
        );
        // The keys are loaded; the directory is not needed any more (no
        // target reloads this store).
        drop(dir);
        let keys = Arc::new(store);
        let set = keys.snapshot();

        let mut auth = Config::defaults(Path::new("/unused")).auth;
        let default_policy = Policy::from_config(&auth);
        auth.issuer = Some(ISSUER.to_owned());
        auth.audience = Some(AUDIENCES.iter().map(|a| (*a).to_owned()).collect());
        auth.require_kid = true;
        auth.max_token_lifetime = Some(std::time::Duration::from_secs(100 * 365 * 86_400));
        auth.algorithms = Some(vec![Algorithm::HS256, Algorithm::ES256, Algorithm::EdDSA]);
        let strict_policy = Policy::from_config(&auth);

        let hmac =
            EncodingKey::from_secret(&keys::decode_secret(HMAC_B64).expect("fixed HMAC secret"));
        let ec = EncodingKey::from_ec_pem(EC_PEM.as_bytes()).expect("fixed EC signing key");
        let ed = EncodingKey::from_ed_pem(ED_PEM.as_bytes()).expect("fixed Ed25519 signing key");
        let session_signed_part = format!("{}.{}", b64(SESSION_HEADER), b64(SESSION_CLAIMS));
        let signature =
            jsonwebtoken::crypto::sign(session_signed_part.as_bytes(), &hmac, Algorithm::HS256)
                .expect("sign the session token");
        let session_token = format!("{session_signed_part}.{signature}");
        let verified = token::verify(&session_token, &set, &default_policy)
            .expect("the session token verifies");
        let session_grants = verified
            .grants
            .bind(&Bindings {
                client_id: Some("fuzz"),
                subject: verified.subject.as_deref(),
                username: Some("JWT"),
            })
            .expect("the session token's grants bind")
            .grants;
        Fixture {
            keys,
            set,
            default_policy,
            strict_policy,
            hmac,
            ec,
            ed,
            session_token,
            session_signed_part,
            session_grants,
        }
    })
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Secrets readable by others load with a warning; the fixture wants none.
fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .expect("make the secret private");
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The token the `mqtt_session` target connects with, for building corpus
/// files that carry it in their own CONNECT.
pub fn session_token() -> &'static str {
    &fixture().session_token
}

// ---------------------------------------------------------------- tokens

/// Raw bytes as a token, and (to get past the base64url of the header)
/// split on `.` into up to three parts each base64url-encoded; also as an
/// HMAC secret's text. Asserts nothing beyond "no panic": no input here
/// can carry a valid signature.
pub fn verify_token(data: &[u8]) {
    let fixture = fixture();
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = token::verify(text, &fixture.set, &fixture.default_policy);
        let _ = keys::decode_secret(text);
    }
    let encoded: Vec<String> = data.splitn(3, |byte| *byte == b'.').map(b64).collect();
    let _ = token::verify(&encoded.join("."), &fixture.set, &fixture.default_policy);
}

/// The algorithms `token_signed` signs with, and the key each uses.
const SIGNERS: [(Algorithm, &str); 5] = [
    (Algorithm::HS256, "hs"),
    (Algorithm::HS384, "hs"),
    (Algorithm::HS512, "hs"),
    (Algorithm::ES256, "ec"),
    (Algorithm::EdDSA, "ed"),
];

/// A header and claims chosen by the fuzzer, really signed, then verified.
///
/// Input: one selector byte, then either `header 0xFF claims` or just the
/// claims (the header is then `{"alg":..,"typ":"JWT","kid":..}` for the
/// selected signer). Selector bits 0-2: the signer (`SIGNERS`, modulo 5);
/// bit 3: the strict policy (issuer, audience, kid required, an algorithm
/// list); bit 4: leave `kid` out of a generated header.
///
/// Asserts, when verify accepts: the claims are a JSON object; the subject
/// is their `sub`; every grant is an entry of their `topics`; the key that
/// verified is the one that signed; `exp` is there and not past; under the
/// strict policy, `iss`, `aud` and `kid` are what it demands.
pub fn token_signed(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    let (alg, kid) = SIGNERS[usize::from(selector & 7) % SIGNERS.len()];
    let strict = selector & 8 != 0;
    let (header, claims) = match rest.iter().position(|b| *b == SEPARATOR) {
        Some(at) => (rest[..at].to_vec(), &rest[at + 1..]),
        None if selector & 16 != 0 => (
            format!(r#"{{"alg":"{alg:?}","typ":"JWT"}}"#).into_bytes(),
            rest,
        ),
        None => (
            format!(r#"{{"alg":"{alg:?}","typ":"JWT","kid":"{kid}"}}"#).into_bytes(),
            rest,
        ),
    };
    let key = match kid {
        "hs" => &fixture.hmac,
        "ec" => &fixture.ec,
        _ => &fixture.ed,
    };
    let signed_part = format!("{}.{}", b64(&header), b64(claims));
    let signature = jsonwebtoken::crypto::sign(signed_part.as_bytes(), key, alg)
        .expect("the fixed keys sign any message");
    let policy = if strict {
        &fixture.strict_policy
    } else {
        &fixture.default_policy
    };
    let Ok(verified) = token::verify(&format!("{signed_part}.{signature}"), &fixture.set, policy)
    else {
        return;
    };

    let claims: Value = serde_json::from_slice(claims)
        .unwrap_or_else(|e| panic!("verify accepted claims that are not JSON: {e}"));
    let Some(claims) = claims.as_object() else {
        panic!("verify accepted claims that are not a JSON object: {claims}");
    };
    assert_eq!(
        verified.subject.as_deref(),
        claims.get("sub").and_then(Value::as_str),
        "the subject is not the token's sub"
    );
    assert_eq!(verified.key_id, kid, "a key other than the signer verified");
    let topics: Vec<&str> = match claims.get("topics") {
        Some(Value::String(one)) => vec![one],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
        None if claims.contains_key("acl") => Vec::new(),
        other => panic!("verify accepted a topics claim of {other:?}"),
    };
    for list in verified.grants.lists() {
        if list.form != ClaimForm::Topics {
            continue;
        }
        for rule in &list.rules {
            let written = rule.written();
            assert!(
                topics.contains(&written.as_str()),
                "grant {written} is not in the topics claim {topics:?}"
            );
        }
    }
    let Some(exp) = verified.expires_at else {
        panic!("verify accepted a token without exp, which the policy requires");
    };
    // The policy's leeway is 5 s; a little more for the time this took.
    assert!(
        exp.saturating_add(60) >= now(),
        "verify accepted a token expired at {exp}"
    );
    if strict {
        assert_eq!(claims.get("iss").and_then(Value::as_str), Some(ISSUER));
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => AUDIENCES.contains(&aud.as_str()),
            Some(Value::Array(auds)) => auds
                .iter()
                .filter_map(Value::as_str)
                .any(|aud| AUDIENCES.contains(&aud)),
            _ => false,
        };
        assert!(audience_ok, "verify accepted aud {:?}", claims.get("aud"));
        let header: Value =
            serde_json::from_slice(&header).expect("verify accepted a header that is not JSON");
        assert_eq!(
            header.get("kid").and_then(Value::as_str),
            Some(kid),
            "the strict policy accepted a token without the signer's kid"
        );
    }
}

// ------------------------------------------------------------------ keys

/// Arbitrary text as a JWK set file.
pub fn jwks_parse(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = keys::parse_jwks(text, Path::new("/keys/fuzz.json")) {
        // Every key that made it is usable as loaded.
        for key in &parsed.keys {
            assert!(!key.id().is_empty());
            assert!(!key.algorithms().is_empty());
        }
        for skipped in &parsed.skipped {
            let _ = skipped.to_string();
        }
    }
}

/// Arbitrary bytes as the three kinds of file of a keys directory.
///
/// Input: `secret 0xFF jwks 0xFF deny-list` (missing parts are empty),
/// written as `k.b64`, `set.json` and `revoked`. Then the directory is
/// opened, the secret replaced by the JWK set's bytes and the JWK set by
/// the deny list's, and reloaded.
///
/// Asserts: opening and reloading a readable directory succeed; every
/// issue names the file it is about (deny-list problems `revoked`, JWK
/// problems `set.json`, a duplicate key id `set.json`, the key kept being
/// from `k.b64` or from earlier in `set.json`); the key count is the key
/// set's.
pub fn keys_dir(data: &[u8]) {
    let mut parts = data.splitn(3, |b| *b == SEPARATOR);
    let secret = parts.next().unwrap_or_default();
    let jwks = parts.next().unwrap_or_default();
    let deny = parts.next().unwrap_or_default();
    let dir = tempfile::tempdir().expect("temporary keys directory");
    let files = KeyFiles {
        secret: dir.path().join("k.b64"),
        jwks: dir.path().join("set.json"),
        deny: dir.path().join(keys::DENY_LIST_FILE),
    };
    files.write(secret, jwks, deny);
    let (store, report) = KeyStore::open(dir.path())
        .unwrap_or_else(|e| panic!("a readable keys directory failed to open: {e}"));
    files.check(&report, &store);
    files.write(jwks, deny, secret);
    let report = store
        .reload()
        .unwrap_or_else(|e| panic!("a readable keys directory failed to reload: {e}"));
    files.check(&report, &store);
}

struct KeyFiles {
    secret: PathBuf,
    jwks: PathBuf,
    deny: PathBuf,
}

impl KeyFiles {
    fn write(&self, secret: &[u8], jwks: &[u8], deny: &[u8]) {
        std::fs::write(&self.secret, secret).expect("write k.b64");
        set_private(&self.secret);
        std::fs::write(&self.jwks, jwks).expect("write set.json");
        std::fs::write(&self.deny, deny).expect("write revoked");
    }

    fn check(&self, report: &keys::LoadReport, store: &KeyStore) {
        assert_eq!(report.keys, store.snapshot().len(), "{report}");
        let _ = report.to_string();
        for issue in &report.issues {
            let file = issue.file.as_path();
            let expected: &[&Path] = match &issue.problem {
                Problem::DenyList { .. } | Problem::DenyLine(_) => &[&self.deny],
                Problem::Key(_) => &[&self.jwks],
                Problem::File { .. } => &[&self.secret, &self.jwks],
                // `k.b64` sorts first and holds one key, so a duplicate is
                // always a key of `set.json`, defined before by `k.b64` or
                // by `set.json` itself.
                Problem::DuplicateKid { kept_from, .. } => {
                    assert!(
                        kept_from == &self.secret || kept_from == &self.jwks,
                        "{issue}"
                    );
                    &[&self.jwks]
                }
            };
            assert!(
                expected.contains(&file),
                "issue names the wrong file: {issue}"
            );
        }
    }
}

// ---------------------------------------------------------------- config

/// Arbitrary bytes as the TOML config, through the function `jwtgate`
/// uses. Asserts, when it parses, the bounds `Config` documents.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Path::new("/etc/jwtgate/jwtgate.toml");
    let Ok(config) = Config::parse(text, origin, Path::new("/etc/jwtgate")) else {
        return;
    };
    let limits = &config.limits;
    assert!((1024..=268_435_455).contains(&limits.max_packet_size));
    assert!((1024..=268_435_455).contains(&limits.max_connect_packet_size));
    // Not asserted: `max_connect_packet_size <= max_packet_size`. The field
    // says "never more than max_packet_size", but the parser keeps a larger
    // value and the connection applies the smaller of the two (the sample
    // config's "capped by max_packet_size").
    assert!(limits.max_connections > 0);
    assert!(limits.max_pending_connections > 0 && limits.max_pending_per_source > 0);
    assert!(!limits.handshake_timeout.is_zero() && !limits.connect_timeout.is_zero());
    assert!(!limits.write_timeout.is_zero());
    assert!(limits.memory_budget >= 1024 * 1024);
    let auth = &config.auth;
    assert!(!auth.topics_claim.is_empty());
    assert!(auth.issuer.as_ref().is_none_or(|i| !i.is_empty()));
    assert!(auth.audience.as_ref().is_none_or(|a| !a.is_empty()));
    assert!(auth.algorithms.as_ref().is_none_or(|a| !a.is_empty()));
    assert!(auth.max_token_lifetime.is_none_or(|l| !l.is_zero()));
    let sessions = &config.sessions;
    assert!(sessions.max_inflight >= 1 && sessions.max_queued_messages >= 1);
    assert!(sessions.max_queued_bytes >= 1024 && sessions.max_subscriptions >= 1);
    assert!(!sessions.slow_subscriber_timeout.is_zero());
    assert!(config.storage.sync_interval <= std::time::Duration::from_secs(60));
    assert!(config.storage.dir.starts_with("/"));
    // The metrics endpoint leaves loopback only when told to in so many
    // words.
    if let Some(addr) = config.metrics.listen {
        assert!(
            addr.ip().is_loopback() || text.contains("allow_remote"),
            "metrics on {addr} without allow_remote"
        );
    }
    let mut names = std::collections::HashSet::new();
    for bridge in &config.bridges {
        assert_bridge(bridge);
        assert!(
            names.insert(&bridge.name),
            "two bridges named {}",
            bridge.name
        );
    }
    assert_eq!(config.source.as_deref(), Some(origin));
}

/// The bounds a `[[bridge]]` table is checked against.
fn assert_bridge(bridge: &crate::config::BridgeConfig) {
    use crate::config::Transport;
    let name_ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    assert!(!bridge.name.is_empty() && bridge.name.chars().all(name_ok));
    assert!(!bridge.client_id.is_empty());
    let remote = &bridge.remote;
    assert!(remote.port > 0 && !remote.host.is_empty());
    if remote.transport == Transport::Plain {
        let loopback = remote.host == "localhost"
            || remote
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        assert!(loopback, "plain MQTT to {}", remote.host);
        assert!(bridge.client_cert.is_none());
    }
    assert!((5..=65_535).contains(&bridge.keep_alive.as_secs()));
    assert!(bridge.max_queue_bytes >= 1024 * 1024);
    assert!(!bridge.forward.is_empty() || !bridge.subscribe.is_empty());
    for rule in &bridge.forward {
        assert!(!rule.remote_prefix.contains(['+', '#', '\0']));
    }
    for rule in &bridge.subscribe {
        assert!(rule.remote.as_str().starts_with(&rule.strip_prefix));
        assert!(rule.remote.as_str().len() > rule.strip_prefix.len());
        assert!(!rule.local_prefix.contains(['+', '#', '\0']));
    }
}

// ------------------------------------------------------------------ MQTT

/// A client byte stream through `gateway::connection::serve`, the function
/// the TLS path calls, over an in-memory duplex stream.
///
/// Input: one selector byte, then the stream. Selector bit 0 set: a valid
/// CONNECT with the fixed token is sent first (bits 1-2 pick MQTT 3.1,
/// 3.1.1 or 5; bit 6 clears clean session); otherwise the stream is sent
/// as it is. Bit 4: refused publishes disconnect; bit 5: keep-alive capped.
///
/// Asserts: the connection ends once the client has closed; nothing is
/// routed or retained unless the stream can hold a valid token (the
/// prepended CONNECT, or the token's signed part in the fuzzed bytes);
/// every routed or retained topic is within the token's grants; when the
/// binary counts allocations ([`CountingAllocator`]), the run never held
/// more heap than [`gateway::SESSION_MEMORY_BOUND`], what its limits allow.
pub fn mqtt_session(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let fixture = fixture();
    let prepend = selector & 1 != 0;
    let level = match (selector >> 1) & 3 {
        0 => 3,
        1 => 4,
        _ => 5,
    };
    let mut stream = Vec::with_capacity(rest.len() + 512);
    if prepend {
        stream.extend(connect_packet(
            level,
            selector & 64 == 0,
            &fixture.session_token,
        ));
    }
    stream.extend_from_slice(rest);
    let may_authenticate = prepend || contains(rest, fixture.session_signed_part.as_bytes());
    let setup = SessionSetup {
        deny_disconnects: selector & 16 != 0,
        cap_keep_alive: selector & 32 != 0,
    };
    let (outcome, peak) = peak_during(|| {
        gateway::fuzz_session(
            Arc::clone(&fixture.keys),
            fixture.default_policy.clone(),
            setup,
            &stream,
        )
    });
    let outcome = outcome.expect("a tokio runtime");
    if let Some(peak) = peak {
        assert!(
            peak <= gateway::SESSION_MEMORY_BOUND,
            "the run held {peak} bytes, over its limits' {}",
            gateway::SESSION_MEMORY_BOUND
        );
    }
    assert!(
        outcome.ended,
        "the connection did not end after its client closed"
    );
    assert!(
        outcome.settled,
        "a task the connection left behind did not finish"
    );
    if !may_authenticate {
        assert!(
            outcome.routed.is_empty() && outcome.retained.is_empty(),
            "routed without a valid CONNECT: {:?} {:?}",
            outcome.routed,
            outcome.retained
        );
    }
    for topic in outcome.routed.iter().chain(&outcome.retained) {
        assert!(
            fixture
                .session_grants
                .may_publish(topic, QoS::AtMostOnce, false),
            "routed {topic:?}, outside the grants"
        );
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

/// A CONNECT of protocol `level` (3: MQTT 3.1, 4: 3.1.1, 5: 5) with
/// username `JWT` and `token` as the password, client id `fuzz-client`.
pub fn connect_packet(level: u8, clean: bool, token: &str) -> Vec<u8> {
    let mut body = Vec::new();
    put_string(&mut body, if level == 3 { b"MQIsdp" } else { b"MQTT" });
    body.push(level);
    body.push(0xC0 | if clean { 0x02 } else { 0 });
    body.extend_from_slice(&60u16.to_be_bytes());
    if level == 5 {
        // No properties.
        body.push(0);
    }
    put_string(&mut body, b"fuzz-client");
    put_string(&mut body, b"JWT");
    put_string(&mut body, token.as_bytes());
    let mut packet = vec![0x10];
    put_length(&mut packet, body.len());
    packet.extend(body);
    packet
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("short fixed strings");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn put_length(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        if len == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

// ---------------------------------------------------------------- topics

/// Longest topic or filter, in bytes (MQTT's string length limit).
const MAX_LEN: usize = 65_535;

/// Topic names and filters against the reference matcher below.
///
/// Input: `topic 0xFF filter-a 0xFF filter-b`, each UTF-8.
///
/// Asserts: `TopicFilter::parse` and `RequestedFilter::parse` accept
/// exactly what the reference accepts (and split `$share` the same way);
/// `matches_topic` agrees with the reference on the topic and on topics
/// sampled from both filters; `covers(a, b)` implies that `a` matches every
/// topic sampled from `b`; a filter covers itself; `may_subscribe(b)` and
/// `may_subscribe($share/g/b)` under a grant of `a` are `covers(a, f)` for
/// the filter `f` each requests.
pub fn topic(data: &[u8]) {
    let mut parts = data.splitn(3, |b| *b == SEPARATOR);
    let (Ok(topic), Ok(a), Ok(b)) = (
        std::str::from_utf8(parts.next().unwrap_or_default()),
        std::str::from_utf8(parts.next().unwrap_or_default()),
        std::str::from_utf8(parts.next().unwrap_or_default()),
    ) else {
        return;
    };
    for requested in [a, b] {
        check_requested(requested);
    }
    let parsed_a = TopicFilter::parse(a);
    let parsed_b = TopicFilter::parse(b);
    assert_eq!(parsed_a.is_ok(), reference_valid(a), "parse({a:?})");
    assert_eq!(parsed_b.is_ok(), reference_valid(b), "parse({b:?})");
    let (Ok(fa), Ok(fb)) = (parsed_a, parsed_b) else {
        return;
    };
    assert!(fa.covers(&fa), "{a:?} does not cover itself");
    let mut topics = vec![topic.to_owned()];
    topics.extend(samples(b, a));
    topics.extend(samples(a, b));
    for t in &topics {
        assert_eq!(
            fa.matches_topic(t),
            reference_matches(a, t),
            "matches_topic({a:?}, {t:?})"
        );
        assert_eq!(
            fb.matches_topic(t),
            reference_matches(b, t),
            "matches_topic({b:?}, {t:?})"
        );
    }
    if fa.covers(&fb) {
        for t in samples(b, a) {
            if reference_matches(b, &t) {
                assert!(
                    reference_matches(a, &t),
                    "{a:?} covers {b:?}, yet does not match {t:?}, which {b:?} matches"
                );
            }
        }
    }
    for t in &topics {
        if reference_matches(a, t) && reference_matches(b, t) {
            assert!(fa.intersects(&fb), "{a:?} and {b:?} both match {t:?}");
        }
    }
    assert_eq!(
        fa.intersects(&fb),
        fb.intersects(&fa),
        "intersects({a:?}, {b:?})"
    );
    if fa.covers(&fb) {
        assert!(
            fa.intersects(&fb),
            "{a:?} covers {b:?} without sharing a topic"
        );
    }
    let grants = Grants::new(vec![fa.clone()]);
    let shared = format!("$share/g/{b}");
    // The share prefix must not push the request past the length limit.
    let requests: &[&str] = if shared.len() <= MAX_LEN {
        &[b, &shared]
    } else {
        &[b]
    };
    for &requested in requests {
        // A request is judged by the filter it asks for: `b` itself may be
        // a `$share/...` request.
        let expected = RequestedFilter::parse(requested)
            .ok()
            .and_then(|r| TopicFilter::parse(r.filter).ok())
            .is_some_and(|filter| fa.covers(&filter));
        assert_eq!(
            grants.may_subscribe(requested, QoS::AtLeastOnce),
            expected,
            "may_subscribe({requested:?}) under {a:?}"
        );
    }
}

/// `RequestedFilter::parse` against the reference reading of
/// `$share/{group}/{filter}`.
fn check_requested(requested: &str) {
    let expected: Result<(Option<&str>, &str), ()> = match requested.strip_prefix("$share/") {
        None if reference_valid(requested) => Ok((None, requested)),
        None => Err(()),
        Some(_) if requested.len() > MAX_LEN => Err(()),
        Some(shared) => match shared.split_once('/') {
            Some((group, filter))
                if !group.is_empty()
                    && !group.contains(['+', '#', '\0'])
                    && reference_valid(filter) =>
            {
                Ok((Some(group), filter))
            }
            _ => Err(()),
        },
    };
    let actual = RequestedFilter::parse(requested)
        .map(|r| (r.group, r.filter))
        .map_err(|_: FilterError| ());
    assert_eq!(actual, expected, "RequestedFilter::parse({requested:?})");
}

/// A filter is valid when it is 1 to 65535 bytes without NUL, and every
/// level is `+`, `#` as the last level, or free of both.
fn reference_valid(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_LEN || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| {
        *level == "+" || (*level == "#" && i + 1 == levels.len()) || !level.contains(['+', '#'])
    })
}

/// The MQTT matching rule spelled out level by level.
fn reference_matches(filter: &str, topic: &str) -> bool {
    let topic_valid =
        !topic.is_empty() && topic.len() <= MAX_LEN && !topic.contains(['\0', '+', '#']);
    if !topic_valid {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if (f[0] == "+" || f[0] == "#") && topic.starts_with('$') {
        return false;
    }
    let mut i = 0;
    loop {
        if i == f.len() {
            return i == t.len();
        }
        if f[i] == "#" {
            // Every level before matched, so the topic has at least `i`
            // levels: `#` takes the rest, or none (the parent).
            return true;
        }
        if i == t.len() {
            return false;
        }
        if f[i] != "+" && f[i] != t[i] {
            return false;
        }
        i += 1;
    }
}

/// Topics `filter` may match: each `+` and `#` replaced by a few choices,
/// among them the literal levels of `other` at the same place (the ones
/// most likely to tell two filters apart).
fn samples(filter: &str, other: &str) -> Vec<String> {
    let levels: Vec<&str> = filter.split('/').collect();
    let others: Vec<&str> = other.split('/').collect();
    let mut out = Vec::new();
    for variant in 0..5 {
        let mut topic: Vec<String> = Vec::new();
        for (i, level) in levels.iter().enumerate() {
            let theirs = others.get(i).copied().filter(|l| !l.contains(['+', '#']));
            match *level {
                "+" => topic.push(match variant {
                    0 => theirs.unwrap_or("x").to_owned(),
                    1 => "x".to_owned(),
                    2 => String::new(),
                    3 => "$x".to_owned(),
                    _ => "y".to_owned(),
                }),
                "#" => match variant {
                    // The parent level.
                    0 => {}
                    1 => topic.push("x".to_owned()),
                    2 => topic.extend(others.iter().skip(i).map(|l| (*l).to_owned())),
                    3 => topic.push(String::new()),
                    _ => topic.extend(["x".to_owned(), "y".to_owned()]),
                },
                literal => topic.push(literal.to_owned()),
            }
        }
        out.push(topic.join("/"));
    }
    out
}
