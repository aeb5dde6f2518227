//! Property tests over the public API (issue 10, "Property tests"):
//!
//! - tokens: mint/sign-then-verify round-trips for every key type; any
//!   flipped, inserted or deleted byte is refused unless the token still
//!   decodes to the very same segments; another `alg` in the header
//!   (`none`, HS256 keyed with a public key, ...) is refused; `exp`,
//!   `nbf`, `iat` around the leeway boundary as README documents;
//! - topics: `TopicFilter::parse`, `matches_topic`, `covers` and `Grants`
//!   against a small reference matcher written here;
//! - the keys directory: any sequence of writes, atomic renames and
//!   removals of good and broken files, followed by `reload`, leaves the
//!   keys of the good files present, a broken file keeping its last good
//!   version (src/keys/mod.rs, "The model").
//!
//! The MQTT sequence property needs crate-internal types and lives in
//! `src/gateway/client/tests.rs`.

// Tests panic on purpose when a fixture cannot be set up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../src/keys/testing.rs"]
#[allow(dead_code)]
mod jwk;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use jwtgate::acl::{Bindings, Grants};
use jwtgate::config::Config;
use jwtgate::keys::{KeySet, KeyStore};
use jwtgate::mqtt::QoS;
use jwtgate::mqtt::TopicFilter;
use jwtgate::token::{self, MintClaims, Policy, VerifiedToken};
use proptest::prelude::*;
use rcgen::PublicKeyData;
use serde_json::{Map, Value, json};
use tempfile::TempDir;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------------------
// Tokens

/// The filters a verified token grants once bound to a connection, and how
/// many of its grants were left out.
fn granted(verified: &VerifiedToken) -> (BTreeSet<String>, usize) {
    let bound = verified
        .grants
        .bind(&Bindings {
            client_id: Some("c"),
            subject: verified.subject.as_deref(),
            username: Some("JWT"),
        })
        .unwrap();
    let filters = bound
        .grants
        .filters()
        .map(|filter| filter.as_str().to_owned())
        .collect();
    (filters, bound.dropped.len())
}

const SECRET: &[u8] = b"properties: a 32-byte HMAC key..";

/// One key directory for every token property: `dev.b64` and `idp.json`
/// with an RSA, an EC P-256 and an Ed25519 key.
struct Keys {
    _dir: TempDir,
    store: KeyStore,
    rsa: jwk::TestKey,
    ec: jwk::TestKey,
    ed: jwk::TestKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let (rsa, ec, ed) = (jwk::rsa("rsa"), jwk::ec("ec"), jwk::ed("ed"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dev.b64"), STANDARD.encode(SECRET)).unwrap();
        let jwks = jwk::jwks(&[rsa.jwk.clone(), ec.jwk.clone(), ed.jwk.clone()]);
        std::fs::write(dir.path().join("idp.json"), jwks).unwrap();
        let (store, report) = KeyStore::open(dir.path()).unwrap();
        assert!(report.issues.is_empty(), "{report}");
        assert_eq!(store.snapshot().len(), 4);
        Keys {
            _dir: dir,
            store,
            rsa,
            ec,
            ed,
        }
    })
}

fn key_set() -> std::sync::Arc<KeySet> {
    keys().store.snapshot()
}

fn policy_with(leeway: u64) -> Policy {
    let mut auth = Config::defaults(Path::new("/unused")).auth;
    auth.leeway = Duration::from_secs(leeway);
    Policy::from_config(&auth)
}

fn policy() -> Policy {
    policy_with(Config::defaults(Path::new("/unused")).auth.leeway.as_secs())
}

/// The four kinds of key the gateway verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    Hs256,
    Rs256,
    Es256,
    EdDsa,
}

impl KeyKind {
    const ALL: [KeyKind; 4] = [
        KeyKind::Hs256,
        KeyKind::Rs256,
        KeyKind::Es256,
        KeyKind::EdDsa,
    ];

    fn alg(self) -> Algorithm {
        match self {
            KeyKind::Hs256 => Algorithm::HS256,
            KeyKind::Rs256 => Algorithm::RS256,
            KeyKind::Es256 => Algorithm::ES256,
            KeyKind::EdDsa => Algorithm::EdDSA,
        }
    }

