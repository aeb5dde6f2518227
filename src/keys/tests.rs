// Tests panic on purpose when a fixture cannot be set up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::testing::{ec_jwk, jwks, rsa_jwk};
use super::*;
use jsonwebtoken::Algorithm;
use serde_json::json;
use std::fs;
use std::time::{Duration, SystemTime};

/// 32 bytes, the shortest secret a key takes, as base64.
pub(super) const SECRET: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

pub(super) fn write(dir: &Path, name: &str, text: &str) {
    fs::write(dir.join(name), text).unwrap();
}

pub(super) fn open(dir: &Path) -> (KeyStore, LoadReport) {
    KeyStore::open(dir).unwrap()
}

pub(super) fn kids(set: &KeySet) -> Vec<&str> {
    set.iter().map(Key::id).collect()
}

#[test]
fn candidates_are_the_keys_allowing_the_algorithm() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "idp.json",
        &jwks(&[ec_jwk("ec"), rsa_jwk("rsa")]),
    );
    write(dir.path(), "dev.b64", SECRET);
    let (store, _) = open(dir.path());
    let set = store.snapshot();
    let ids = |alg| set.candidates(alg).map(Key::id).collect::<Vec<_>>();
    assert_eq!(ids(Algorithm::ES256), ["ec"]);
    assert_eq!(ids(Algorithm::PS384), ["rsa"]);
    assert_eq!(ids(Algorithm::HS256), ["dev"]);
    assert!(ids(Algorithm::EdDSA).is_empty());
}

#[test]
fn newest_hmac_is_the_most_recently_modified_b64_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let set_age = |name: &str, secs_ago: u64| {
        let file = fs::File::options()
            .write(true)
            .open(dir.path().join(name))
            .unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(secs_ago))
            .unwrap();
    };
    write(dir.path(), "old.b64", SECRET);
    write(dir.path(), "new.b64", SECRET);
    // Newest of all, but its id is taken by a.json, so it is not in force.
    write(dir.path(), "taken.b64", SECRET);
    write(
        dir.path(),
        "a.json",
        &jwks(&[json!({ "kty": "oct", "kid": "taken", "k": SECRET })]),
    );
    set_age("old.b64", 100);
    set_age("new.b64", 10);
    set_age("taken.b64", 1);
    let (store, _) = open(dir.path());
    assert_eq!(store.snapshot().newest_hmac().map(Key::id), Some("new"));

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "idp.json", &jwks(&[ec_jwk("ec")]));
    let (store, _) = open(dir.path());
    assert!(store.snapshot().newest_hmac().is_none());
}
