//! The fixed key material and policies every target verifies against,
//! built once per process.
//!
//! The keys are for these targets only: they sign inputs so that
//! everything after the signature check gets fuzzed. They are not secret
//! and are never loaded by the gateway itself.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};

use crate::acl::{Bindings, Grants};
use crate::config::Config;
use crate::keys::{self, KeySet, KeyStore};
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
pub(super) const ISSUER: &str = "https://idp.fuzz.example/";
pub(super) const AUDIENCES: [&str; 2] = ["gw-fuzz", "gw-other"];

/// The token `mqtt_session` connects with: fixed claims that never expire
/// before 2100, so the same bytes stay valid in every corpus file.
const SESSION_HEADER: &str = r#"{"alg":"HS256","typ":"JWT","kid":"hs"}"#;
const SESSION_CLAIMS: &str = r#"{"sub":"fuzz-device","iat":1700000000,"exp":4102444800,"topics":["devices/fuzz-device/#","fleet/+/status","up"]}"#;

/// Separates the parts of a multi-part input. Never valid in UTF-8, so no
/// JSON or topic the fuzzer writes needs it.
pub(super) const SEPARATOR: u8 = 0xFF;

pub(super) struct Fixture {
    pub(super) keys: Arc<KeyStore>,
    pub(super) set: Arc<KeySet>,
    pub(super) default_policy: Policy,
    pub(super) strict_policy: Policy,
    pub(super) hmac: EncodingKey,
    pub(super) ec: EncodingKey,
    pub(super) ed: EncodingKey,
    /// `SESSION_HEADER.SESSION_CLAIMS`, encoded and signed.
    pub(super) session_token: String,
    /// Its header and claims part: a stream holding these bytes may carry
    /// a valid token; one without them cannot.
    pub(super) session_signed_part: String,
    pub(super) session_grants: Grants,
}

pub(super) fn fixture() -> &'static Fixture {
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

pub(super) fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Secrets readable by others load with a warning; the fixture wants none.
pub(super) fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .expect("make the secret private");
}

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The token the `mqtt_session` target connects with, for building corpus
/// files that carry it in their own CONNECT.
pub fn session_token() -> &'static str {
    &fixture().session_token
}