    fn kid(self) -> &'static str {
        match self {
            KeyKind::Hs256 => "dev",
            KeyKind::Rs256 => "rsa",
            KeyKind::Es256 => "ec",
            KeyKind::EdDsa => "ed",
        }
    }

    fn encoding_key(self) -> EncodingKey {
        match self {
            KeyKind::Hs256 => EncodingKey::from_secret(SECRET),
            KeyKind::Rs256 => keys().rsa.encoding_key(),
            KeyKind::Es256 => keys().ec.encoding_key(),
            KeyKind::EdDsa => keys().ed.encoding_key(),
        }
    }

    fn public(self) -> Option<&'static jwk::TestKey> {
        match self {
            KeyKind::Hs256 => None,
            KeyKind::Rs256 => Some(&keys().rsa),
            KeyKind::Es256 => Some(&keys().ec),
            KeyKind::EdDsa => Some(&keys().ed),
        }
    }
}

fn key_kind() -> impl Strategy<Value = KeyKind> {
    prop::sample::select(KeyKind::ALL.to_vec())
}

fn sign(kind: KeyKind, kid: bool, claims: &Value) -> String {
    let mut header = Header::new(kind.alg());
    header.kid = kid.then(|| kind.kid().to_owned());
    jsonwebtoken::encode(&header, claims, &kind.encoding_key()).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Valid topic filters, some with wildcards, some with `$`.
fn grant() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            4 => "[a-z0-9]{1,6}",
            1 => Just("+".to_owned()),
            1 => Just(String::new()),
            1 => Just("$SYS".to_owned()),
        ],
        1..4,
    )
    .prop_flat_map(|levels| {
        (Just(levels), any::<bool>()).prop_map(|(mut levels, hash)| {
            if hash {
                levels.push("#".to_owned());
            }
            levels.join("/")
        })
    })
    .prop_filter("a valid filter", |f| TopicFilter::parse(f).is_ok())
}

/// Claims that neither `verify` nor the topics claim reads.
fn extra_claims() -> impl Strategy<Value = Map<String, Value>> {
    let value = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::from),
        prop::collection::vec("[a-z]{0,5}", 0..3).prop_map(Value::from),
    ];
    prop::collection::btree_map("x_[a-z]{1,6}", value, 0..5)
        .prop_map(|map| map.into_iter().collect())
}

/// A token and how `verify` judged it when fresh.
struct Signed {
    token: String,
    verified: VerifiedToken,
}

fn signed_token(kind: KeyKind, kid: bool) -> Signed {
    let claims = json!({
        "sub": "dev-1",
        "exp": now() + 3600,
        "iat": now(),
        "jti": "j-1",
        "topics": ["devices/dev-1/#"],
    });
    let token = sign(kind, kid, &claims);
    let verified = token::verify(&token, &key_set(), &policy()).unwrap();
    Signed { token, verified }
}

#[derive(Debug, Clone)]
enum Mutation {
    /// XOR the byte at the index with the mask (never 0).
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Delete(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip(at, mask)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(at, b)| Mutation::Insert(at, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Delete),
    ]
}

impl Mutation {
    fn apply(&self, mut bytes: Vec<u8>) -> Vec<u8> {
        match *self {
            Mutation::Flip(ref at, mask) => {
                let at = at.index(bytes.len());
                bytes[at] ^= mask;
            }
            Mutation::Insert(ref at, byte) => bytes.insert(at.index(bytes.len() + 1), byte),
            Mutation::Delete(ref at) => {
                bytes.remove(at.index(bytes.len()));
            }
        }
        bytes
    }
}

/// The decoded header, claims and signature of a compact token, if it has
/// that shape and each part is base64url (the decoder here allows
/// non-canonical trailing bits, so that a change only in bits base64 does
/// not carry counts as no change).
fn decoded_segments(token: &[u8]) -> Option<[Vec<u8>; 3]> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LAX: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    let text = std::str::from_utf8(token).ok()?;
    let parts: Vec<&str> = text.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return None;
    };
    Some([
        LAX.decode(header).ok()?,
        LAX.decode(claims).ok()?,
        LAX.decode(signature).ok()?,
    ])
}

/// Header algorithms a forger might try.
const FORGED_ALGS: [&str; 14] = [
    "none", "None", "NONE", "", "HS256", "HS384", "HS512", "RS256", "RS512", "PS256", "ES256",
    "ES384", "EdDSA", "hs256",
];

