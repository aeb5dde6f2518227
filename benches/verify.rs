//! Token verification and topic authorization microbenchmarks (criterion).
//!
//! For each algorithm (HS256, RS256, ES256, EdDSA) the same token is
//! measured at four depths, so the overhead over the cryptography is
//! visible:
//!
//! - `verify/{alg}/jwtgate`: `jwtgate::token::verify` against a `KeySet`
//!   loaded by `KeyStore::open` from a temporary keys directory (a `.b64`
//!   secret and a JWK set), with the default policy: everything a CONNECT
//!   costs in token handling.
//! - `verify/{alg}/jsonwebtoken`: `jsonwebtoken::crypto::verify`, the call
//!   jwtgate makes for the signature (base64 decode + a verifier built per
//!   call).
//! - `verify/{alg}/primitive`: aws-lc-rs alone on the same signing input
//!   and signature bytes, the way a caller that keeps nothing would do it
//!   (`hmac::Key::new` + `hmac::verify`, `UnparsedPublicKey::verify`).
//! - `verify/{alg}/primitive-prepared`: aws-lc-rs with the key prepared
//!   once (`hmac::Key` kept, `ParsedPublicKey::verify_sig`): the floor.
//!
//! plus `parse/*`: the base64 + JSON work on header and claims that every
//! verification does whatever the algorithm.
//!
//! `acl/{may_publish,may_subscribe}/{1,10,100}/{allowed,denied}`:
//! `acl::Grants` with 1, 10 and 100 granted filters; "allowed" matches the
//! filter that sorts last (the worst case for a linear scan), "denied"
//! matches none (every filter is tried).
//!
//! At the end a table of medians and ratios is printed (also written to
//! `target/criterion/verify-summary.md`).
//!
//! `cargo bench --bench verify` (all), `cargo bench --bench verify -- acl`
//! (a subset: criterion's filter).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ED25519, EcdsaKeyPair,
    Ed25519KeyPair, KeyPair, ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256,
    UnparsedPublicKey, VerificationAlgorithm,
};
use aws_lc_rs::{hmac, rsa};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use criterion::{Criterion, criterion_group};
use jsonwebtoken::{Algorithm, DecodingKey};
use jwtgate::acl::{Bindings, GrantTemplate, Grants};
use jwtgate::mqtt::QoS;

const Q1: QoS = QoS::AtLeastOnce;
use jwtgate::config::Config;
use jwtgate::keys::{KeySet, KeyStore};
use jwtgate::token::{self, Policy};
use serde_json::{Map, Value, json};

/// One signed token and what its signature check is made of.
struct Signed {
    alg: &'static str,
    token: String,
    /// `header.claims`, the signed bytes.
    message: Vec<u8>,
    signature: Vec<u8>,
    /// The verification key as jsonwebtoken holds it.
    decoding: DecodingKey,
    primitive: Primitive,
}

enum Primitive {
    Hmac(Vec<u8>),
    Public {
        alg: &'static dyn VerificationAlgorithm,
        /// What `UnparsedPublicKey` takes (RSA: DER RSAPublicKey, EC: the
        /// uncompressed point, Ed25519: the raw key).
        bytes: Vec<u8>,
    },
}

struct Fixture {
    _dir: tempfile::TempDir,
    keys: std::sync::Arc<KeySet>,
    policy: Policy,
    tokens: Vec<Signed>,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The claims of a typical device token, as `jwtgate mint` writes them.
fn claims() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    json!({
        "sub": "thermostat-1a",
        "iat": now,
        "exp": now + 3600,
        "jti": "Rk9PQkFSQkFaUVVYMTIzNA",
        "topics": ["devices/thermostat-1a/#", "config/thermostat-1a", "broadcast/+/firmware"],
    })
    .to_string()
}

fn signing_input(alg: &str, kid: &str) -> String {
    let header = json!({ "alg": alg, "typ": "JWT", "kid": kid }).to_string();
    format!("{}.{}", b64(header.as_bytes()), b64(claims().as_bytes()))
}

