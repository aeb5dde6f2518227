//! The config tests, a file a section; this one holds the helpers they
//! share and what concerns the whole file (defaults, paths, loading).

use std::io;
use std::time::Duration;

use jsonwebtoken::Algorithm;

use super::*;

mod auth;
mod bridge;
mod document;
mod example;
mod limits_and_sessions;
mod service;

const ORIGIN: &str = "conf/jwtgate.toml";
const BASE: &str = "/srv/jwtgate";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(ORIGIN), Path::new(BASE))
}

/// Parses `text`, which must fail, and returns the error's parts and
/// its rendered form.
fn invalid(text: &str) -> (usize, usize, Option<String>, String, String) {
    match parse(text) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(err @ ConfigError::Invalid { .. }) => {
            let shown = err.to_string();
            let ConfigError::Invalid {
                path,
                line,
                column,
                key,
                message,
            } = err
            else {
                unreachable!()
            };
            assert_eq!(path, Path::new(ORIGIN));
            (line, column, key, message, shown)
        }
        Err(err) => panic!("expected ConfigError::Invalid, got {err:?}"),
    }
}

/// Checks that each `(text, line, column, key, part of the message)`
/// fails with that position, key and message, shown as
/// `file:line:column: key: message`.
fn assert_invalid_cases(cases: &[(&str, usize, usize, &str, &str)]) {
    for &(text, line, column, key, fragment) in cases {
        let (got_line, got_column, got_key, message, shown) = invalid(text);
        assert_eq!(
            (got_line, got_column),
            (line, column),
            "position for {text:?}"
        );
        assert_eq!(got_key.as_deref(), Some(key), "key for {text:?}");
        assert!(message.contains(fragment), "{text:?} gave {message:?}");
        let prefix = format!("{ORIGIN}:{line}:{column}: {key}: ");
        assert!(shown.starts_with(&prefix), "{text:?} shown as {shown:?}");
    }
}

#[test]
fn empty_file_gives_the_defaults() {
    let config = parse("").expect("an empty file is valid");
    assert_eq!(
        config,
        Config {
            source: Some(PathBuf::from(ORIGIN)),
            admin: AdminConfig::packaged(),
            ..Config::defaults(Path::new(BASE))
        }
    );
    // Spot-check the defaults themselves rather than trusting `defaults`.
    assert_eq!(config.listen, SocketAddr::from(([0, 0, 0, 0], 8883)));
    assert_eq!(
        config.tls.cert,
        Path::new("/srv/jwtgate/keys/tls/server.crt")
    );
    assert_eq!(
        config.tls.key,
        Path::new("/srv/jwtgate/keys/tls/server.key")
    );
    assert_eq!(config.auth.keys_dir, Path::new("/srv/jwtgate/keys"));
    assert_eq!(config.auth.topics_claim, "topics");
    assert_eq!(config.auth.leeway, Duration::from_secs(5));
    assert!(!config.auth.require_kid);
    assert!(config.auth.require_exp);
    assert!(config.auth.require_subject);
    assert_eq!(config.auth.issuer, None);
    assert_eq!(config.auth.audience, None);
    assert_eq!(config.auth.max_token_lifetime, None);
    assert_eq!(config.auth.algorithms, None);
    assert_eq!(config.auth.deny_publish, DenyPublish::Drop);
    assert_eq!(config.limits.max_packet_size, 1024 * 1024);
    assert_eq!(config.limits.max_property_bytes, 65_536);
    assert_eq!(config.limits.max_topic_aliases, 64);
    assert_eq!(config.limits.max_keep_alive, None);
    assert_eq!(config.limits.memory_budget, 512 * 1024 * 1024);
    assert_eq!(config.sessions.max_inflight, 1000);
    assert_eq!(config.sessions.max_queued_messages, 1000);
    assert_eq!(config.sessions.max_queued_bytes, 8 * 1024 * 1024);
    assert_eq!(config.sessions.slow_subscriber, SlowSubscriber::Disconnect);
    assert_eq!(
        config.sessions.slow_subscriber_timeout,
        Duration::from_secs(2)
    );
    assert_eq!(config.sessions.max_subscriptions, 100);
    assert_eq!(
        config.sessions.max_session_expiry,
        Duration::from_secs(86_400)
    );
}

#[test]
fn empty_tables_and_comments_are_valid() {
    let config = parse("# nothing here\n[tls]\n[auth]\n[limits]\n[sessions]\n")
        .expect("empty tables are valid");
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.sessions, SessionSettings::default());
}

#[test]
fn defaults_have_no_source() {
    let config = Config::defaults(Path::new("/var/lib/jwtgate"));
    assert_eq!(config.source, None);
    assert_eq!(config.auth.keys_dir, Path::new("/var/lib/jwtgate/keys"));
    assert_eq!(
        config.tls.cert,
        Path::new("/var/lib/jwtgate/keys/tls/server.crt")
    );
}

