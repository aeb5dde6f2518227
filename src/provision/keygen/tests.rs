//! Key files as keygen leaves them: modes, a JWK and CSR that match the
//! key, and nothing overwritten.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;

use super::super::device_key::DeviceKey;
use super::*;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn request(dir: &Path, csr: Option<&str>) -> Keygen {
    Keygen {
        dir: dir.join("keys"),
        name: "device".into(),
        csr_subject: csr.map(str::to_owned),
    }
}

#[test]
fn writes_a_p256_key_its_public_halves_and_a_csr() {
    let dir = tempfile::tempdir().unwrap();
    let generated = keygen(&request(dir.path(), Some("thermostat-1a"))).unwrap();
    assert_eq!(mode(&generated.key), 0o600);
    assert_eq!(mode(&dir.path().join("keys")), 0o700);
    let key = std::fs::read_to_string(&generated.key).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    // The key signs with the kid the JWK carries.
    let loaded = DeviceKey::load(&generated.key, None).unwrap();
    assert_eq!(loaded.kid(), generated.kid);
    let jwk: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&generated.jwk).unwrap()).unwrap();
    assert_eq!(jwk["kid"], generated.kid.as_str());
    assert_eq!(jwk["alg"], "ES256");
    assert_eq!(jwk["crv"], "P-256");
    assert!(jwk.get("d").is_none(), "the JWK must be public: {jwk}");
    let public = std::fs::read_to_string(&generated.public_pem).unwrap();
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
    let csr = std::fs::read_to_string(generated.csr.as_ref().unwrap()).unwrap();
    let params = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
    let cn = params
        .params
        .distinguished_name
        .get(&DnType::CommonName)
        .unwrap();
    assert_eq!(cn, &rcgen::DnValue::Utf8String("thermostat-1a".into()));
    use rcgen::PublicKeyData;
    let pair = rcgen::KeyPair::from_pem(&key).unwrap();
    assert_eq!(params.public_key.der_bytes(), pair.public_key_raw());
}

#[test]
fn never_overwrites_and_writes_nothing_when_one_file_exists() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::write(keys.join("device.jwk.json"), "mine").unwrap();
    let error = keygen(&request(dir.path(), None)).unwrap_err();
    assert!(matches!(error, Error::KeygenExists { .. }), "{error}");
    let names: Vec<_> = std::fs::read_dir(&keys)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names, ["device.jwk.json"]);
    assert_eq!(
        std::fs::read_to_string(keys.join("device.jwk.json")).unwrap(),
        "mine"
    );

    let first = keygen(&Keygen {
        name: "other".into(),
        ..request(dir.path(), None)
    })
    .unwrap();
    let before = std::fs::read(&first.key).unwrap();
    assert!(
        keygen(&Keygen {
            name: "other".into(),
            ..request(dir.path(), None)
        })
        .is_err()
    );
    assert_eq!(std::fs::read(&first.key).unwrap(), before);
}

#[test]
fn a_name_must_be_a_plain_file_name() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["", ".hidden", "a/b"] {
        let error = keygen(&Keygen {
            name: name.into(),
            ..request(dir.path(), None)
        })
        .unwrap_err();
        assert!(matches!(error, Error::KeygenDir { .. }), "{name}: {error}");
    }
}
