// Tests panic on purpose when a fixture cannot be set up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::keys::testing::{ec_jwk, ed_jwk, jwks};
use crate::keys::tests::{SECRET, kids, open, write};
use crate::keys::{DenyKind, KeyStore, ShortSecret};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

#[test]
fn b64_file_is_an_hmac_key_named_by_its_stem() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "device-fleet.b64",
        &STANDARD.encode(b"0123456789abcdef".repeat(4)),
    );
    let (store, report) = open(dir.path());
    assert!(report.issues.is_empty(), "{report}");
    assert_eq!(report.keys, 1);
    let set = store.snapshot();
    let key = set.get("device-fleet").unwrap();
    assert_eq!(key.algorithms(), HMAC_ALGORITHMS);
    assert_eq!(key.source(), dir.path().join("device-fleet.b64"));
    assert!(key.signing_key().is_some());
}

#[test]
fn short_secrets_are_left_out_and_a_shortened_file_keeps_its_key() {
    use jsonwebtoken::Algorithm::{HS256, HS384, HS512};
    let dir = tempfile::tempdir().unwrap();
    let short = STANDARD.encode([7; 16]);
    write(dir.path(), "fleet.b64", SECRET);
    write(dir.path(), "short.b64", &short);
    write(dir.path(), "mid.b64", &STANDARD.encode([7; 40]));
    let (store, report) = open(dir.path());
    let before = store.snapshot();
    assert_eq!(kids(&before), ["fleet", "mid"]);
    let short_file = dir.path().join("short.b64");
    assert!(
        matches!(
            &report.issues[..],
            [LoadIssue {
                file,
                problem: Problem::File {
                    error: FileError::ShortSecret(ShortSecret { len: 16, alg: HS256, needed: 32 }),
                    kept_previous: 0,
                },
            }] if *file == short_file
        ),
        "{report}"
    );
    assert_eq!(
        report.issues[0].to_string(),
        format!(
            "{}: the secret is 16 bytes long; HS256 needs at least 32 (RFC 7518 §3.2); file left out",
            short_file.display()
        )
    );
    // 40 bytes: enough for HS256, too short for the longer hashes.
    let mid = before.get("mid").unwrap();
    assert!(mid.allows(HS256) && !mid.allows(HS384) && !mid.allows(HS512));
    assert!(before.candidates(HS384).next().is_none());

    // A good secret overwritten by a short one stays in force as it was.
    write(dir.path(), "fleet.b64", &short);
    let report = store.reload().unwrap();
    let after = store.snapshot();
    assert!(std::ptr::eq(
        after.get("fleet").unwrap(),
        before.get("fleet").unwrap()
    ));
    let fleet_file = dir.path().join("fleet.b64");
    assert!(
        report.issues.iter().any(|issue| issue.file == fleet_file
            && matches!(
                issue.problem,
                Problem::File {
                    error: FileError::ShortSecret(_),
                    kept_previous: 1
                }
            )),
        "{report}"
    );
}

#[test]
fn a_secret_may_be_read_by_the_gateways_own_group_only() {
    let concern = |mode, foreign_group| {
        Some(Concern::SecretNotPrivate {
            mode,
            foreign_group,
        })
    };
    // (mode, file's group, gateway's group)
    assert_eq!(exposed(0o100600, 10, 20), None);
    assert_eq!(exposed(0o100640, 20, 20), None);
    assert_eq!(exposed(0o100640, 10, 20), concern(0o640, true));
    assert_eq!(exposed(0o100604, 20, 20), concern(0o604, false));
    assert_eq!(exposed(0o100660, 10, 20), concern(0o660, true));
    for (concern, who) in [
        (concern(0o640, true), "another group can"),
        (concern(0o664, true), "another group and others can"),
        (concern(0o644, false), "others can"),
    ] {
        let text = concern.unwrap().to_string();
        assert!(text.contains(who), "{who:?} in {text}");
    }
}