/// What a forger signs with when the header says HMAC: bytes anyone can
/// get (a public key in every encoding the gateway or an IdP publishes).
fn public_key_bytes(kind: KeyKind) -> Vec<Vec<u8>> {
    let Some(key) = kind.public() else {
        return vec![SECRET.to_vec()];
    };
    vec![
        key.pair.public_key_pem().into_bytes(),
        key.pair.subject_public_key_info(),
        key.pair.public_key_raw().to_vec(),
        key.jwk.to_string().into_bytes(),
        jwk::jwks(std::slice::from_ref(&key.jwk)).into_bytes(),
    ]
}

fn hmac(alg: &str, key: &[u8], message: &[u8]) -> Vec<u8> {
    use aws_lc_rs::hmac;
    let algorithm = match alg {
        "HS384" => hmac::HMAC_SHA384,
        "HS512" => hmac::HMAC_SHA512,
        _ => hmac::HMAC_SHA256,
    };
    hmac::sign(&hmac::Key::new(algorithm, key), message)
        .as_ref()
        .to_vec()
}

/// Accepted by README's rules ("exp + leeway", "nbf - leeway", "iat <= now
/// + leeway"), in whole seconds, computed without any saturation.
fn dates_ok(now: u64, leeway: u64, exp: u64, nbf: Option<u64>, iat: Option<u64>) -> bool {
    let (now, leeway) = (u128::from(now), u128::from(leeway));
    now < u128::from(exp) + leeway
        && nbf.is_none_or(|nbf| u128::from(nbf) <= now + leeway)
        && iat.is_none_or(|iat| u128::from(iat) <= now + leeway)
}

/// A date relative to now, written as JSON the way a token might carry it:
/// whole seconds, or with a fraction (which README says is dropped).
#[derive(Debug, Clone, Copy)]
struct RelDate {
    /// Seconds from now, plus the leeway times `leeway_factor`.
    offset: i64,
    leeway_factor: i64,
    fraction: bool,
}

impl RelDate {
    fn at(self, now: u64, leeway: u64) -> (u64, Value) {
        let leeway = i64::try_from(leeway).unwrap();
        let secs =
            u64::try_from(i64::try_from(now).unwrap() + self.offset + self.leeway_factor * leeway)
                .unwrap();
        let json = if self.fraction {
            json!(secs as f64 + 0.75)
        } else {
            json!(secs)
        };
        (secs, json)
    }
}

