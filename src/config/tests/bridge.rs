//! The `[[bridge]]` tables.

use std::time::Duration;

use super::*;
use crate::mqtt::QoS;

/// A valid bridge table with `extra` lines added to it.
fn bridge(extra: &str) -> String {
    format!(
        "[[bridge]]\nname = \"cloud\"\nremote = \"mqtts://broker.example\"\nclient_id = \"site-42\"\n\
         forward = [ {{ local = \"sensors/#\" }} ]\n{extra}"
    )
}

/// The error of `text` as shown, which must name `line`, `key` and
/// contain `fragment`.
fn assert_error(text: &str, line: usize, key: &str, fragment: &str) {
    let shown = match parse(text) {
        Ok(config) => panic!("expected an error for {text:?}, got {config:?}"),
        Err(err) => err.to_string(),
    };
    let prefix = format!("{ORIGIN}:{line}:");
    assert!(
        shown.starts_with(&prefix),
        "{shown:?} is not at line {line}"
    );
    assert!(
        shown.contains(&format!(" {key}: ")),
        "{shown:?} does not name {key}"
    );
    assert!(
        shown.contains(fragment),
        "{shown:?} does not say {fragment:?}"
    );
}

#[test]
fn a_minimal_bridge_takes_the_defaults() {
    let config = parse(&bridge("")).expect("valid bridge");
    let [bridge] = config.bridges.as_slice() else {
        panic!("one bridge expected: {:?}", config.bridges)
    };
    assert_eq!(
        bridge.remote,
        Remote {
            host: "broker.example".to_owned(),
            port: 8883,
            transport: Transport::Tls
        }
    );
    assert_eq!(bridge.protocol, Protocol::V5);
    assert_eq!(bridge.keep_alive, Duration::from_secs(30));
    assert_eq!(bridge.max_queue_bytes, 512 * 1024 * 1024);
    assert!(!bridge.clean_start, "a session is kept at the remote");
    assert_eq!(bridge.session_expiry_secs, 604_800);
    assert_eq!(bridge.credential, None);
    assert_eq!(bridge.forward[0].qos, QoS::AtLeastOnce);
    assert_eq!(bridge.forward[0].remote_prefix, "");
    assert_eq!(bridge.forward[0].remote_topic("sensors/t1"), "sensors/t1");
}

#[test]
fn remotes_are_parsed_and_plain_mqtt_only_reaches_loopback() {
    for (remote, host, port, transport) in [
        (
            "mqtts://broker.example:9883",
            "broker.example",
            9883,
            Transport::Tls,
        ),
        ("mqtts://10.0.0.5/", "10.0.0.5", 8883, Transport::Tls),
        (
            "mqtts://[2001:db8::1]:8884",
            "2001:db8::1",
            8884,
            Transport::Tls,
        ),
        (
            "mqtt://127.0.0.1:18830",
            "127.0.0.1",
            18830,
            Transport::Plain,
        ),
        ("mqtt://localhost", "localhost", 1883, Transport::Plain),
        ("mqtt://[::1]:1884", "::1", 1884, Transport::Plain),
    ] {
        let text = bridge("").replace("mqtts://broker.example", remote);
        let config = parse(&text).unwrap_or_else(|err| panic!("{remote}: {err}"));
        assert_eq!(
            config.bridges[0].remote,
            Remote {
                host: host.to_owned(),
                port,
                transport
            },
            "{remote}"
        );
    }
    for (remote, fragment) in [
        ("mqtt://broker.example", "in the clear"),
        ("mqtt://10.0.0.5:1883", "in the clear"),
        ("https://broker.example", "not an mqtts:// address"),
        ("broker.example:8883", "not an mqtts:// address"),
        ("mqtts://broker.example:0", "not a port number"),
        ("mqtts://broker.example:99999", "not a port number"),
        ("mqtts://", "names no host"),
        ("mqtts://user@broker.example", "names no host"),
        ("mqtts://[2001:db8::1", "closing `]`"),
    ] {
        let text = bridge("").replace("mqtts://broker.example", remote);
        assert_error(&text, 3, "[[bridge]] cloud: remote", fragment);
    }
}