#[test]
fn secrets_open_to_group_or_others_are_loaded_with_a_warning() {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let dir = tempfile::tempdir().unwrap();
    let chmod = |name: &str, mode| {
        fs::set_permissions(dir.path().join(name), fs::Permissions::from_mode(mode)).unwrap();
    };
    let oct = json!({ "kty": "oct", "kid": "oct", "k": SECRET });
    for (name, text, mode) in [
        ("private.b64", SECRET, 0o600),
        ("group.b64", SECRET, 0o640),
        ("others.b64", SECRET, 0o604),
        ("hmac.json", &jwks(&[oct]), 0o664),
        ("public.json", &jwks(&[ec_jwk("ec")]), 0o644),
        (DENY_LIST_FILE, "sub:d1", 0o644),
        // Left out, so an issue and no warning.
        ("short.b64", "c2VjcmV0", 0o644),
        // A symbolic link is judged by the file it leads to.
        ("..target", SECRET, 0o600),
    ] {
        write(dir.path(), name, text);
        chmod(name, mode);
    }
    symlink("..target", dir.path().join("linked.b64")).unwrap();

    let (store, report) = open(dir.path());
    assert_eq!(
        kids(&store.snapshot()),
        ["ec", "group", "linked", "oct", "others", "private"]
    );
    assert_eq!(report.issues.len(), 1, "{report}");
    let warnings: Vec<(&Path, Concern)> = report
        .warnings
        .iter()
        .map(|warning| {
            (
                warning.file.strip_prefix(dir.path()).unwrap(),
                warning.concern,
            )
        })
        .collect();
    // The test's files belong to its own group, as the gateway's do
    // in the systemd layout: group access alone is no concern.
    let open_to = |name, mode| {
        (
            Path::new(name),
            Concern::SecretNotPrivate {
                mode,
                foreign_group: false,
            },
        )
    };
    assert_eq!(
        warnings,
        [open_to("hmac.json", 0o664), open_to("others.b64", 0o604)]
    );
    let text = report.to_string();
    for (file, who, mode) in [
        ("hmac.json", "others can", "0664"),
        ("others.b64", "others can", "0604"),
    ] {
        let line = format!(
            "\n  warning: {}: holds an HMAC secret, and {who} access it (mode {mode}): ",
            dir.path().join(file).display()
        );
        assert!(text.contains(&line), "{line:?} in {text}");
    }
}

#[test]
fn file_that_is_not_a_jwks_is_a_file_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "broken.json", "{\"keys\": [");
    write(dir.path(), "object.json", "{\"kty\": \"oct\"}");
    write(dir.path(), "ok.b64", SECRET);
    let (store, report) = open(dir.path());
    assert_eq!(kids(&store.snapshot()), ["ok"]);
    assert_eq!(report.issues.len(), 2, "{report}");
    for issue in &report.issues {
        assert!(matches!(
            issue.problem,
            Problem::File {
                error: FileError::Jwks(_),
                kept_previous: 0
            }
        ));
    }
}

#[test]
fn ignores_dotfiles_tmp_files_other_names_and_subdirectories() {
    let dir = tempfile::tempdir().unwrap();
    let secret = SECRET;
    write(dir.path(), ".hidden.b64", secret);
    write(dir.path(), "next.b64.tmp", secret);
    write(dir.path(), ".x.tmp", secret);
    write(dir.path(), "revoked", "kid:real");
    write(dir.path(), "README.md", "not a key");
    fs::create_dir(dir.path().join("tls")).unwrap();
    write(&dir.path().join("tls"), "inner.b64", secret);
    fs::create_dir(dir.path().join("dir.json")).unwrap();
    write(dir.path(), "real.b64", secret);
    let (store, report) = open(dir.path());
    assert!(report.issues.is_empty(), "{report}");
    assert_eq!(kids(&store.snapshot()), ["real"]);
}

#[test]
fn duplicate_kid_keeps_the_lexically_first_file() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "b.json",
        &jwks(&[ec_jwk("shared"), ec_jwk("other")]),
    );
    write(dir.path(), "shared.b64", SECRET);
    write(dir.path(), "a.json", &jwks(&[ed_jwk("shared")]));
    let (store, report) = open(dir.path());
    let set = store.snapshot();
    assert_eq!(kids(&set), ["other", "shared"]);
    assert_eq!(
        set.get("shared").unwrap().source(),
        dir.path().join("a.json")
    );
    let duplicates: Vec<&Path> = report
        .issues
        .iter()
        .filter(|issue| matches!(issue.problem, Problem::DuplicateKid { .. }))
        .map(|issue| issue.file.as_path())
        .collect();
    assert_eq!(
        duplicates,
        [dir.path().join("b.json"), dir.path().join("shared.b64")]
    );
}

#[test]
fn reload_keeps_a_broken_files_previous_keys_and_drops_removed_ones() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "idp.json", &jwks(&[ec_jwk("ec-1")]));
    write(dir.path(), "dev.b64", SECRET);
    write(dir.path(), "gone.b64", SECRET);
    let (store, report) = open(dir.path());
    assert_eq!(report.keys, 3);
    let before = store.snapshot();

    write(dir.path(), "idp.json", "{ half-written");
    write(dir.path(), "dev.b64", "not base64!");
    fs::remove_file(dir.path().join("gone.b64")).unwrap();
    write(dir.path(), "new.b64", SECRET);
    let report = store.reload().unwrap();
    let after = store.snapshot();
    assert_eq!(kids(&after), ["dev", "ec-1", "new"]);
    // The very same keys, not re-read ones.
    assert!(std::ptr::eq(
        after.get("ec-1").unwrap(),
        before.get("ec-1").unwrap()
    ));
    assert_eq!(report.issues.len(), 2, "{report}");
    assert!(report.issues.iter().all(|issue| matches!(
        issue.problem,
        Problem::File {
            kept_previous: 1,
            ..
        }
    )));
    assert!(report.to_string().contains("stays in force"));
    // The snapshot taken before is untouched.
    assert_eq!(kids(&before), ["dev", "ec-1", "gone"]);

    // A good version replaces the kept one; a file broken from the start
    // provides nothing.
    write(dir.path(), "idp.json", &jwks(&[ec_jwk("ec-2")]));
    write(dir.path(), "bad.b64", "!");
    let report = store.reload().unwrap();
    assert_eq!(kids(&store.snapshot()), ["dev", "ec-2", "new"]);
    assert!(report.issues.iter().any(|issue| matches!(
        issue.problem,
        Problem::File {
            kept_previous: 0,
            ..
        }
    )));
}