fn rel_date() -> impl Strategy<Value = RelDate> {
    (-3i64..=3, -1i64..=1, prop::bool::weighted(0.2)).prop_map(
        |(offset, leeway_factor, fraction)| RelDate {
            offset,
            leeway_factor,
            fraction,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any claims signed by any key verify, and come back as signed.
    #[test]
    fn signed_claims_round_trip_for_every_key_type(
        kind in key_kind(),
        kid in any::<bool>(),
        subject in "\\PC{1,30}",
        topics in prop::collection::vec(grant(), 1..6),
        ttl in 1u64..10_000_000,
        jti in prop::option::of("[A-Za-z0-9_-]{1,22}"),
        extra in extra_claims(),
    ) {
        let exp = now() + 60 + ttl;
        let mut claims = extra;
        claims.insert("sub".into(), subject.clone().into());
        claims.insert("exp".into(), exp.into());
        claims.insert("iat".into(), now().into());
        claims.insert("topics".into(), topics.clone().into());
        if let Some(jti) = &jti {
            claims.insert("jti".into(), jti.clone().into());
        }
        let token = sign(kind, kid, &Value::Object(claims));
        let verified = token::verify(&token, &key_set(), &policy());
        let verified = verified.map_err(|e| TestCaseError::fail(format!("{e}: {token}")))?;
        prop_assert_eq!(verified.subject.as_deref(), Some(subject.as_str()));
        prop_assert_eq!(verified.key_id.as_str(), kind.kid());
        prop_assert_eq!(verified.expires_at, Some(exp));
        prop_assert_eq!(&verified.jti, &jti);
        let (granted, dropped) = granted(&verified);
        prop_assert_eq!(granted, topics.iter().cloned().collect::<BTreeSet<_>>());
        prop_assert_eq!(dropped, 0);
    }

    /// `jwtgate mint`'s tokens verify with the claims they were minted with.
    #[test]
    fn minted_tokens_round_trip(
        subject in "\\PC{1,30}",
        topics in prop::collection::vec(grant(), 1..6),
        ttl in 1u64..10_000_000,
        issuer in prop::option::of("[a-z:/.]{1,20}"),
        audience in prop::collection::vec("[a-z]{1,8}", 0..3),
    ) {
        let dev = key_set();
        let claims = MintClaims {
            subject: subject.clone(),
            topics: topics.clone(),
            ttl: Duration::from_secs(ttl),
            topics_claim: "topics".into(),
            issuer: issuer.clone(),
            audience: audience.clone(),
        };
        let before = now();
        let token = token::mint(dev.get("dev").unwrap(), &claims).unwrap();
        let mut auth = Config::defaults(Path::new("/unused")).auth;
        auth.issuer = issuer;
        auth.audience = (!audience.is_empty()).then_some(audience);
        let verified = token::verify(&token, &dev, &Policy::from_config(&auth)).unwrap();
        prop_assert_eq!(verified.subject.as_deref(), Some(subject.as_str()));
        prop_assert_eq!(verified.key_id.as_str(), "dev");
        let exp = verified.expires_at.unwrap();
        prop_assert!(before + ttl <= exp && exp <= now() + ttl, "exp {}", exp);
        let (granted, _) = granted(&verified);
        prop_assert_eq!(granted, topics.iter().cloned().collect::<BTreeSet<_>>());
    }

    /// A flipped, inserted or deleted byte anywhere is refused, unless the
    /// token still decodes to exactly the same header, claims and
    /// signature; then it must mean exactly what it meant.
    #[test]
    fn a_mutated_token_is_refused_unless_it_decodes_the_same(
        kind in key_kind(),
        kid in any::<bool>(),
        mutations in prop::collection::vec(mutation(), 1..3),
    ) {
        let original = signed_token(kind, kid);
        let mut bytes = original.token.clone().into_bytes();
        for mutation in &mutations {
            bytes = mutation.apply(bytes);
        }
        // A password that is not UTF-8 is no token at all.
        let Ok(text) = std::str::from_utf8(&bytes) else {
            return Ok(());
        };
        prop_assume!(text != original.token);
        let same = decoded_segments(text.as_bytes()) == decoded_segments(original.token.as_bytes());
        if let Ok(verified) = token::verify(text, &key_set(), &policy()) {
            prop_assert!(same, "accepted a changed token: {:?}", text);
            prop_assert_eq!(verified, original.verified);
        }
    }

    /// The header's `alg` changed (to `none`, to HMAC keyed with the public
    /// key, to another family or size): refused, whatever the signature.
    #[test]
    fn another_alg_in_the_header_is_refused(
        kind in key_kind(),
        kid in any::<bool>(),
        alg in prop::sample::select(FORGED_ALGS.to_vec()),
        hmac_key in any::<prop::sample::Index>(),
        signature_kind in 0..3u8,
    ) {
        prop_assume!(alg != format!("{:?}", kind.alg()));
        let original = signed_token(kind, true);
        let mut parts = original.token.split('.');
        let (_, claims, old_signature) =
            (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let mut header = json!({ "alg": alg, "typ": "JWT" });
        if kid {
            header["kid"] = kind.kid().into();
        }
        let message = format!("{}.{}", b64(header.to_string().as_bytes()), claims);
        let candidates = public_key_bytes(kind);
        let signature = match signature_kind {
            // As `alg: none` asks: no signature.
            0 => String::new(),
            // HMAC over the new message with public (or the HMAC) key bytes.
            1 => b64(&hmac(alg, hmac_key.get::<Vec<u8>>(&candidates), message.as_bytes())),
            // The original signature, over a different header.
            _ => old_signature.to_owned(),
        };
        let forged = format!("{message}.{signature}");
        let result = token::verify(&forged, &key_set(), &policy());
        prop_assert!(result.is_err(), "accepted {} ({:?})", forged, result);
    }

    /// `exp`, `nbf` and `iat` near the boundaries README documents, with
    /// and without a maximum lifetime, against the real clock through the
    /// public `verify`.
    #[test]
    fn dates_near_the_leeway_boundary_behave_as_documented(
        kind in key_kind(),
        leeway in prop::sample::select(vec![0u64, 1, 5, 60]),
        exp in rel_date(),
        nbf in prop::option::of(rel_date()),
        iat in prop::option::of(rel_date()),
        max_lifetime in prop::option::of(1u64..12),
    ) {
        // A second may tick between reading the clock and `verify`
        // reading it; then the case is tried again.
        let mut checked = false;
        for _ in 0..10 {
            let at = now();
            let (exp_secs, exp_json) = exp.at(at, leeway);
            let nbf = nbf.map(|d| d.at(at, leeway));
            let iat = iat.map(|d| d.at(at, leeway));
            let mut claims = json!({ "sub": "d", "exp": exp_json, "topics": ["t"] });
            if let Some((_, json)) = &nbf {
                claims["nbf"] = json.clone();
            }
            if let Some((_, json)) = &iat {
                claims["iat"] = json.clone();
            }
            let token = sign(kind, true, &claims);
            let mut auth = Config::defaults(Path::new("/unused")).auth;
            auth.leeway = Duration::from_secs(leeway);
            auth.max_token_lifetime = max_lifetime.map(Duration::from_secs);
            let result = token::verify(&token, &key_set(), &Policy::from_config(&auth));
            if now() != at {
                continue;
            }
            let iat = iat.map(|(s, _)| s);
            // README: with a maximum lifetime, `exp - iat` must be within
            // it; no `iat`, or `iat` after `exp`, is refused.
            let lifetime_ok = max_lifetime
                .is_none_or(|max| iat.is_some_and(|iat| iat <= exp_secs && exp_secs - iat <= max));
            let expected = dates_ok(at, leeway, exp_secs, nbf.map(|(s, _)| s), iat) && lifetime_ok;
            prop_assert_eq!(result.is_ok(), expected, "now {} leeway {} claims {} {:?}", at, leeway, claims, result);
            checked = true;
            break;
        }
        prop_assert!(checked, "the clock never held still for a second");
    }
}

/// A date beyond 64 bits counts as the largest one (README): a far-future
/// `exp` is valid, a far-future `nbf` or `iat` is not.
#[test]
fn far_future_dates_count_as_the_largest() {
    for kind in KeyKind::ALL {
        let sign_with = |extra: Value| {
            let mut claims = json!({ "sub": "d", "exp": 1e30, "topics": ["t"] });
            for (name, value) in extra.as_object().unwrap() {
                claims[name.as_str()] = value.clone();
            }
            token::verify(&sign(kind, true, &claims), &key_set(), &policy())
        };
        let valid = sign_with(json!({})).unwrap();
        assert_eq!(valid.expires_at, Some(u64::MAX));
        assert!(sign_with(json!({ "exp": u64::MAX })).is_ok());
        assert!(sign_with(json!({ "nbf": 1e30 })).is_err());
        assert!(sign_with(json!({ "iat": 1e30 })).is_err());
    }
}

// ---------------------------------------------------------------------------
// Topics: a reference matcher, written from the MQTT rules and nothing else.

fn ref_valid_filter(filter: &str) -> bool {
    let levels: Vec<&str> = filter.split('/').collect();
    !filter.is_empty()
        && filter.len() <= 65535
        && !filter.contains('\0')
        && levels.iter().enumerate().all(|(i, level)| match *level {
            "+" => true,
            "#" => i == levels.len() - 1,
            other => !other.contains(['+', '#']),
        })
}

fn ref_valid_topic(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 65535 && !topic.contains(['\0', '+', '#'])
}

/// Whether the valid filter `filter` matches the valid topic `topic`.
fn ref_matches(filter: &str, topic: &str) -> bool {
    fn levels(filter: &[&str], topic: &[&str]) -> bool {
        match (filter, topic) {
            ([], []) => true,
            // `#` matches its parent level and everything below.
            (["#"], _) => true,
            (["+", f @ ..], [_, t @ ..]) => levels(f, t),
            ([literal, f @ ..], [level, t @ ..]) => literal == level && levels(f, t),
            _ => false,
        }
    }
    // The `$` rule: a first-level wildcard never matches a `$` topic.
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    levels(&f, &t)
}

/// Whether every topic `theirs` matches is matched by `ours`, decided by
/// enumerating every topic up to one level deeper than either filter over
/// the literals both use plus one other plain and one other `$` level:
/// within a level a filter only tells those classes apart, and past its
/// depth only a trailing `#` matches, deciding from the levels before.
fn ref_covers(ours: &str, theirs: &str) -> bool {
    let mut alphabet: BTreeSet<&str> = ["", "fresh", "$fresh"].into();
    for level in ours.split('/').chain(theirs.split('/')) {
        if level != "+" && level != "#" {
            alphabet.insert(level);
        }
    }
    let depth = ours.split('/').count().max(theirs.split('/').count()) + 1;
    let mut layer = vec![String::new()];
    for d in 1..=depth {
        let mut next = Vec::new();
        for prefix in &layer {
            for level in &alphabet {
                let topic = if d == 1 {
                    (*level).to_owned()
                } else {
                    format!("{prefix}/{level}")
                };
                if ref_valid_topic(&topic)
                    && ref_matches(theirs, &topic)
                    && !ref_matches(ours, &topic)
                {
                    return false;
                }
                next.push(topic);
            }
        }
        layer = next;
    }
    true
}

const TOPIC_LEVELS: [&str; 8] = ["a", "b", "", "$x", "$SYS", "a+", "x#", "\0"];

/// Strings shaped like filters and topics, valid or not.
fn topic_like(max_levels: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            6 => prop::sample::select(TOPIC_LEVELS[..5].to_vec()),
            2 => Just("+"),
            2 => Just("#"),
            1 => prop::sample::select(TOPIC_LEVELS[5..].to_vec()),
        ],
        1..=max_levels,
    )
    .prop_map(|levels| levels.join("/"))
}

fn valid_filter(max_levels: usize) -> impl Strategy<Value = String> {
    topic_like(max_levels).prop_filter("a valid filter", |f| ref_valid_filter(f))
}

/// A topic `filter` matches, by construction: each `+` replaced by a
/// level, a `#` by zero or more levels (at least one where the parent
/// would be empty). A `$` first level stands only where the filter says.
fn topic_in(filter: &str, choices: &[u8]) -> Option<String> {
    let words = ["a", "b", "", "c"];
    let mut choices = choices.iter().copied().cycle();
    let mut out: Vec<String> = Vec::new();
    for level in filter.split('/') {
        match level {
            "+" => out.push(words[usize::from(choices.next()? % 4)].to_owned()),
            "#" => {
                for _ in 0..choices.next()? % 3 {
                    out.push(words[usize::from(choices.next()? % 4)].to_owned());
                }
            }
            literal => out.push(literal.to_owned()),
        }
    }
    let topic = out.join("/");
    ref_valid_topic(&topic).then_some(topic)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn parse_and_matches_agree_with_the_reference(
        filter in topic_like(5),
        random_topic in topic_like(5),
        choices in prop::collection::vec(any::<u8>(), 1..16),
        derived in any::<bool>(),
    ) {
        // Random topics rarely match; half the time take one built from
        // the filter (a match by construction, if the filter is valid).
        let topic = match topic_in(&filter, &choices) {
            Some(topic) if derived => topic,
            _ => random_topic,
        };
        let parsed = TopicFilter::parse(&filter);
        prop_assert_eq!(parsed.is_ok(), ref_valid_filter(&filter), "{:?}", filter);
        if let Ok(parsed) = parsed {
            prop_assert_eq!(
                parsed.matches_topic(&topic),
                ref_valid_topic(&topic) && ref_matches(&filter, &topic),
                "{:?} matches {:?}", filter, topic
            );
            // A grant lets a client publish where it matches, except on
            // the server's own `$` topics, which no grant opens to clients.
            let grants = Grants::new(vec![parsed]);
            prop_assert_eq!(
                grants.may_publish(&topic, QoS::AtLeastOnce, false),
                ref_valid_topic(&topic) && !topic.starts_with('$') && ref_matches(&filter, &topic)
            );
        }
    }

    #[test]
    fn covers_agrees_with_the_reference(
        ours in valid_filter(3),
        theirs in valid_filter(3),
        group in prop::option::of("[a-z]{1,4}"),
    ) {
        let expected = ref_covers(&ours, &theirs);
        let (a, b) = (TopicFilter::parse(&ours).unwrap(), TopicFilter::parse(&theirs).unwrap());
        prop_assert_eq!(a.covers(&b), expected, "{:?} covers {:?}", ours, theirs);
        // A subscription, shared or not, is granted on its filter.
        let requested = match &group {
            Some(group) => format!("$share/{group}/{theirs}"),
            None => theirs.clone(),
        };
        prop_assert_eq!(
            Grants::new(vec![a]).may_subscribe(&requested, QoS::AtLeastOnce),
            expected,
            "{:?}",
            requested
        );
    }

    /// covers(a, b): every topic b matches (sampled from b itself, so that
    /// there are many) is matched by a.
    #[test]
    fn a_covered_filters_topics_are_matched_by_the_cover(
        ours in valid_filter(4),
        theirs in valid_filter(4),
        choices in prop::collection::vec(any::<u8>(), 1..16),
    ) {
        let (a, b) = (TopicFilter::parse(&ours).unwrap(), TopicFilter::parse(&theirs).unwrap());
        let Some(topic) = topic_in(&theirs, &choices) else {
            return Ok(());
        };
        prop_assert!(b.matches_topic(&topic), "{:?} does not match its own {:?}", theirs, topic);
        if a.covers(&b) {
            prop_assert!(a.matches_topic(&topic), "{:?} covers {:?} but not {:?}", ours, theirs, topic);
        }
        // And the same for a cover of b built by widening it.
        let widened = widen(&theirs, &choices);
        let w = TopicFilter::parse(&widened).unwrap();
        prop_assert!(w.covers(&b), "{:?} widened to {:?}", theirs, widened);
        prop_assert!(w.matches_topic(&topic), "{:?} by {:?}", topic, widened);
    }
}

/// `filter` with some literal levels turned into `+` and possibly its tail
/// into `#`: a superset of it, except that a `$` first level stays literal
/// (the `$` rule would take those topics away).
fn widen(filter: &str, choices: &[u8]) -> String {
    let levels: Vec<&str> = filter.split('/').collect();
    let mut out: Vec<&str> = Vec::new();
    for (i, level) in levels.iter().enumerate() {
        let choice = choices[i % choices.len()];
        if *level == "+" || *level == "#" {
            out.push(level);
            continue;
        }
        let dollar_first = i == 0 && level.starts_with('$');
        if choice % 5 == 0 && i > 0 {
            // `a/#` covers `a/...` entirely, `a` included.
            out.push("#");
            return out.join("/");
        }
        out.push(if choice % 3 == 0 && !dollar_first {
            "+"
        } else {
            level
        });
    }
    out.join("/")
}

// ---------------------------------------------------------------------------
// The keys directory

/// The key files the property writes: three HMAC secrets, and a JWK set
/// holding one EC key, with the key id each one defines.
const KEY_FILES: [KeyFile; 4] = [
    KeyFile {
        file: "k1.b64",
        kid: "k1",
    },
    KeyFile {
        file: "k2.b64",
        kid: "k2",
    },
    KeyFile {
        file: "k3.b64",
        kid: "k3",
    },
    KeyFile {
        file: "idp.json",
        kid: "ec",
    },
];

/// Good versions of each file.
const VERSIONS: u8 = 4;

#[derive(Debug, Clone, Copy)]
struct KeyFile {
    file: &'static str,
    kid: &'static str,
}

impl KeyFile {
    fn is_jwks(self) -> bool {
        self.file.ends_with(".json")
    }

    fn bytes(self, content: Content) -> Vec<u8> {
        match (content, self.is_jwks()) {
            (Content::Good(version), false) => {
                STANDARD.encode(secret(self.kid, version)).into_bytes()
            }
            (Content::Good(version), true) => {
                let mut jwk = ec_versions()[usize::from(version)].jwk.clone();
                jwk["kid"] = self.kid.into();
                jwk::jwks(&[jwk]).into_bytes()
            }
            (Content::Empty, _) => Vec::new(),
            (Content::Garbled, false) => b"not base64!".to_vec(),
            (Content::Garbled, true) => b"{\"keys\": [".to_vec(),
            (Content::Wrong, false) => STANDARD.encode([7u8; 16]).into_bytes(),
            (Content::Wrong, true) => b"{\"keys\": 5}".to_vec(),
            (Content::NotUtf8, _) => vec![0xff, 0xfe, b'A', b'A'],
        }
    }

    /// A token signed with `version` of this file's key.
    fn token(self, version: u8) -> String {
        let claims = json!({ "sub": "d", "exp": now() + 600, "topics": ["t"] });
        let (alg, key) = if self.is_jwks() {
            let key = ec_versions()[usize::from(version)].encoding_key();
            (Algorithm::ES256, key)
        } else {
            let key = EncodingKey::from_secret(&secret(self.kid, version));
            (Algorithm::HS256, key)
        };
        let mut header = Header::new(alg);
        header.kid = Some(self.kid.to_owned());
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }
}

/// One EC key pair per good version of the JWK set.
fn ec_versions() -> &'static [jwk::TestKey] {
    static PAIRS: OnceLock<Vec<jwk::TestKey>> = OnceLock::new();
    PAIRS.get_or_init(|| (0..VERSIONS).map(|_| jwk::ec("ec")).collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    /// A key unique to (file, version).
    Good(u8),
    Empty,
    /// Not base64; not JSON.
    Garbled,
    /// A secret too short for HS256; a JWK set whose `keys` is no array.
    Wrong,
    NotUtf8,
}

fn secret(name: &str, version: u8) -> Vec<u8> {
    let mut secret = format!("{name} version {version} ").into_bytes();
    secret.resize(32, b'.');
    secret
}

#[derive(Debug, Clone)]
enum Op {
    Write(usize, Content),
    /// Written as `.{name}.tmp` then renamed over the file.
    Rename(usize, Content),
    Remove(usize),
    /// A leftover scratch file or other name the loader must ignore.
    Ignored(usize, Content),
    Reload,
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        3 => (0..VERSIONS).prop_map(Content::Good),
        1 => Just(Content::Empty),
        1 => Just(Content::Garbled),
        1 => Just(Content::Wrong),
        1 => Just(Content::NotUtf8),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let file = 0..KEY_FILES.len();
    prop_oneof![
        3 => (file.clone(), content()).prop_map(|(n, c)| Op::Write(n, c)),
        3 => (file.clone(), content()).prop_map(|(n, c)| Op::Rename(n, c)),
        2 => file.clone().prop_map(Op::Remove),
        1 => (file, content()).prop_map(|(n, c)| Op::Ignored(n, c)),
        3 => Just(Op::Reload),
    ]
}

/// The directory as the model sees it, and the keys it expects in force.
#[derive(Default)]
struct Model {
    /// By index into `KEY_FILES`.
    files: BTreeMap<usize, Content>,
    /// Index into `KEY_FILES` to the version in force, as of the last load.
    loaded: BTreeMap<usize, u8>,
}

impl Model {
    /// src/keys/mod.rs: a file that fails to load keeps the keys of its
    /// last good version; a file that is gone takes its keys with it.
    fn reload(&mut self) {
        let mut next = BTreeMap::new();
        for (&file, &content) in &self.files {
            match content {
                Content::Good(version) => {
                    next.insert(file, version);
                }
                _ => {
                    if let Some(&kept) = self.loaded.get(&file) {
                        next.insert(file, kept);
                    }
                }
            }
        }
        self.loaded = next;
    }
}

fn assert_keys(set: &KeySet, model: &Model) -> Result<(), TestCaseError> {
    let kids: BTreeSet<&str> = set.iter().map(|key| key.id()).collect();
    let expected: BTreeSet<&str> = model.loaded.keys().map(|&f| KEY_FILES[f].kid).collect();
    prop_assert_eq!(&kids, &expected);
    // The version in force is the one expected: a token signed with its
    // key verifies, one signed with any other version's does not.
    let policy = policy();
    for (&file, &version) in &model.loaded {
        let file = KEY_FILES[file];
        for other in 0..VERSIONS {
            let verified = token::verify(&file.token(other), set, &policy);
            prop_assert_eq!(
                verified.is_ok(),
                other == version,
                "{} v{} in force, token by v{}: {:?}",
                file.file,
                version,
                other,
                verified
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn reload_keeps_the_good_files_and_the_last_good_version_of_broken_ones(
        ops in prop::collection::vec(op(), 1..30),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _report) = KeyStore::open(dir.path()).unwrap();
        let mut model = Model::default();
        prop_assert!(store.snapshot().is_empty());
        for op in ops.iter().chain([&Op::Reload]) {
            match *op {
                Op::Write(n, content) => {
                    let file = KEY_FILES[n];
                    std::fs::write(dir.path().join(file.file), file.bytes(content)).unwrap();
                    model.files.insert(n, content);
                }
                Op::Rename(n, content) => {
                    let file = KEY_FILES[n];
                    let scratch = dir.path().join(format!(".{}.tmp", file.file));
                    std::fs::write(&scratch, file.bytes(content)).unwrap();
                    std::fs::rename(&scratch, dir.path().join(file.file)).unwrap();
                    model.files.insert(n, content);
                }
                Op::Remove(n) => {
                    let _ = std::fs::remove_file(dir.path().join(KEY_FILES[n].file));
                    model.files.remove(&n);
                }
                Op::Ignored(n, content) => {
                    let file = KEY_FILES[n];
                    let name = match content {
                        Content::Good(_) => format!(".{}.tmp", file.file),
                        Content::Empty | Content::Wrong => format!("{}.tmp", file.file),
                        Content::Garbled | Content::NotUtf8 => format!("{}.txt", file.kid),
                    };
                    std::fs::write(dir.path().join(name), file.bytes(content)).unwrap();
                }
                Op::Reload => {
                    let report = store.reload().unwrap();
                    model.reload();
                    prop_assert_eq!(report.keys, model.loaded.len());
                    assert_keys(&store.snapshot(), &model)?;
                }
            }
        }
    }
}
