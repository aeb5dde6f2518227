//! The uplink bridges' part of the state collector (`super::State`):
//! each link's state, its queue (depth, bytes, drops, the age of the
//! oldest message) and what it refused of what its remote sent. Every
//! series is exported per bridge from the start, so an alert rule on a
//! bridge that never connected reads 0, not "no data". It takes the
//! handles as arguments rather than the `State`, so that it imports
//! nothing from its parent (`tests/architecture.rs` refuses circles).

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::bridge::{LinkStatus, Refusals};
use crate::storage::{Queue, QueueSnapshot};

/// Encodes the bridges' families; nothing at all without bridges (a
/// family with no member would still print its header).
pub(super) fn encode(
    links: &[Arc<LinkStatus>],
    refusals: &[Arc<Refusals>],
    queues: &[Arc<Queue>],
    encoder: &mut DescriptorEncoder,
) -> fmt::Result {
    if !links.is_empty() {
        let mut family = encoder.encode_descriptor(
            "jwtgate_bridge_connected",
            "1 while a bridge is connected to its remote, else 0 (connecting, or down and retrying)",
            None,
            MetricType::Gauge,
        )?;
        for link in links {
            let labels = [("bridge", link.name())];
            ConstGauge::new(i64::from(link.is_connected()))
                .encode(family.encode_family(&labels)?)?;
        }
    }
    if !refusals.is_empty() {
        let mut family = encoder.encode_descriptor(
            "jwtgate_bridge_refused",
            "Messages from a bridge's remote not routed locally, by reason (topic_levels, topic_bytes: over [limits] max_topic_levels/max_topic_bytes; invalid_topic; unmapped: no subscribe rule matches); each was acknowledged to the remote",
            None,
            MetricType::Counter,
        )?;
        for bridge in refusals {
            for (refusal, count) in bridge.snapshot() {
                let labels = [("bridge", bridge.name()), ("reason", refusal.as_str())];
                ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    if queues.is_empty() {
        return Ok(());
    }
    let snapshots: Vec<_> = queues.iter().map(|q| (q.name(), q.snapshot())).collect();
    for (name, help, kind, value) in [
        (
            "jwtgate_bridge_queue_messages",
            "Messages queued for a bridge's remote, not yet acknowledged",
            MetricType::Gauge,
            (|s: &QueueSnapshot| s.messages) as fn(&QueueSnapshot) -> u64,
        ),
        (
            "jwtgate_bridge_queue_bytes",
            "Bytes those messages take, against the bridge's max_queue_bytes",
            MetricType::Gauge,
            |s| s.bytes,
        ),
        (
            "jwtgate_bridge_queue_dropped",
            "Messages a bridge's queue budget dropped (oldest first)",
            MetricType::Counter,
            |s| s.dropped,
        ),
    ] {
        let mut family = encoder.encode_descriptor(name, help, None, kind)?;
        for (bridge, snapshot) in &snapshots {
            let label = [("bridge", *bridge)];
            let labelled = family.encode_family(&label)?;
            match kind {
                MetricType::Counter => ConstCounter::new(value(snapshot)).encode(labelled)?,
                _ => ConstGauge::new(i64::try_from(value(snapshot)).unwrap_or(i64::MAX))
                    .encode(labelled)?,
            }
        }
    }
    let mut family = encoder.encode_descriptor(
        "jwtgate_bridge_queue_oldest_seconds",
        "Seconds the oldest message queued for a bridge's remote has waited; 0 when the queue is empty",
        None,
        MetricType::Gauge,
    )?;
    let now = SystemTime::now();
    for (bridge, snapshot) in &snapshots {
        ConstGauge::new(oldest_seconds(snapshot.oldest_queued_at, now))
            .encode(family.encode_family(&[("bridge", *bridge)])?)?;
    }
    Ok(())
}

/// How long a message queued at `queued_at` has waited by `now`, in
/// seconds: 0 for none, and for one queued "after" now (the wall clock
/// was set back since).
pub(super) fn oldest_seconds(queued_at: Option<SystemTime>, now: SystemTime) -> f64 {
    queued_at
        .and_then(|at| now.duration_since(at).ok())
        .map_or(0.0, |waited| waited.as_secs_f64())
}