#[test]
fn empty_directory_is_an_empty_set_and_a_missing_one_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (store, report) = open(dir.path());
    assert!(store.snapshot().is_empty());
    assert_eq!(report.keys, 0);
    let missing = dir.path().join("nope");
    let error = KeyStore::open(&missing).unwrap_err();
    assert!(error.to_string().contains(&*missing.to_string_lossy()));
    // A reload that cannot read the directory leaves the set alone.
    write(dir.path(), "k.b64", SECRET);
    let (store, _) = open(dir.path());
    fs::remove_dir_all(dir.path()).unwrap();
    assert!(store.reload().is_err());
    assert_eq!(store.snapshot().len(), 1);
}

#[test]
fn oversized_and_non_utf8_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let huge = "A".repeat(MAX_KEY_FILE_BYTES as usize + 4);
    write(dir.path(), "huge.b64", &huge);
    fs::write(dir.path().join("latin1.b64"), b"\xe9t\xe9").unwrap();
    let (_, report) = open(dir.path());
    let errors: Vec<String> = report.issues.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2);
    assert!(errors[0].contains("huge.b64: larger than"), "{errors:?}");
    assert!(errors[1].contains("latin1.b64: not UTF-8"), "{errors:?}");
}

#[test]
fn deny_list_is_loaded_with_the_keys_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "dev.b64", SECRET);
    write(dir.path(), DENY_LIST_FILE, "sub:d1\nnonsense\njti:t1\n");
    let (store, report) = open(dir.path());
    assert_eq!(report.revoked, 2);
    assert!(
        report.to_string().contains("2 deny-list entries"),
        "{report}"
    );
    let issues: Vec<String> = report.issues.iter().map(ToString::to_string).collect();
    let revoked = dir.path().join(DENY_LIST_FILE);
    assert_eq!(issues.len(), 1);
    assert!(
        issues[0].starts_with(&format!("{}: line 2: no \"kind:\"", revoked.display())),
        "{issues:?}"
    );
    let set = store.snapshot();
    assert!(set.deny_list().contains(DenyKind::Sub, "d1"));
    assert_eq!(kids(&set), ["dev"]);
}

#[test]
fn unreadable_deny_list_keeps_its_previous_entries_and_a_removed_one_none() {
    let dir = tempfile::tempdir().unwrap();
    let (store, report) = open(dir.path());
    assert_eq!(report.revoked, 0);
    assert!(report.issues.is_empty(), "no deny list is no problem");

    write(dir.path(), DENY_LIST_FILE, "sub:d1\nsub:d2\n");
    let report = store.reload().unwrap();
    assert_eq!(report.revoked, 2);
    let before = store.snapshot();

    // Not UTF-8: as unreadable as a file can be without chmod, which
    // root (CI containers) ignores.
    fs::write(dir.path().join(DENY_LIST_FILE), b"sub:d3\n\xff\n").unwrap();
    let report = store.reload().unwrap();
    assert_eq!(report.revoked, 2);
    assert!(matches!(
        report.issues[..],
        [LoadIssue {
            problem: Problem::DenyList {
                error: FileError::NotUtf8,
                kept_previous: 2
            },
            ..
        }]
    ));
    assert!(report.to_string().contains("(2 entries) stays in force"));
    let after = store.snapshot();
    // The very same list, not a re-read one.
    assert!(std::ptr::eq(after.deny_list(), before.deny_list()));

    fs::remove_file(dir.path().join(DENY_LIST_FILE)).unwrap();
    let report = store.reload().unwrap();
    assert_eq!(report.revoked, 0);
    assert!(store.snapshot().deny_list().is_empty());

    // Unreadable from the first load: nothing to keep, and it says so.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(DENY_LIST_FILE), b"\xff").unwrap();
    let (_, report) = open(dir.path());
    assert!(
        report
            .to_string()
            .contains("nothing is revoked until it can be read"),
        "{report}"
    );
}
