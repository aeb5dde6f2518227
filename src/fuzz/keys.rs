//! The keys directory targets: `jwks_parse` (one JWK set file) and
//! `keys_dir` (a whole directory, opened and reloaded).

use std::path::{Path, PathBuf};

use super::fixture::{SEPARATOR, set_private};
use crate::keys::{self, KeyStore, Problem};

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