#[test]
fn every_bad_value_names_its_line_and_key() {
    let cases: &[(&str, usize, &str, &str)] = &[
        ("protocol = 3", 6, "protocol", "must be 4 (MQTT 3.1.1) or 5"),
        (
            "keep_alive_secs = 1",
            6,
            "keep_alive_secs",
            "at least 5 seconds",
        ),
        ("max_queue_mb = 0", 6, "max_queue_mb", "greater than 0"),
        (
            "password_file = \"p\"\ntoken_file = \"t\"",
            7,
            "token_file",
            "one of them",
        ),
        ("cert_file = \"c.pem\"", 6, "cert_file", "without key_file"),
        ("key_file = \"k.pem\"", 6, "key_file", "without cert_file"),
        ("token_file = \"\"", 6, "token_file", "must not be empty"),
        (
            "subscribe = [ { remote = \"site/cmd/#\", qos = 2 } ]",
            6,
            "subscribe[0].qos",
            "must be 0 or 1",
        ),
        (
            "subscribe = [ { remote = \"site/cmd/#\", local_prefix = \"a/+/\" } ]",
            6,
            "subscribe[0].local_prefix",
            "must not contain `+`",
        ),
        (
            "subscribe = [ { remote = \"site/cmd/#\", strip_prefix = \"other/\" } ]",
            6,
            "subscribe[0].strip_prefix",
            "does not begin the remote filter",
        ),
        (
            "subscribe = [ { remote = \"site/\", strip_prefix = \"site/\" } ]",
            6,
            "subscribe[0].strip_prefix",
            "whole remote filter",
        ),
        (
            "subscribe = [ { remote = \"site/#/x\" } ]",
            6,
            "subscribe[0].remote",
            "`#` may only be the last level",
        ),
    ];
    for &(extra, line, key, fragment) in cases {
        assert_error(
            &bridge(extra),
            line,
            &format!("[[bridge]] cloud: {key}"),
            fragment,
        );
    }
    assert_error(
        &bridge("").replace(
            "{ local = \"sensors/#\" }",
            "{ local = \"sensors/#\", qos = 3 }",
        ),
        5,
        "[[bridge]] cloud: forward[0].qos",
        "must be 0 or 1",
    );
    assert_error(
        &bridge("").replace(
            "{ local = \"sensors/#\" }",
            "{ local = \"a\", remote_prefix = \"x/#\" }",
        ),
        5,
        "[[bridge]] cloud: forward[0].remote_prefix",
        "must not contain `#`",
    );
    assert_error(
        &bridge("").replace("name = \"cloud\"", "name = \"../cloud\""),
        2,
        "[[bridge]] ../cloud: name",
        "letters, digits",
    );
}

#[test]
fn the_remote_session_is_kept_unless_clean_start() {
    let config = parse(&bridge("clean_start = true")).expect("valid bridge");
    assert!(config.bridges[0].clean_start);
    let config = parse(&bridge("session_expiry_secs = 4294967295")).expect("valid bridge");
    assert_eq!(config.bridges[0].session_expiry_secs, u32::MAX);
    let config = parse(&bridge("protocol = 4\nclean_start = false")).expect("valid bridge");
    assert!(!config.bridges[0].clean_start);
    let cases: &[(&str, usize, &str, &str)] = &[
        (
            "session_expiry_secs = 0",
            6,
            "session_expiry_secs",
            "greater than 0",
        ),
        (
            "session_expiry_secs = 4294967296",
            6,
            "session_expiry_secs",
            "at most",
        ),
        (
            "protocol = 4\nsession_expiry_secs = 60",
            7,
            "session_expiry_secs",
            "MQTT 3.1.1",
        ),
        (
            "clean_start = true\nsession_expiry_secs = 60",
            7,
            "session_expiry_secs",
            "keeps no session",
        ),
    ];
    for &(extra, line, key, fragment) in cases {
        assert_error(
            &bridge(extra),
            line,
            &format!("[[bridge]] cloud: {key}"),
            fragment,
        );
    }
    let shown = parse(&bridge("clean_start = 1"))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(shown.starts_with(&format!("{ORIGIN}:6:")), "{shown}");
}

