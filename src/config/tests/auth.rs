//! The `[auth]` table.

use super::*;
use crate::config::auth::ALGORITHM_NAMES;

#[test]
fn audience_may_be_a_string_or_a_list() {
    let one = parse("[auth]\naudience = \"api\"\n").expect("string audience");
    assert_eq!(one.auth.audience, Some(vec!["api".to_owned()]));

    let many = parse("[auth]\naudience = [\"api\", \"mqtt\"]\n").expect("list audience");
    assert_eq!(
        many.auth.audience,
        Some(vec!["api".to_owned(), "mqtt".to_owned()])
    );
}

#[test]
fn audience_errors_name_the_key() {
    let (line, _, key, message, _) = invalid("\n[auth]\naudience = []\n");
    assert_eq!(line, 3);
    assert_eq!(key.as_deref(), Some("[auth] audience"));
    assert!(message.contains("empty list"), "{message}");

    let (line, column, key, message, _) = invalid("[auth]\naudience = [\"api\", 7]\n");
    assert_eq!((line, column), (2, 20));
    assert_eq!(key.as_deref(), Some("[auth] audience"));
    assert!(message.contains("expected a string"), "{message}");

    let (_, _, key, message, _) = invalid("[auth]\naudience = 7\n");
    assert_eq!(key.as_deref(), Some("[auth] audience"));
    assert!(
        message.contains("expected a string or a list of strings"),
        "{message}"
    );
}

#[test]
fn top_level_deny_publish_is_an_alias() {
    let config = parse("deny_publish = \"disconnect\"\n").expect("alias is valid");
    assert_eq!(config.auth.deny_publish, DenyPublish::Disconnect);

    let config = parse("[auth]\ndeny_publish = \"disconnect\"\n").expect("valid");
    assert_eq!(config.auth.deny_publish, DenyPublish::Disconnect);

    let (line, _, key, message, _) = invalid("deny_publish = \"maybe\"\n");
    assert_eq!(line, 1);
    assert_eq!(key.as_deref(), Some("deny_publish"));
    assert!(message.contains("unknown variant `maybe`"), "{message}");
}

#[test]
fn deny_publish_in_both_places_is_an_error_naming_both() {
    let (line, column, key, message, shown) =
        invalid("deny_publish = \"drop\"\n[auth]\ndeny_publish = \"drop\"\n");
    assert_eq!((line, column), (1, 16));
    assert_eq!(key.as_deref(), Some("deny_publish"));
    assert!(
        message.contains("[auth] deny_publish (line 3)"),
        "{message}"
    );
    assert!(
        shown.starts_with("conf/jwtgate.toml:1:16: deny_publish: given both"),
        "{shown}"
    );
}

#[test]
fn every_algorithm_named_in_errors_is_accepted() {
    for name in ALGORITHM_NAMES.split(", ") {
        let config = parse(&format!("[auth]\nalgorithms = [\"{name}\"]\n"))
            .unwrap_or_else(|err| panic!("{name}: {err}"));
        let algorithms = config.auth.algorithms.expect("algorithms were given");
        assert_eq!(format!("{:?}", algorithms[0]), name);
    }
}
