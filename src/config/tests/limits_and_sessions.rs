//! The `[limits]` and `[sessions]` tables, and the old `[router]` one.

use super::*;

#[test]
fn new_limits_and_sessions_keys_are_bounded() {
    // (text, line, column, key, part of the message)
    let cases = [
        (
            "[limits]\nmax_property_bytes = 255\n",
            2,
            22,
            "[limits] max_property_bytes",
            "must be at least 256 bytes",
        ),
        (
            "[limits]\nmax_property_bytes = 268435456\n",
            2,
            22,
            "[limits] max_property_bytes",
            "must be at most 268435455 bytes",
        ),
        (
            "[limits]\nmax_topic_aliases = -1\n",
            2,
            21,
            "[limits] max_topic_aliases",
            "must not be negative",
        ),
        (
            "[limits]\nmax_topic_aliases = 65536\n",
            2,
            21,
            "[limits] max_topic_aliases",
            "must be at most 65535",
        ),
        (
            "[limits]\nmax_keep_alive_secs = 0\n",
            2,
            23,
            "[limits] max_keep_alive_secs",
            "must be greater than 0",
        ),
        (
            "[limits]\nmax_keep_alive_secs = 65536\n",
            2,
            23,
            "[limits] max_keep_alive_secs",
            "must be at most 65535 seconds",
        ),
        (
            "[limits]\nmemory_budget_mb = 0\n",
            2,
            20,
            "[limits] memory_budget_mb",
            "must be greater than 0",
        ),
        (
            "[limits]\nmemory_budget_mb = 1048577\n",
            2,
            20,
            "[limits] memory_budget_mb",
            "must be at most 1048576 MiB",
        ),
        (
            "[sessions]\nmax_inflight = 65536\n",
            2,
            16,
            "[sessions] max_inflight",
            "must be at most 65535",
        ),
        (
            "[sessions]\nmax_queued_messages = 0\n",
            2,
            23,
            "[sessions] max_queued_messages",
            "must be greater than 0",
        ),
        (
            "[sessions]\nmax_queued_bytes = 1023\n",
            2,
            20,
            "[sessions] max_queued_bytes",
            "must be at least 1024 bytes",
        ),
        (
            "[sessions]\nslow_subscriber_timeout_ms = 0\n",
            2,
            30,
            "[sessions] slow_subscriber_timeout_ms",
            "must be greater than 0",
        ),
        (
            "[sessions]\nmax_session_expiry_secs = -1\n",
            2,
            27,
            "[sessions] max_session_expiry_secs",
            "must not be negative",
        ),
        (
            "[sessions]\nmax_session_expiry_secs = 4294967296\n",
            2,
            27,
            "[sessions] max_session_expiry_secs",
            "must be at most 4294967295 seconds",
        ),
        (
            "[sessions]\nslow_subscriber = \"block\"\n",
            2,
            19,
            "[sessions] slow_subscriber",
            "unknown variant `block`, expected `disconnect` or `drop`",
        ),
        (
            "[sessions]\nslow_subscriber = true\n",
            2,
            19,
            "[sessions] slow_subscriber",
            "wanted string or table",
        ),
        (
            "[sessions]\nmax_inflight = \"1000\"\n",
            2,
            16,
            "[sessions] max_inflight",
            "invalid type: string \"1000\"",
        ),
        (
            "sessions = 3\n",
            1,
            12,
            "sessions",
            "expected the [sessions] table",
        ),
    ];
    assert_invalid_cases(&cases);
}

