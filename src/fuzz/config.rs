//! The `config` target: arbitrary bytes as `jwtgate.toml`.

use std::path::Path;

use crate::config::Config;

/// Arbitrary bytes as the TOML config, through the function `jwtgate`
/// uses. Asserts, when it parses, the bounds `Config` documents.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Path::new("/etc/jwtgate/jwtgate.toml");
    let Ok(config) = Config::parse(text, origin, Path::new("/etc/jwtgate")) else {
        return;
    };
    let limits = &config.limits;
    assert!((1024..=268_435_455).contains(&limits.max_packet_size));
    assert!((1024..=268_435_455).contains(&limits.max_connect_packet_size));
    // Not asserted: `max_connect_packet_size <= max_packet_size`. The field
    // says "never more than max_packet_size", but the parser keeps a larger
    // value and the connection applies the smaller of the two (the sample
    // config's "capped by max_packet_size").
    assert!(limits.max_connections > 0);
    assert!(limits.max_pending_connections > 0 && limits.max_pending_per_source > 0);
    assert!(!limits.handshake_timeout.is_zero() && !limits.connect_timeout.is_zero());
    assert!(!limits.write_timeout.is_zero());
    assert!(limits.memory_budget >= 1024 * 1024);
    let auth = &config.auth;
    assert!(!auth.topics_claim.is_empty());
    assert!(auth.issuer.as_ref().is_none_or(|i| !i.is_empty()));
    assert!(auth.audience.as_ref().is_none_or(|a| !a.is_empty()));
    assert!(auth.algorithms.as_ref().is_none_or(|a| !a.is_empty()));
    assert!(auth.max_token_lifetime.is_none_or(|l| !l.is_zero()));
    let sessions = &config.sessions;
    assert!(sessions.max_inflight >= 1 && sessions.max_queued_messages >= 1);
    assert!(sessions.max_queued_bytes >= 1024 && sessions.max_subscriptions >= 1);
    assert!(!sessions.slow_subscriber_timeout.is_zero());
    assert!(config.storage.sync_interval <= std::time::Duration::from_secs(60));
    assert!(config.storage.dir.starts_with("/"));
    // The metrics endpoint leaves loopback only when told to in so many
    // words.
    if let Some(addr) = config.metrics.listen {
        assert!(
            addr.ip().is_loopback() || text.contains("allow_remote"),
            "metrics on {addr} without allow_remote"
        );
    }
    let mut names = std::collections::HashSet::new();
    for bridge in &config.bridges {
        assert_bridge(bridge);
        assert!(
            names.insert(&bridge.name),
            "two bridges named {}",
            bridge.name
        );
    }
    assert_eq!(config.source.as_deref(), Some(origin));
}

/// The bounds a `[[bridge]]` table is checked against.
fn assert_bridge(bridge: &crate::config::BridgeConfig) {
    use crate::config::Transport;
    let name_ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    assert!(!bridge.name.is_empty() && bridge.name.chars().all(name_ok));
    assert!(!bridge.client_id.is_empty());
    let remote = &bridge.remote;
    assert!(remote.port > 0 && !remote.host.is_empty());
    if remote.transport == Transport::Plain {
        let loopback = remote.host == "localhost"
            || remote
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        assert!(loopback, "plain MQTT to {}", remote.host);
        assert!(bridge.client_cert.is_none());
    }
    assert!((5..=65_535).contains(&bridge.keep_alive.as_secs()));
    assert!(bridge.max_queue_bytes >= 1024 * 1024);
    assert!(!bridge.forward.is_empty() || !bridge.subscribe.is_empty());
    for rule in &bridge.forward {
        assert!(!rule.remote_prefix.contains(['+', '#', '\0']));
    }
    for rule in &bridge.subscribe {
        assert!(rule.remote.as_str().starts_with(&rule.strip_prefix));
        assert!(rule.remote.as_str().len() > rule.strip_prefix.len());
        assert!(!rule.local_prefix.contains(['+', '#', '\0']));
    }
}