#[test]
fn bridge_filters_keep_to_the_topic_limits() {
    let limits = "[limits]\nmax_topic_levels = 4\nmax_topic_bytes = 40\n";
    let config = parse(&format!(
        "{limits}{}",
        bridge("subscribe = [ { remote = \"site/cmd/#\", local_prefix = \"in/\" } ]")
    ))
    .expect("within the limits");
    assert_eq!(config.bridges[0].subscribe[0].local_prefix, "in/");
    let with_limits = |text: String| format!("{limits}{text}");
    // The bridge table starts on line 4 after the [limits] table.
    assert_error(
        &with_limits(bridge("").replace("sensors/#", "a/b/c/d/#")),
        8,
        "[[bridge]] cloud: forward[0].local",
        "max_topic_levels",
    );
    assert_error(
        &with_limits(bridge("").replace("sensors/#", &"s".repeat(41))),
        8,
        "[[bridge]] cloud: forward[0].local",
        "max_topic_bytes",
    );
    assert_error(
        &with_limits(bridge("subscribe = [ { remote = \"a/b/c/d/e\" } ]")),
        9,
        "[[bridge]] cloud: subscribe[0].remote",
        "max_topic_levels",
    );
    assert_error(
        &with_limits(bridge(
            "subscribe = [ { remote = \"site/cmd/#\", local_prefix = \"in/x/\" } ]",
        )),
        9,
        "[[bridge]] cloud: subscribe[0].local_prefix",
        "max_topic_levels",
    );
}

#[test]
fn missing_keys_unknown_keys_and_twins_are_errors() {
    assert_error(
        "[[bridge]]\nremote = \"mqtts://b\"\n",
        1,
        "[[bridge]] #1: name",
        "missing",
    );
    assert_error(
        &bridge("").replace("client_id = \"site-42\"\n", ""),
        1,
        "[[bridge]] cloud: client_id",
        "missing",
    );
    assert_error(
        &bridge("").replace("forward = [ { local = \"sensors/#\" } ]\n", ""),
        1,
        "[[bridge]] cloud: forward",
        "would carry nothing",
    );
    let twins = format!("{}\n{}", bridge(""), bridge(""));
    assert_error(&twins, 7, "[[bridge]] cloud: name", "another [[bridge]]");
    let shown = parse(&bridge("retries = 3"))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(shown.starts_with(&format!("{ORIGIN}:6:1:")), "{shown}");
    assert!(shown.contains("retries"), "{shown}");
    let shown = parse(&bridge("").replace("local = \"sensors/#\"", "local = \"s\", qs = 1"))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(shown.starts_with(&format!("{ORIGIN}:5:")), "{shown}");
    assert!(shown.contains("qs"), "{shown}");
}

#[test]
fn subscribed_topics_map_to_local_ones() {
    let config = parse(&bridge(
        "subscribe = [ { remote = \"site-42/cmd/#\", strip_prefix = \"site-42/\", local_prefix = \"in/\" } ]",
    ))
    .expect("valid bridge");
    let rule = &config.bridges[0].subscribe[0];
    assert_eq!(
        rule.local_topic("site-42/cmd/x").as_deref(),
        Some("in/cmd/x")
    );
    assert_eq!(rule.local_topic("elsewhere/cmd/x"), None);
}

#[test]
fn paths_resolve_against_the_config_directory() {
    let config = parse(&bridge(
        "ca_file = \"tls/ca.crt\"\ntoken_file = \"/run/jwtgate/uplink.jwt\"\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"",
    ))
    .expect("valid bridge");
    let bridge = &config.bridges[0];
    assert_eq!(
        bridge.ca_file.as_deref(),
        Some(Path::new("/srv/jwtgate/tls/ca.crt"))
    );
    assert_eq!(
        bridge.credential,
        Some(Credential::TokenFile(PathBuf::from(
            "/run/jwtgate/uplink.jwt"
        )))
    );
    assert_eq!(
        bridge.client_cert,
        Some(ClientCert {
            cert: PathBuf::from("/srv/jwtgate/c.pem"),
            key: PathBuf::from("/srv/jwtgate/k.pem"),
        })
    );
}