#[test]
fn new_limits_and_sessions_keys_accept_their_bounds() {
    let low = parse(
        "[limits]\nmax_property_bytes = 256\nmax_topic_aliases = 0\nmax_keep_alive_secs = 1\n\
         memory_budget_mb = 1\n[sessions]\nmax_inflight = 1\nmax_queued_bytes = 1024\n\
         max_session_expiry_secs = 0\n",
    )
    .expect("lowest values are valid");
    assert_eq!(low.limits.max_property_bytes, 256);
    assert_eq!(low.limits.max_topic_aliases, 0);
    assert_eq!(low.limits.max_keep_alive, Some(1));
    assert_eq!(low.limits.memory_budget, 1024 * 1024);
    assert_eq!(low.sessions.max_inflight, 1);
    assert_eq!(low.sessions.max_queued_bytes, 1024);
    assert_eq!(low.sessions.max_session_expiry, Duration::ZERO);

    let high = parse(
        "[limits]\nmax_property_bytes = 268435455\nmax_topic_aliases = 65535\n\
         max_keep_alive_secs = 65535\n[sessions]\nmax_inflight = 65535\n\
         max_queued_messages = 1000000\nslow_subscriber_timeout_ms = 60000\n\
         max_subscriptions = 100000\nmax_session_expiry_secs = 4294967295\n",
    )
    .expect("highest values are valid");
    assert_eq!(high.limits.max_property_bytes, 268_435_455);
    assert_eq!(high.limits.max_topic_aliases, u16::MAX);
    assert_eq!(high.limits.max_keep_alive, Some(u16::MAX));
    assert_eq!(high.sessions.max_inflight, u16::MAX);
    assert_eq!(high.sessions.max_queued_messages, 1_000_000);
    assert_eq!(
        high.sessions.slow_subscriber_timeout,
        Duration::from_secs(60)
    );
    assert_eq!(high.sessions.max_subscriptions, 100_000);
    assert_eq!(
        high.sessions.max_session_expiry,
        Duration::from_secs(u64::from(u32::MAX))
    );
}

#[test]
fn memory_budget_is_stored_in_bytes() {
    let config = parse("[limits]\nmemory_budget_mb = 64\n").expect("valid budget");
    assert_eq!(config.limits.memory_budget, 64 * 1024 * 1024);

    let largest = parse("[limits]\nmemory_budget_mb = 1048576\n");
    if cfg!(target_pointer_width = "64") {
        let config = largest.expect("1 TiB fits in 64 bits");
        assert_eq!(config.limits.memory_budget, 1 << 40);
    } else {
        let (line, column, key, message, _) = invalid("[limits]\nmemory_budget_mb = 1048576\n");
        assert_eq!((line, column), (2, 20));
        assert_eq!(key.as_deref(), Some("[limits] memory_budget_mb"));
        assert_eq!(message, "is too large for this platform");
    }
}

#[test]
fn slow_subscriber_takes_disconnect_or_drop() {
    let config = parse("[sessions]\nslow_subscriber = \"disconnect\"\n").expect("valid");
    assert_eq!(config.sessions.slow_subscriber, SlowSubscriber::Disconnect);
    let config = parse("[sessions]\nslow_subscriber = \"drop\"\n").expect("valid");
    assert_eq!(config.sessions.slow_subscriber, SlowSubscriber::Drop);
    assert_eq!(SlowSubscriber::default(), SlowSubscriber::Disconnect);

    let (line, column, key, message, shown) = invalid("[sessions]\nslow_subscriber = \"Drop\"\n");
    assert_eq!((line, column), (2, 19));
    assert_eq!(key.as_deref(), Some("[sessions] slow_subscriber"));
    assert!(
        message.contains("unknown variant `Drop`, expected `disconnect` or `drop`"),
        "{message}"
    );
    assert!(
        shown.starts_with("conf/jwtgate.toml:2:19: [sessions] slow_subscriber: unknown variant"),
        "{shown}"
    );
}

#[test]
fn unknown_key_in_sessions_is_named() {
    let (line, column, key, message, _) = invalid("[sessions]\nmax_queue = 5\n");
    assert_eq!((line, column), (2, 1));
    assert_eq!(key.as_deref(), Some("[sessions] max_queue"));
    assert!(message.contains("unknown field `max_queue`"), "{message}");
    assert!(
        message.contains("`max_queued_messages`"),
        "lists the valid keys: {message}"
    );
}

