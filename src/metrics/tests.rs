//! The metrics rendered as Prometheus scrapes them: events with their
//! labels, every label of a fresh gateway at zero, and bridge queues read
//! at scrape time.

use super::*;

/// The value of the sample line `name{labels}` or `name`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn events_are_rendered_with_their_labels() {
    let metrics = Metrics::default();
    let dir = tempfile::tempdir().unwrap();
    let (keys, _) = KeyStore::open(dir.path()).unwrap();
    let state = State {
        broker: Broker::new(
            &crate::config::SessionSettings::default(),
            1 << 20,
            Arc::new(crate::broker::store::MemoryStore::new()),
        ),
        keys: Arc::new(keys),
        storage: Arc::default(),
        queues: Vec::new(),
        refusals: Vec::new(),
        links: Vec::new(),
    };
    let exposition = Exposition::new(&metrics, state);
    let held = metrics.connected(Version::V5, Transport::Wss);
    metrics.expect_websocket_refusals(&["origin", "wrong_path"]);
    metrics.websocket_refused("origin");
    metrics.connect(ConnectOutcome::Accepted);
    metrics.connect(ConnectOutcome::Expired);
    metrics.connect(ConnectOutcome::Expired);
    metrics.published(QoS::AtLeastOnce);
    metrics.traffic().received(100);
    metrics.session_ended(SessionEnd::TokenExpired);
    let text = exposition.render();
    assert_eq!(
        sample(&text, "jwtgate_connections{protocol=\"5\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "jwtgate_connections{protocol=\"3.1\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "jwtgate_connections_by_transport{transport=\"wss\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "jwtgate_connections_by_transport{transport=\"tls\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "jwtgate_websocket_upgrades_refused_total{reason=\"origin\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "jwtgate_websocket_upgrades_refused_total{reason=\"wrong_path\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "jwtgate_connects_total{outcome=\"expired\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&text, "jwtgate_connects_total{outcome=\"accepted\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "jwtgate_publishes_received_total{qos=\"1\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&text, "jwtgate_received_bytes_total"), Some(100.0));
    assert_eq!(
        sample(&text, "jwtgate_disconnects_total{reason=\"token_expired\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&text, "jwtgate_keys_loaded"), Some(0.0));
    assert_eq!(
        sample(&text, "jwtgate_slow_subscriber_drops_total"),
        Some(0.0)
    );
    assert_eq!(sample(&text, "jwtgate_storage_disk_full"), Some(0.0));
    assert_eq!(
        sample(&text, "jwtgate_storage_failed_commits_total"),
        Some(0.0)
    );
    drop(held);
    assert_eq!(
        sample(&exposition.render(), "jwtgate_connections{protocol=\"5\"}"),
        Some(0.0)
    );
}

/// Every family with labels is there, at zero, before its first event:
/// alert rules see 0, not "no data".
#[test]
fn a_fresh_gateway_exports_every_label_at_zero() {
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for outcome in ConnectOutcome::ALL {
        for family in ["jwtgate_connects_total", "jwtgate_reauthentications_total"] {
            let series = format!("{family}{{outcome=\"{}\"}}", outcome.as_str());
            assert_eq!(sample(&text, &series), Some(0.0), "{series}");
        }
    }
    for end in SessionEnd::ALL {
        let series = format!("jwtgate_disconnects_total{{reason=\"{}\"}}", end.as_str());
        assert_eq!(sample(&text, &series), Some(0.0), "{series}");
    }
    for series in [
        "jwtgate_key_reloads_total{result=\"ok\"}",
        "jwtgate_key_reloads_total{result=\"failed\"}",
        "jwtgate_tls_handshake_failures_total{reason=\"error\"}",
        "jwtgate_tls_handshake_failures_total{reason=\"timeout\"}",
    ] {
        assert_eq!(sample(&text, series), Some(0.0), "{series}");
    }
}

#[tokio::test]
async fn each_bridge_queue_is_read_at_scrape_time() {
    use crate::broker::{Budget, Message, Properties, Publication};
    use crate::config::StorageConfig;
    use crate::storage::Storage;

    let dir = tempfile::tempdir().unwrap();
    let config = StorageConfig {
        dir: dir.path().join("state"),
        sync_interval: std::time::Duration::from_millis(50),
    };
    let budget = Budget::new(1 << 20);
    let (storage, _) = Storage::open(&config, &[("cloud", 1 << 20)], &budget).unwrap();
    let queue = Arc::clone(storage.queue("cloud").unwrap());
    let keys = tempfile::tempdir().unwrap();
    let link = Arc::new(crate::bridge::LinkStatus::new(
        "cloud",
        "127.0.0.1:8883".to_owned(),
    ));
    let state = State {
        broker: Broker::new(
            &crate::config::SessionSettings::default(),
            1 << 20,
            Arc::new(crate::broker::store::MemoryStore::new()),
        ),
        keys: Arc::new(KeyStore::open(keys.path()).unwrap().0),
        storage: storage.health(),
        queues: vec![Arc::clone(&queue)],
        refusals: vec![Arc::new(Refusals::new("cloud"))],
        links: vec![Arc::clone(&link)],
    };
    let exposition = Exposition::new(&Metrics::default(), state);
    let depth = "jwtgate_bridge_queue_messages{bridge=\"cloud\"}";
    let connected = "jwtgate_bridge_connected{bridge=\"cloud\"}";
    let oldest = "jwtgate_bridge_queue_oldest_seconds{bridge=\"cloud\"}";
    let text = exposition.render();
    assert_eq!(sample(&text, depth), Some(0.0));
    assert_eq!(sample(&text, connected), Some(0.0));
    assert_eq!(sample(&text, oldest), Some(0.0));
    link.connected();
    assert_eq!(sample(&exposition.render(), connected), Some(1.0));
    link.failed("tcp", "TCP: connection refused".to_owned());
    assert_eq!(sample(&exposition.render(), connected), Some(0.0));
    // Every refusal reason is there from the start.
    for reason in crate::bridge::Refusal::ALL {
        let name = format!(
            "jwtgate_bridge_refused_total{{bridge=\"cloud\",reason=\"{}\"}}",
            reason.as_str()
        );
        assert_eq!(sample(&exposition.render(), &name), Some(0.0), "{name}");
    }
    let message = Message::new(
        Publication {
            topic: "t".into(),
            payload: bytes::Bytes::from_static(b"42"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Properties::default(),
            expiry: None,
        },
        &budget,
    );
    queue
        .append(message, "t".to_owned(), QoS::AtLeastOnce)
        .await
        .unwrap()
        .unwrap();
    let text = exposition.render();
    assert_eq!(sample(&text, depth), Some(1.0));
    assert!(sample(&text, "jwtgate_bridge_queue_bytes{bridge=\"cloud\"}").unwrap() > 0.0);
    assert_eq!(
        sample(
            &text,
            "jwtgate_bridge_queue_dropped_total{bridge=\"cloud\"}"
        ),
        Some(0.0)
    );
    // The oldest message's wait grows at each scrape until it is gone.
    let waited = sample(&text, oldest).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let later = sample(&exposition.render(), oldest).unwrap();
    assert!(later >= waited + 0.015, "{waited} then {later}");
    queue.acked(vec![1]);
    storage.flush().await;
    assert_eq!(sample(&exposition.render(), oldest), Some(0.0));
    storage.close();
}

#[test]
fn the_oldest_wait_is_zero_for_none_and_for_a_clock_set_back() {
    use std::time::{Duration, SystemTime};
    let now = SystemTime::now();
    assert_eq!(bridges::oldest_seconds(None, now), 0.0);
    assert_eq!(
        bridges::oldest_seconds(Some(now - Duration::from_millis(2500)), now),
        2.5
    );
    assert_eq!(
        bridges::oldest_seconds(Some(now + Duration::from_secs(60)), now),
        0.0
    );
}