#[test]
fn relative_paths_resolve_against_the_config_dir_and_absolute_ones_stay() {
    let absolute = std::env::temp_dir().join("certs").join("gateway.pem");
    let text = format!(
        "[tls]\ncert = '{}'\nkey = 'private/tls.key'\n[auth]\nkeys_dir = '../shared/keys'\n",
        absolute.display()
    );
    let config = parse(&text).expect("valid paths");
    assert_eq!(config.tls.cert, absolute);
    assert_eq!(config.tls.key, Path::new("/srv/jwtgate/private/tls.key"));
    assert_eq!(
        config.auth.keys_dir,
        Path::new("/srv/jwtgate/../shared/keys")
    );
}

#[test]
fn every_key_can_be_changed() {
    let config = parse(
        r#"
listen = "[::1]:9883"
[auth]
topics_claim = "mqtt_topics"
acl_claim = "mqtt_acl"
leeway_secs = 0
require_kid = true
require_exp = false
require_subject = false
algorithms = ["EdDSA", "ES256", "PS512"]
deny_publish = "disconnect"
client_id_binding = "none"
[limits]
handshake_timeout_secs = 3
connect_timeout_secs = 7
max_packet_size = 268435455
max_connect_packet_size = 1024
max_connections = 1
max_pending_connections = 1
max_pending_per_source = 1
write_timeout_secs = 1
max_property_bytes = 256
max_topic_aliases = 0
max_keep_alive_secs = 65535
memory_budget_mb = 3
[sessions]
max_inflight = 65535
max_queued_messages = 1
max_queued_bytes = 1024
slow_subscriber = "drop"
slow_subscriber_timeout_ms = 1
max_subscriptions = 1
max_session_expiry_secs = 0
"#,
    )
    .expect("valid config");
    assert_eq!(
        config.listen,
        SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], 9883))
    );
    assert_eq!(config.auth.topics_claim, "mqtt_topics");
    assert_eq!(config.auth.acl_claim, "mqtt_acl");
    assert_eq!(config.auth.leeway, Duration::ZERO);
    assert!(config.auth.require_kid);
    assert!(!config.auth.require_exp);
    assert!(!config.auth.require_subject);
    assert_eq!(
        config.auth.algorithms,
        Some(vec![Algorithm::EdDSA, Algorithm::ES256, Algorithm::PS512])
    );
    assert_eq!(config.auth.deny_publish, DenyPublish::Disconnect);
    assert_eq!(config.auth.client_id_binding, ClientIdBinding::Unchecked);
    assert_eq!(
        config.limits,
        Limits {
            handshake_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(7),
            max_packet_size: 268_435_455,
            max_connect_packet_size: 1024,
            max_connections: 1,
            max_pending_connections: 1,
            max_pending_per_source: 1,
            write_timeout: Duration::from_secs(1),
            max_property_bytes: 256,
            max_topic_aliases: 0,
            max_keep_alive: Some(65_535),
            memory_budget: 3 * 1024 * 1024,
            ..Limits::default()
        }
    );
    assert_eq!(
        config.sessions,
        SessionSettings {
            max_inflight: 65_535,
            max_queued_messages: 1,
            max_queued_bytes: 1024,
            slow_subscriber: SlowSubscriber::Drop,
            slow_subscriber_timeout: Duration::from_millis(1),
            max_subscriptions: 1,
            max_session_expiry: Duration::ZERO,
            ..SessionSettings::default()
        }
    );
}

#[test]
fn load_reads_a_file_and_resolves_against_its_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("jwtgate.toml");
    std::fs::write(&path, "[auth]\nkeys_dir = \"trust\"\nleeway_secs = 2\n").expect("write");
    let config = Config::load(&path).expect("valid file");
    assert_eq!(config.source, Some(path.clone()));
    assert_eq!(config.auth.keys_dir, dir.path().join("trust"));
    assert_eq!(config.auth.leeway, Duration::from_secs(2));
    assert_eq!(config.tls.cert, dir.path().join("keys/tls/server.crt"));
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("jwtgate.toml");
    std::fs::write(&path, "[limits]\nmax_connections = -3\n").expect("write");
    let err = Config::load(&path).expect_err("invalid file");
    assert_eq!(
        err.to_string(),
        format!(
            "{}:2:19: [limits] max_connections: must be greater than 0",
            path.display()
        )
    );
}

#[test]
fn load_on_a_missing_file_names_the_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("missing.toml");
    let err = Config::load(&path).expect_err("file does not exist");
    let ConfigError::Read {
        path: reported,
        source,
    } = &err
    else {
        panic!("expected ConfigError::Read, got {err:?}");
    };
    assert_eq!(reported, &path);
    assert_eq!(source.kind(), io::ErrorKind::NotFound);
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("cannot read config file {}: ", path.display())),
        "{shown}"
    );
}

#[test]
fn config_can_be_shared_across_tasks() {
    fn assert_shareable<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}
    fn assert_error<T: std::error::Error + Send + Sync + 'static>() {}
    assert_shareable::<Config>();
    assert_error::<ConfigError>();
}
