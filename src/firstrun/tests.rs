use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::ServerCertVerifier;
use tokio_rustls::rustls::crypto::aws_lc_rs::default_provider;
use tokio_rustls::rustls::pki_types::{ServerName, UnixTime};
use tokio_rustls::rustls::{self, RootCertStore};

use super::*;

const ALL: [&str; 5] = [
    "tls/ca.crt",
    "tls/ca.key",
    "tls/server.crt",
    "tls/server.key",
    "dev.b64",
];

fn snapshot(keys: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for dir in [keys.to_path_buf(), keys.join("tls")] {
        for entry in fs::read_dir(&dir).expect("list") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                files.push((path.clone(), fs::read(&path).expect("read")));
            }
        }
    }
    files.sort();
    files
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

/// Verifies `cert` (leaf) for `name` against `ca` as a device would.
fn verify(ca: &Path, cert: &Path, name: &str) -> Result<(), rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(tls::read_certificates(ca).expect("CA"));
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(default_provider()))
            .build()
            .expect("verifier");
    let chain = tls::read_certificates(cert).expect("leaf");
    let name = ServerName::try_from(name).expect("server name");
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .map(drop)
}

#[test]
fn fresh_directory_gets_everything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys");
    let made = ensure_dev_material(&keys).expect("first run");

    let expected: Vec<PathBuf> = ALL.iter().map(|name| keys.join(name)).collect();
    let mut created = made.created.clone();
    created.sort();
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(created, sorted);
    assert_eq!(made.ca_cert, Some(keys.join("tls/ca.crt")));
    assert_eq!(made.secret, keys.join("dev.b64"));
    for private in ["tls/ca.key", "tls/server.key", "dev.b64"] {
        assert_eq!(mode(&keys.join(private)), 0o600, "{private}");
    }
    assert_eq!(mode(&keys.join("tls")), 0o700);
    // No temporary files left behind.
    assert_eq!(snapshot(&keys).len(), 5);

    for name in ["localhost", "127.0.0.1", "::1"] {
        verify(&keys.join("tls/ca.crt"), &made.server_cert, name).expect(name);
    }
    tls::load_certified_key(&made.server_cert, &made.server_key).expect("server pair");
}

#[test]
fn secret_is_32_bytes_of_base64_with_newline() {
    let dir = tempfile::tempdir().expect("temp dir");
    let made = ensure_dev_material(dir.path()).expect("first run");
    let text = fs::read_to_string(&made.secret).expect("secret");
    let line = text.strip_suffix('\n').expect("ends with a newline");
    assert_eq!(STANDARD.decode(line).expect("base64").len(), 32);
}

#[test]
fn second_run_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = ensure_dev_material(dir.path()).expect("first run");
    let before = snapshot(dir.path());
    let second = ensure_dev_material(dir.path()).expect("second run");
    assert!(second.created.is_empty(), "{:?}", second.created);
    assert_eq!(snapshot(dir.path()), before);
    assert_eq!(
        DevMaterial {
            created: first.created.clone(),
            ..second
        },
        first
    );
}

#[test]
fn missing_leaf_is_signed_by_existing_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path();
    let first = ensure_dev_material(keys).expect("first run");
    let old_leaf = fs::read(&first.server_cert).expect("leaf");
    let ca = fs::read(keys.join("tls/ca.crt")).expect("CA");
    fs::remove_file(&first.server_cert).expect("remove");
    fs::remove_file(&first.server_key).expect("remove");

    let again = ensure_dev_material(keys).expect("second run");
    assert_eq!(
        again.created,
        [first.server_key.clone(), first.server_cert.clone()]
    );
    assert_eq!(fs::read(keys.join("tls/ca.crt")).expect("CA"), ca);
    assert_ne!(fs::read(&again.server_cert).expect("leaf"), old_leaf);
    verify(&keys.join("tls/ca.crt"), &again.server_cert, "localhost").expect("chains");

    // The check is meaningful: another CA does not accept this leaf.
    let other = tempfile::tempdir().expect("temp dir");
    let other = write_dev_tls(other.path()).expect("other CA");
    let other_ca = other.ca_cert.expect("other CA");
    assert!(verify(&other_ca, &again.server_cert, "localhost").is_err());
}

#[test]
fn key_without_certificate_gets_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = write_dev_tls(dir.path()).expect("first run");
    let key = fs::read(&first.server_key).expect("key");
    fs::remove_file(&first.server_cert).expect("remove");
    // A crash mid-write leaves this behind; it must not get in the way.
    fs::write(dir.path().join(".server.crt.tmp"), "half").expect("leftover");

    let again = write_dev_tls(dir.path()).expect("second run");
    assert_eq!(again.created, [first.server_cert]);
    assert_eq!(fs::read(&again.server_key).expect("key"), key);
    tls::load_certified_key(&again.server_cert, &again.server_key).expect("pair matches");
    assert!(!dir.path().join(".server.crt.tmp").exists());
}

#[test]
fn ca_key_without_certificate_gets_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = write_dev_tls(dir.path()).expect("first run");
    let ca_cert = first.ca_cert.expect("CA");
    for path in [&ca_cert, &first.server_cert, &first.server_key] {
        fs::remove_file(path).expect("remove");
    }
    let again = write_dev_tls(dir.path()).expect("second run");
    assert_eq!(
        again.created,
        [ca_cert.clone(), first.server_key, first.server_cert]
    );
    tls::load_certified_key(&ca_cert, &dir.path().join("ca.key")).expect("CA pair");
    verify(&ca_cert, &again.server_cert, "localhost").expect("chains");
}

#[test]
fn hand_made_server_pair_without_ca_is_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = write_dev_tls(dir.path()).expect("first run");
    fs::remove_file(dir.path().join("ca.crt")).expect("remove");
    fs::remove_file(dir.path().join("ca.key")).expect("remove");

    let again = write_dev_tls(dir.path()).expect("second run");
    assert!(again.created.is_empty());
    assert_eq!(again.ca_cert, None);
    assert!(!dir.path().join("ca.crt").exists());
    assert!(!dir.path().join("ca.key").exists());
    assert_eq!(again.server_cert, first.server_cert);
}

#[test]
fn certificate_without_key_is_an_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = write_dev_tls(dir.path()).expect("first run");
    fs::remove_file(&first.server_key).expect("remove");
    let err = write_dev_tls(dir.path()).expect_err("cannot complete");
    assert!(
        matches!(&err, FirstRunError::Incomplete { present, missing }
        if *present == first.server_cert && *missing == first.server_key)
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let first = write_dev_tls(dir.path()).expect("first run");
    let ca_key = dir.path().join("ca.key");
    for path in [&ca_key, &first.server_cert, &first.server_key] {
        fs::remove_file(path).expect("remove");
    }
    let err = write_dev_tls(dir.path()).expect_err("cannot sign without CA key");
    assert!(matches!(&err, FirstRunError::Incomplete { missing, .. } if *missing == ca_key));
    assert!(!first.server_cert.exists() && !first.server_key.exists());
}

#[test]
fn existing_secret_suppresses_dev_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path();
    let own = keys.join("fleet.b64");
    // 36 bytes: at least the 32 the loader takes.
    fs::write(&own, "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0\n").expect("write");
    let made = ensure_dev_material(keys).expect("first run");
    assert_eq!(made.secret, own);
    assert!(!keys.join("dev.b64").exists());
    assert!(!made.created.contains(&keys.join("dev.b64")));
}