const QUEUES_MOVED: &str =
    "rumqttd's router is gone: use [sessions] max_inflight and max_queued_messages";
const LOG_MOVED: &str =
    "rumqttd's router is gone: use [sessions] max_queued_bytes and [limits] memory_budget_mb";
const ROUTER_TABLE_GONE: &str = "the [router] table is no longer used: jwtgate's routing \
                                 core is configured in [sessions]";

#[test]
fn old_router_keys_name_their_replacement() {
    let cases = [
        (
            "[router]\nmax_outgoing_packet_count = 10000\n",
            2,
            29,
            "[router] max_outgoing_packet_count",
            QUEUES_MOVED,
        ),
        (
            "[router]\nmax_segment_size = 4194304\n",
            2,
            20,
            "[router] max_segment_size",
            LOG_MOVED,
        ),
        (
            "[router]\nmax_segment_count = 4\n",
            2,
            21,
            "[router] max_segment_count",
            LOG_MOVED,
        ),
        // The value is not read: a wrong type still gets the replacement.
        (
            "[router]\nmax_segment_size = \"4 MiB\"\n",
            2,
            20,
            "[router] max_segment_size",
            LOG_MOVED,
        ),
        // Other ways to write the table.
        (
            "router = { max_segment_count = 4 }\n",
            1,
            32,
            "[router] max_segment_count",
            LOG_MOVED,
        ),
        (
            "router.max_outgoing_packet_count = 1\n",
            1,
            36,
            "[router] max_outgoing_packet_count",
            QUEUES_MOVED,
        ),
    ];
    for (text, line, column, key, message) in cases {
        let (got_line, got_column, got_key, got_message, shown) = invalid(text);
        assert_eq!((got_line, got_column), (line, column), "{text:?}");
        assert_eq!(got_key.as_deref(), Some(key), "{text:?}");
        assert_eq!(got_message, message, "{text:?}");
        assert_eq!(
            shown,
            format!("{ORIGIN}:{line}:{column}: {key}: {message}"),
            "{text:?}"
        );
    }
}

#[test]
fn the_first_old_router_key_in_the_file_is_reported() {
    let (line, _, key, message, _) = invalid(
        "[router]\nmax_segment_count = 4\nmax_outgoing_packet_count = 1\nmax_segment_size = 1024\n",
    );
    assert_eq!(line, 2);
    assert_eq!(key.as_deref(), Some("[router] max_segment_count"));
    assert_eq!(message, LOG_MOVED);

    let (line, _, key, message, _) = invalid(
        "[sessions]\nmax_inflight = 10\n[router]\nmax_outgoing_packet_count = 1\nmax_segment_count = 4\n",
    );
    assert_eq!(line, 4);
    assert_eq!(key.as_deref(), Some("[router] max_outgoing_packet_count"));
    assert_eq!(message, QUEUES_MOVED);
}

#[test]
fn an_empty_router_table_is_refused() {
    let (line, column, key, message, shown) = invalid("[auth]\n\n[router]\n");
    assert_eq!((line, column), (3, 1));
    assert_eq!(key.as_deref(), Some("[router]"));
    assert_eq!(message, ROUTER_TABLE_GONE);
    assert_eq!(
        shown,
        format!("{ORIGIN}:3:1: [router]: {ROUTER_TABLE_GONE}")
    );

    let (line, column, key, message, _) = invalid("router = {}\n");
    assert_eq!((line, column), (1, 10));
    assert_eq!(key.as_deref(), Some("[router]"));
    assert_eq!(message, ROUTER_TABLE_GONE);
}

#[test]
fn unknown_keys_in_router_are_ordinary_unknown_keys() {
    let (line, column, key, message, _) = invalid("[router]\nmax_inflight = 10\n");
    assert_eq!((line, column), (2, 1));
    assert_eq!(key.as_deref(), Some("[router] max_inflight"));
    assert!(
        message.contains("unknown field `max_inflight`"),
        "{message}"
    );
}