fn fixture() -> Fixture {
    let rng = SystemRandom::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut tokens = Vec::new();

    // HS256: a 256-bit secret in `hs.b64`.
    let secret: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    std::fs::write(dir.path().join("hs.b64"), STANDARD.encode(&secret)).unwrap();
    let message = signing_input("HS256", "hs");
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &secret),
        message.as_bytes(),
    );
    tokens.push(Signed {
        alg: "HS256",
        token: format!("{message}.{}", b64(tag.as_ref())),
        message: message.into_bytes(),
        signature: tag.as_ref().to_vec(),
        decoding: DecodingKey::from_secret(&secret),
        primitive: Primitive::Hmac(secret.clone()),
    });

    // RS256: RSA 2048.
    let rsa_key = rsa::KeyPair::generate(rsa::KeySize::Rsa2048).expect("RSA key");
    let n = rsa_key
        .public_key()
        .modulus()
        .big_endian_without_leading_zero()
        .to_vec();
    let e = rsa_key
        .public_key()
        .exponent()
        .big_endian_without_leading_zero()
        .to_vec();
    let message = signing_input("RS256", "rs");
    let mut sig = vec![0u8; rsa_key.public_modulus_len()];
    rsa_key
        .sign(&RSA_PKCS1_SHA256, &rng, message.as_bytes(), &mut sig)
        .expect("RSA signature");
    tokens.push(Signed {
        alg: "RS256",
        token: format!("{message}.{}", b64(&sig)),
        message: message.into_bytes(),
        signature: sig,
        decoding: DecodingKey::from_rsa_raw_components(&n, &e),
        primitive: Primitive::Public {
            alg: &RSA_PKCS1_2048_8192_SHA256,
            bytes: rsa_key.public_key().as_ref().to_vec(),
        },
    });

    // ES256: P-256.
    let ec_pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let ec_key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec_pkcs8.as_ref()).unwrap();
    let point = ec_key.public_key().as_ref().to_vec();
    let message = signing_input("ES256", "es");
    let sig = ec_key.sign(&rng, message.as_bytes()).unwrap();
    tokens.push(Signed {
        alg: "ES256",
        token: format!("{message}.{}", b64(sig.as_ref())),
        message: message.into_bytes(),
        signature: sig.as_ref().to_vec(),
        decoding: DecodingKey::from_ec_der(&point),
        primitive: Primitive::Public {
            alg: &ECDSA_P256_SHA256_FIXED,
            bytes: point.clone(),
        },
    });

    // EdDSA: Ed25519.
    let ed_key = Ed25519KeyPair::generate().expect("Ed25519 key");
    let ed_public = ed_key.public_key().as_ref().to_vec();
    let message = signing_input("EdDSA", "ed");
    let sig = ed_key.sign(message.as_bytes());
    tokens.push(Signed {
        alg: "EdDSA",
        token: format!("{message}.{}", b64(sig.as_ref())),
        message: message.into_bytes(),
        signature: sig.as_ref().to_vec(),
        decoding: DecodingKey::from_ed_der(&ed_public),
        primitive: Primitive::Public {
            alg: &ED25519,
            bytes: ed_public.clone(),
        },
    });

    // The public keys as the identity provider would publish them.
    let jwks = json!({ "keys": [
        { "kty": "RSA", "kid": "rs", "alg": "RS256", "use": "sig", "n": b64(&n), "e": b64(&e) },
        { "kty": "EC", "kid": "es", "alg": "ES256", "crv": "P-256",
          "x": b64(&point[1..33]), "y": b64(&point[33..65]) },
        { "kty": "OKP", "kid": "ed", "alg": "EdDSA", "crv": "Ed25519", "x": b64(&ed_public) },
    ]});
    std::fs::write(dir.path().join("idp.json"), jwks.to_string()).unwrap();

    let (store, report) = KeyStore::open(dir.path()).expect("keys directory");
    assert!(
        report.issues.is_empty() && report.keys == 4,
        "key files did not load: {report:?}"
    );
    let policy = Policy::from_config(&Config::defaults(dir.path()).auth);
    let keys = store.snapshot();
    for signed in &tokens {
        if let Err(e) = token::verify(&signed.token, &keys, &policy) {
            panic!("{} token does not verify: {e}", signed.alg);
        }
    }
    Fixture {
        _dir: dir,
        keys,
        policy,
        tokens,
    }
}

