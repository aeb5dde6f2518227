//! How errors name the file, the line and column, and the key, whatever
//! the section.

use super::*;

#[test]
fn unknown_top_level_key_names_file_line_and_key() {
    let (line, column, key, message, shown) =
        invalid("listen = \"0.0.0.0:8883\"\n\nlisten_plain = \"0.0.0.0:1883\"\n");
    assert_eq!((line, column), (3, 1));
    assert_eq!(key.as_deref(), Some("listen_plain"));
    assert!(
        message.contains("unknown field `listen_plain`"),
        "{message}"
    );
    assert!(
        shown.starts_with("conf/jwtgate.toml:3:1: listen_plain: unknown field"),
        "{shown}"
    );
}

#[test]
fn unknown_key_in_auth_names_file_line_and_table() {
    let (line, column, key, message, shown) = invalid("[auth]\nleeway_secs = 5\nleeway = 5\n");
    assert_eq!((line, column), (3, 1));
    assert_eq!(key.as_deref(), Some("[auth] leeway"));
    assert!(message.contains("unknown field `leeway`"), "{message}");
    assert!(
        message.contains("`leeway_secs`"),
        "lists the valid keys: {message}"
    );
    assert!(
        shown.starts_with("conf/jwtgate.toml:3:1: [auth] leeway: unknown field `leeway`"),
        "{shown}"
    );
}

#[test]
fn unknown_key_in_a_bridge_rule_names_the_bridge_and_the_rule() {
    let text = "[[bridge]]\nname = \"cloud\"\nhost = \"central\"\nclient_id = \"site\"\n\
                forward = [ { local = \"a/#\" }, { local = \"b/#\", bogus = 1 } ]\n";
    let (line, _, key, message, shown) = invalid(text);
    assert_eq!(line, 5);
    assert_eq!(
        key.as_deref(),
        Some("[[bridge]] cloud: forward[1].bogus"),
        "{shown}"
    );
    assert!(message.contains("unknown field `bogus`"), "{message}");
    let (_, _, key, _, _) = invalid("[[bridge]]\nname = \"cloud\"\nbogus = 1\n");
    assert_eq!(key.as_deref(), Some("[[bridge]] cloud: bogus"));
}

#[test]
fn unknown_table_is_named() {
    let (line, _, key, message, _) = invalid("[auth]\n[plaintext]\nlisten = 1\n");
    assert_eq!(line, 2);
    assert_eq!(key.as_deref(), Some("[plaintext]"));
    assert!(message.contains("unknown field `plaintext`"), "{message}");
}

