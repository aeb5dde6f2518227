// Tests panic on purpose when a fixture cannot be set up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

#[test]
fn deny_list_syntax() {
    let text = "\u{feff}# revoked devices\r\n\
                jti:7f1c9a0e3b\r\n\
                \n\
                \t sub:thermostat-7c        # stolen unit\n\
                kid: fleet-2025#old\n\
                sub:thermostat-7c\n\
                jti:a#1 # an id may contain '#'\n";
    let (list, bad) = parse_deny_list(text);
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(list.len(), 4);
    assert!(list.contains(DenyKind::Jti, "7f1c9a0e3b"));
    assert!(list.contains(DenyKind::Sub, "thermostat-7c"));
    assert!(list.contains(DenyKind::Kid, "fleet-2025#old"));
    assert!(list.contains(DenyKind::Jti, "a#1"));
    // Kinds are separate: a subject named like a jti is not that jti.
    assert!(!list.contains(DenyKind::Jti, "thermostat-7c"));
}

#[test]
fn malformed_deny_lines_are_named_and_skipped() {
    let text = "jti:ok\n\
                thermostat-7c\n\
                uid:42\n\
                sub:   # nothing\n\
                sub:ab cd\n\
                eyJhbGciOiJIUzI1NiJ9.very-long-kind-that-is-clipped:x\n\
                kid:ok\n";
    let (list, bad) = parse_deny_list(text);
    assert_eq!(list.len(), 2);
    let reasons: Vec<String> = bad.iter().map(ToString::to_string).collect();
    assert_eq!(
        reasons,
        [
            "line 2: no \"kind:\" prefix; expected jti:<id>, sub:<id> or kid:<id>; line ignored",
            "line 3: unknown kind \"uid\"; expected jti, sub or kid; line ignored",
            "line 4: \"sub:\" without an id; line ignored",
            "line 5: the sub id contains whitespace (a comment starts with '#' after whitespace); line ignored",
            "line 6: unknown kind \"eyJhbGciOiJIUzI1\"; expected jti, sub or kid; line ignored",
        ]
    );
}

#[test]
fn deny_list_matches_the_most_specific_entry() {
    let (list, _) = parse_deny_list("kid:dev\nsub:d1\njti:t1\n");
    let entry = |kind, id: &str| {
        Some(DenyEntry {
            kind,
            id: id.to_owned(),
        })
    };
    assert_eq!(
        list.matching(Some("t1"), Some("d1"), "dev"),
        entry(DenyKind::Jti, "t1")
    );
    assert_eq!(
        list.matching(Some("t2"), Some("d1"), "dev"),
        entry(DenyKind::Sub, "d1")
    );
    assert_eq!(
        list.matching(None, None, "dev"),
        entry(DenyKind::Kid, "dev")
    );
    assert_eq!(list.matching(Some("t2"), Some("d2"), "other"), None);
    assert_eq!(entry(DenyKind::Sub, "d1").unwrap().to_string(), "sub:d1");
}