fn bench_verify(c: &mut Criterion) {
    let fixture = fixture();
    for signed in &fixture.tokens {
        let mut group = c.benchmark_group(format!("verify/{}", signed.alg));
        group.bench_function("jwtgate", |b| {
            b.iter(|| {
                token::verify(black_box(&signed.token), &fixture.keys, &fixture.policy).unwrap()
            })
        });
        let alg = match signed.alg {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            _ => Algorithm::EdDSA,
        };
        let encoded_sig = signed.token.rsplit_once('.').unwrap().1.to_owned();
        group.bench_function("jsonwebtoken", |b| {
            b.iter(|| {
                assert!(
                    jsonwebtoken::crypto::verify(
                        black_box(&encoded_sig),
                        black_box(&signed.message),
                        &signed.decoding,
                        alg,
                    )
                    .unwrap()
                )
            })
        });
        match &signed.primitive {
            Primitive::Hmac(secret) => {
                group.bench_function("primitive", |b| {
                    b.iter(|| {
                        let key = hmac::Key::new(hmac::HMAC_SHA256, black_box(secret));
                        hmac::verify(&key, black_box(&signed.message), &signed.signature).unwrap()
                    })
                });
                let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
                group.bench_function("primitive-prepared", |b| {
                    b.iter(|| {
                        hmac::verify(&key, black_box(&signed.message), &signed.signature).unwrap()
                    })
                });
            }
            Primitive::Public { alg, bytes } => {
                group.bench_function("primitive", |b| {
                    b.iter(|| {
                        UnparsedPublicKey::new(*alg, black_box(bytes))
                            .verify(black_box(&signed.message), &signed.signature)
                            .unwrap()
                    })
                });
                let parsed = ParsedPublicKey::new(*alg, bytes).expect("public key");
                group.bench_function("primitive-prepared", |b| {
                    b.iter(|| {
                        parsed
                            .verify_sig(black_box(&signed.message), &signed.signature)
                            .unwrap()
                    })
                });
            }
        }
        group.finish();
    }

    // What every verification parses, whatever the algorithm.
    let token = &fixture.tokens[0].token;
    let mut parts = token.split('.');
    let (header, claims) = (parts.next().unwrap(), parts.next().unwrap());
    let mut group = c.benchmark_group("parse");
    group.bench_function("header", |b| {
        b.iter(|| {
            let json = URL_SAFE_NO_PAD.decode(black_box(header)).unwrap();
            serde_json::from_slice::<Map<String, Value>>(&json).unwrap()
        })
    });
    group.bench_function("claims", |b| {
        b.iter(|| {
            let json = URL_SAFE_NO_PAD.decode(black_box(claims)).unwrap();
            serde_json::from_slice::<Map<String, Value>>(&json).unwrap()
        })
    });
    group.bench_function("grants", |b| {
        b.iter(|| {
            GrantTemplate::from_topics(black_box([
                "devices/${clientid}/#",
                "config/thermostat-1a",
                "broadcast/+/firmware",
            ]))
            .bind(&BINDINGS)
        })
    });
    group.finish();
}

/// The connection grants are bound to.
const BINDINGS: Bindings<'static> = Bindings {
    client_id: Some("thermostat-1a"),
    subject: Some("thermostat-1a"),
    username: Some("JWT"),
};

/// Grants of `n` filters of a few shapes; the last is `zz/{n}/+/state`
/// (what "allowed" hits).
fn grants(n: usize) -> Grants {
    let mut filters: Vec<String> = (0..n.saturating_sub(1))
        .map(|i| match i % 3 {
            0 => format!("devices/dev-{i:03}/#"),
            1 => format!("config/dev-{i:03}/+/set"),
            _ => format!("sensors/site-{i:03}/+/temperature"),
        })
        .collect();
    filters.push(format!("zz/{n}/+/state"));
    let bound = GrantTemplate::from_topics(&filters)
        .bind(&BINDINGS)
        .unwrap();
    assert!(bound.dropped.is_empty());
    assert_eq!(bound.grants.lists()[0].rules().len(), n);
    bound.grants
}