#[test]
fn bad_values_name_the_key_and_line() {
    // (text, line, column, key, part of the message)
    let cases = [
        (
            "[sys]\ninterval_secs = -5\n",
            2,
            17,
            "[sys] interval_secs",
            "must be greater than 0",
        ),
        (
            "[admin]\nsocket = \"/run/jwtgate/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.sock\"\n",
            2,
            10,
            "[admin] socket",
            "longer than the 107 bytes",
        ),
        (
            "[websocket]\npath = \"mqtt\"\n",
            2,
            8,
            "[websocket] path",
            "does not start with '/'",
        ),
        (
            "[websocket]\npath = \"/mqtt?token=x\"\n",
            2,
            8,
            "[websocket] path",
            "without a query",
        ),
        (
            "[websocket]\nallowed_origins = [\"https://a.example\", \"https://b.example/app\"]\n",
            2,
            41,
            "[websocket] allowed_origins[1]",
            "with no path",
        ),
        (
            "[websocket]\nallowed_origins = [\"a.example\"]\n",
            2,
            20,
            "[websocket] allowed_origins[0]",
            "is not an origin",
        ),
        (
            "[websocket]\nlisten = \"8884\"\n",
            2,
            10,
            "[websocket] listen",
            "is not an IP address and port",
        ),
        (
            "[metrics]\nlisten = \"0.0.0.0:9883\"\n",
            2,
            10,
            "[metrics] listen",
            "is not a loopback address",
        ),
        (
            "[metrics]\nlisten = \"localhost:9883\"\n",
            2,
            10,
            "[metrics] listen",
            "is not an IP address and port",
        ),
        (
            "[sessions]\nmax_queued_bytes = 10\n",
            2,
            20,
            "[sessions] max_queued_bytes",
            "must be at least 1024 bytes",
        ),
        (
            "[limits]\nmax_connect_packet_size = 100\n",
            2,
            27,
            "[limits] max_connect_packet_size",
            "must be at least 1024 bytes",
        ),
        (
            "[limits]\nmax_pending_per_source = 0\n",
            2,
            26,
            "[limits] max_pending_per_source",
            "must be greater than 0",
        ),
        (
            "[limits]\nwrite_timeout_secs = 0\n",
            2,
            22,
            "[limits] write_timeout_secs",
            "must be greater than 0",
        ),
        (
            "[auth]\n\nleeway_secs = -1\n",
            3,
            15,
            "[auth] leeway_secs",
            "must not be negative",
        ),
        (
            "[auth]\ndeny_publish = \"maybe\"\n",
            2,
            16,
            "[auth] deny_publish",
            "unknown variant `maybe`, expected `drop` or `disconnect`",
        ),
        (
            "[auth]\n\nclient_id_binding = \"subject\"\n",
            3,
            21,
            "[auth] client_id_binding",
            "unknown variant `subject`, expected `claim_or_subject` or `none`",
        ),
        (
            "[auth]\nalgorithms = [\"HS256\", \"HS999\"]\n",
            2,
            24,
            "[auth] algorithms",
            "unknown algorithm `HS999`",
        ),
        (
            "listen = \"nonsense\"\n",
            1,
            10,
            "listen",
            "`nonsense` is not an IP address and port",
        ),
        (
            "[limits]\nmax_packet_size = 1023\n",
            2,
            19,
            "[limits] max_packet_size",
            "must be at least 1024 bytes",
        ),
        (
            "[limits]\nmax_packet_size = 268435456\n",
            2,
            19,
            "[limits] max_packet_size",
            "must be at most 268435455 bytes",
        ),
        (
            "[limits]\nhandshake_timeout_secs = 0\n",
            2,
            26,
            "[limits] handshake_timeout_secs",
            "must be greater than 0",
        ),
        (
            "[limits]\nconnect_timeout_secs = 0\n",
            2,
            24,
            "[limits] connect_timeout_secs",
            "must be greater than 0",
        ),
        (
            "[limits]\nmax_connections = 0\n",
            2,
            19,
            "[limits] max_connections",
            "must be greater than 0",
        ),
        (
            "[sessions]\nmax_inflight = 0\n",
            2,
            16,
            "[sessions] max_inflight",
            "must be greater than 0",
        ),
        (
            "[sessions]\nmax_subscriptions = 0\n",
            2,
            21,
            "[sessions] max_subscriptions",
            "must be greater than 0",
        ),
        (
            "[auth]\nmax_token_lifetime_secs = 0\n",
            2,
            27,
            "[auth] max_token_lifetime_secs",
            "must be greater than 0",
        ),
        (
            "[auth]\ntopics_claim = \"\"\n",
            2,
            16,
            "[auth] topics_claim",
            "must not be empty",
        ),
        (
            "[auth]\nacl_claim = \"\"\n",
            2,
            13,
            "[auth] acl_claim",
            "must not be empty",
        ),
        (
            "[auth]\nacl_claim = \"topics\"\n",
            2,
            13,
            "[auth] acl_claim",
            "must differ from [auth] topics_claim",
        ),
        (
            "[auth]\nissuer = \"\"\n",
            2,
            10,
            "[auth] issuer",
            "must not be empty",
        ),
        (
            "[auth]\nalgorithms = []\n",
            2,
            14,
            "[auth] algorithms",
            "must not be an empty list",
        ),
        (
            "[tls]\ncert = \"\"\n",
            2,
            8,
            "[tls] cert",
            "must not be empty",
        ),
        (
            "[auth]\nleeway_secs = \"5\"\n",
            2,
            15,
            "[auth] leeway_secs",
            "invalid type: string \"5\"",
        ),
        (
            "[auth]\nrequire_kid = \"yes\"\n",
            2,
            15,
            "[auth] require_kid",
            "invalid type: string \"yes\", expected a boolean",
        ),
        (
            "[auth]\nleeway_secs = 5\nrequire_subject = 1\n",
            3,
            19,
            "[auth] require_subject",
            "invalid type: integer `1`, expected a boolean",
        ),
        ("auth = 3\n", 1, 8, "auth", "expected the [auth] table"),
        (
            "auth = { leeway_secs = -1 }\n",
            1,
            24,
            "[auth] leeway_secs",
            "must not be negative",
        ),
        (
            "auth.leeway_secs = -1\n",
            1,
            20,
            "[auth] leeway_secs",
            "must not be negative",
        ),
    ];
    assert_invalid_cases(&cases);
}

#[test]
fn display_has_the_documented_shape() {
    let (_, _, _, _, shown) = invalid("[limits]\nmax_packet_size = 10\n");
    assert_eq!(
        shown,
        "conf/jwtgate.toml:2:19: [limits] max_packet_size: must be at least 1024 bytes"
    );
}

#[test]
fn syntax_errors_name_the_line_and_key() {
    let (line, column, key, message, _) = invalid("[auth]\nissuer = \"a\"\nleeway_secs = \n");
    assert_eq!((line, column), (3, 15));
    assert_eq!(key.as_deref(), Some("[auth] leeway_secs"));
    assert!(!message.is_empty());

    let (line, _, key, _, _) = invalid("listen = nonsense\n");
    assert_eq!(line, 1);
    assert_eq!(key.as_deref(), Some("listen"));
}

#[test]
fn duplicate_keys_are_named() {
    let (line, column, key, message, _) = invalid("[auth]\nleeway_secs = 1\nleeway_secs = 2\n");
    assert_eq!((line, column), (3, 1));
    assert_eq!(key.as_deref(), Some("leeway_secs"));
    assert!(message.contains("duplicate key"), "{message}");

    let (line, _, key, _, _) = invalid("[auth]\n[limits]\n[auth]\n");
    assert_eq!(line, 3);
    assert_eq!(key.as_deref(), Some("[auth]"));
}

#[test]
fn columns_count_characters_not_bytes() {
    let (line, column, key, _, _) = invalid("auth = { issuer = \"é\", leeway_secs = -1 }\n");
    // "é" is two bytes but one column.
    assert_eq!((line, column), (1, 38));
    assert_eq!(key.as_deref(), Some("[auth] leeway_secs"));
}