fn bench_acl(c: &mut Criterion) {
    for n in [1usize, 10, 100] {
        let grants = grants(n);
        let allowed_topic = format!("zz/{n}/lamp-7/state");
        let allowed_filter = format!("zz/{n}/+/state");
        let denied = "devices/someone-else/telemetry/temperature";
        let denied_filter = "devices/someone-else/#";
        assert!(
            grants.may_publish(&allowed_topic, Q1, false) && !grants.may_publish(denied, Q1, false)
        );
        assert!(
            grants.may_subscribe(&allowed_filter, Q1) && !grants.may_subscribe(denied_filter, Q1)
        );
        let mut group = c.benchmark_group(format!("acl/{n}"));
        group.bench_function("may_publish/allowed", |b| {
            b.iter(|| grants.may_publish(black_box(&allowed_topic), Q1, false))
        });
        group.bench_function("may_publish/denied", |b| {
            b.iter(|| grants.may_publish(black_box(denied), Q1, false))
        });
        group.bench_function("may_subscribe/allowed", |b| {
            b.iter(|| grants.may_subscribe(black_box(&allowed_filter), Q1))
        });
        group.bench_function("may_subscribe/denied", |b| {
            b.iter(|| grants.may_subscribe(black_box(denied_filter), Q1))
        });
        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(2))
        .sample_size(40)
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_verify, bench_acl
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if let Some(table) = summary(&criterion_dir()) {
        println!("\n{table}");
        let _ = std::fs::write(criterion_dir().join("verify-summary.md"), &table);
    }
}

/// Where criterion keeps its results (same rules as criterion itself).
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    // The bench binary lives in target/<profile>/deps/.
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("criterion")))
        .filter(|dir| dir.is_dir())
        .unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// The median (ns) of one benchmark from criterion's `estimates.json`.
fn median_ns(dir: &Path, group: &str, function: &str) -> Option<f64> {
    let path = dir
        .join(group.replace('/', "_"))
        .join(function.replace('/', "_"))
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let value: Value = serde_json::from_str(&text).ok()?;
    value.get("median")?.get("point_estimate")?.as_f64()
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}

fn summary(dir: &Path) -> Option<String> {
    let mut out = String::new();
    let mut any = false;
    let _ = writeln!(
        out,
        "| algorithm | jwtgate::token::verify | jsonwebtoken::crypto::verify | primitive (key per call) | primitive (prepared key) | verify / primitive | verify / prepared |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for alg in ["HS256", "RS256", "ES256", "EdDSA"] {
        let group = format!("verify/{alg}");
        let get = |f: &str| median_ns(dir, &group, f);
        let (Some(full), Some(jwt), Some(prim), Some(prep)) = (
            get("jwtgate"),
            get("jsonwebtoken"),
            get("primitive"),
            get("primitive-prepared"),
        ) else {
            continue;
        };
        any = true;
        let _ = writeln!(
            out,
            "| {alg} | {} | {} | {} | {} | {:.2}× | {:.2}× |",
            fmt_ns(full),
            fmt_ns(jwt),
            fmt_ns(prim),
            fmt_ns(prep),
            full / prim,
            full / prep
        );
    }
    let parse: BTreeMap<&str, Option<f64>> = ["header", "claims", "grants"]
        .into_iter()
        .map(|f| (f, median_ns(dir, "parse", f)))
        .collect();
    if parse.values().all(Option::is_some) {
        any = true;
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Parsing in every verification: header (base64 + JSON) {}, claims (base64 + JSON map) {}, grants from 3 filters {}.",
            fmt_ns(parse["header"].unwrap()),
            fmt_ns(parse["claims"].unwrap()),
            fmt_ns(parse["grants"].unwrap()),
        );
    }
    let mut acl = String::new();
    let _ = writeln!(
        acl,
        "| granted filters | may_publish allowed | may_publish denied | may_subscribe allowed | may_subscribe denied |"
    );
    let _ = writeln!(acl, "|---:|---:|---:|---:|---:|");
    let mut acl_any = false;
    for n in [1, 10, 100] {
        let group = format!("acl/{n}");
        let cells: Vec<Option<f64>> = [
            "may_publish/allowed",
            "may_publish/denied",
            "may_subscribe/allowed",
            "may_subscribe/denied",
        ]
        .into_iter()
        .map(|f| median_ns(dir, &group, f))
        .collect();
        if cells.iter().all(Option::is_some) {
            acl_any = true;
            let cells: Vec<String> = cells.into_iter().map(|c| fmt_ns(c.unwrap())).collect();
            let _ = writeln!(acl, "| {n} | {} |", cells.join(" | "));
        }
    }
    if acl_any {
        any = true;
        let _ = writeln!(out);
        out.push_str(&acl);
    }
    any.then_some(out)
}
