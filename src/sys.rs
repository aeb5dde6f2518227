//! `$SYS/broker/...`: the figures Mosquitto publishes about itself, for an
//! operator's `mosquitto_sub -t '$SYS/#'`.
//!
//! Off unless `[sys] interval_secs` is set. Every interval, [`serve`] reads
//! the figures from their owners (the event counters of [`Metrics`], and
//! through [`metrics::State`] the routing core, the key store and the
//! bridges' queues) and publishes each one whose text changed since it
//! last went out, as a retained QoS 0 message through the routing core, as
//! Mosquitto does: a subscriber hears it live, a new one gets the retained
//! copy, and an unchanged figure costs no subscriber's link anything. The
//! version therefore goes out once; the uptime every interval.
//!
//! Topic names and payloads are Mosquitto's where the figure is one of
//! Mosquitto's (`42 seconds`, plain integers, loads with two decimals), so
//! that its dashboards and scripts read them unchanged; jwtgate's own are
//! under `$SYS/broker/jwtgate/`. Where the figures differ in what they
//! count:
//!
//! - `messages/received` and `messages/sent` count PUBLISH packets (from
//!   clients, to clients); Mosquitto's count packets of every type.
//! - `clients/total` is the sessions the routing core knows, connected and
//!   parked; `clients/disconnected` the parked ones; `clients/maximum` the
//!   most seen at one interval (Mosquitto's is sampled the same way).
//! - `heap/current` is what the memory ledger holds (`[limits]
//!   memory_budget_mb`: messages, subscriptions, retained messages,
//!   sessions, aliases), not the whole process's heap: jemalloc's own
//!   figure would take a dependency and the binary's allocator handed in.
//! - The loads are Mosquitto's `calc_load` ([`Load`]): each interval, the
//!   rate over it (per minute) pulls the average towards itself by
//!   `1 - e^(-seconds / window)`, for windows of 1, 5 and 15 minutes.
//!
//! Who reads them: a client whose token grants `$SYS/#` or a part of it
//! (`#` does not reach `$` topics: the `$` rule of [`crate::acl`]). Who
//! writes them: the gateway alone; [`crate::acl`] refuses every client
//! PUBLISH and will on a `$` topic, whatever the token grants.
//!
//! What they cost: the retained copies are the gateway's own, charged to
//! the memory ledger as a will's are (their messages, and their places in
//! the retained tree, booked to no subject), and held in memory only: the
//! durable store writes no `$` topic, so a restart starts from fresh
//! figures rather than the last run's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::info;

use crate::broker::{Broker, Properties, Publication};
use crate::metrics::{self, Figures, Metrics};
use crate::mqtt::QoS;

/// What every topic here starts with.
const PREFIX: &str = "$SYS/broker/";

/// `$SYS/broker/version`, Mosquitto's `mosquitto version 2.0.18` in
/// jwtgate's words.
const VERSION: &str = concat!("jwtgate ", env!("CARGO_PKG_VERSION"));

/// Mosquitto's load windows: the topic's last level, and its length in
/// seconds.
const WINDOWS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];

/// The counters that have loads, in the order of [`Reading::loaded`].
const LOADED: [&str; 4] = [
    "messages/received",
    "messages/sent",
    "bytes/received",
    "bytes/sent",
];

/// Publishes the figures every `interval` until `shutdown` turns true.
pub async fn serve(
    metrics: Arc<Metrics>,
    state: metrics::State,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    info!(
        interval_secs = interval.as_secs(),
        "$SYS: publishing $SYS/broker/... figures, readable with a grant of $SYS/#"
    );
    let started = Instant::now();
    let mut tree = Tree::default();
    let mut ticks = tokio::time::interval(interval);
    // A tick late behind a slow subscriber is one figure late, not a
    // burst of catching up.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.changed() => return,
        }
        let changed = tree.tick(&read(&metrics, &state, started.elapsed()));
        let refused = state.broker.stats().snapshot().retained_refused;
        tokio::select! {
            () = publish(&state.broker, changed) => {}
            _ = shutdown.changed() => return,
        }
        if state.broker.stats().snapshot().retained_refused != refused {
            // A retained copy may not have been kept (the memory budget was
            // used up): each figure goes out again next time, so that the
            // version, published once, is not missing for good.
            tree.forget();
        }
    }
}

/// Routes each figure as its topic's retained message, from no session:
/// the gateway's own, charged to no subject.
async fn publish(broker: &Broker, figures: Vec<(String, String)>) {
    for (topic, text) in figures {
        // QoS 0: a figure is superseded by the next, so an acknowledgement
        // buys nothing, and a QoS 1 copy queued for a parked session would
        // be written to disk.
        let message = broker.message(Publication {
            topic,
            payload: Bytes::from(text),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Properties::default(),
            expiry: None,
        });
        let mut pending = broker.publish(message, None);
        while !pending.is_done() {
            pending.advance(broker).await;
        }
    }
}

/// The figures now, `uptime` after start.
fn read(metrics: &Metrics, state: &metrics::State, uptime: Duration) -> Reading {
    let broker = &state.broker;
    Reading {
        uptime,
        counters: metrics.figures(),
        sessions: broker.session_count(),
        subscriptions: broker.subscription_count(),
        retained: broker.retained_count(),
        heap: broker.budget().used(),
        keys: state.keys.snapshot().len(),
        queues: state
            .queues
            .iter()
            .map(|queue| (queue.name().to_owned(), queue.snapshot().messages))
            .collect(),
    }
}

/// What one tick read from the figures' owners.
#[derive(Debug, Clone, Default, PartialEq)]
struct Reading {
    uptime: Duration,
    counters: Figures,
    /// Sessions known, connected or parked.
    sessions: usize,
    subscriptions: usize,
    retained: usize,
    /// Bytes the memory ledger holds.
    heap: usize,
    keys: usize,
    /// Each bridge's name, and the messages its queue holds.
    queues: Vec<(String, u64)>,
}

impl Reading {
    /// The counters that have loads, in the order of [`LOADED`].
    fn loaded(&self) -> [u64; 4] {
        let c = &self.counters;
        [c.received, c.delivered, c.bytes_received, c.bytes_sent]
    }
}

/// A rate per minute, averaged with exponential decay over one window:
/// Mosquitto's `calc_load`. Fed the events of an interval of `t` seconds,
/// the average moves from `a` to `r + e^(-t / window) * (a - r)`, where `r`
/// is the interval's own rate (events * 60 / t). For a steady rate the
/// result does not depend on how the time is cut into intervals.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Load(f64);

impl Load {
    fn update(&mut self, events: u64, elapsed: Duration, window: f64) {
        let seconds = elapsed.as_secs_f64();
        // Two ticks at one instant carry no rate.
        if seconds <= 0.0 {
            return;
        }
        let rate = events as f64 * 60.0 / seconds;
        self.0 = rate + (-seconds / window).exp() * (self.0 - rate);
    }
}

/// Clients connected, and known (connected, or their sessions parked).
fn clients(reading: &Reading) -> (usize, usize) {
    let connected = usize::try_from(reading.counters.connections()).unwrap_or(usize::MAX);
    // A connection is counted a moment before its session is known.
    (connected, reading.sessions.max(connected))
}

/// The figures from one tick to the next: what each topic last carried,
/// the loads, and the counters they were last fed.
#[derive(Debug, Default)]
struct Tree {
    published: HashMap<String, String>,
    /// For each counter of [`LOADED`], its load over each of [`WINDOWS`].
    loads: [[Load; 3]; 4],
    /// The loaded counters at the last tick, and its uptime; `None`
    /// before the first, whose loads are 0 (as Mosquitto's at start).
    last: Option<([u64; 4], Duration)>,
    /// The most clients known at one tick.
    maximum: usize,
}

impl Tree {
    /// Takes in `reading`; returns the figures whose text changed since
    /// they were last returned (all of them the first time), topic and
    /// payload.
    fn tick(&mut self, reading: &Reading) -> Vec<(String, String)> {
        let counters = reading.loaded();
        if let Some((before, at)) = self.last {
            let elapsed = reading.uptime.saturating_sub(at);
            for ((loads, now), then) in self.loads.iter_mut().zip(counters).zip(before) {
                for (load, (_, window)) in loads.iter_mut().zip(WINDOWS) {
                    load.update(now.saturating_sub(then), elapsed, window);
                }
            }
        }
        self.last = Some((counters, reading.uptime));
        self.maximum = self.maximum.max(clients(reading).1);
        let mut changed = Vec::new();
        for (topic, text) in self.figures(reading) {
            if self.published.get(&topic) != Some(&text) {
                self.published.insert(topic.clone(), text.clone());
                changed.push((topic, text));
            }
        }
        changed
    }

    /// Publishes every figure again at the next tick.
    fn forget(&mut self) {
        self.published.clear();
    }

    /// Every figure of `reading`, topic and payload.
    fn figures(&self, reading: &Reading) -> Vec<(String, String)> {
        let topic = |name: &str| format!("{PREFIX}{name}");
        let (connected, total) = clients(reading);
        let mut figures = vec![
            (topic("version"), VERSION.to_owned()),
            (
                topic("uptime"),
                format!("{} seconds", reading.uptime.as_secs()),
            ),
            (topic("clients/connected"), connected.to_string()),
            (
                topic("clients/disconnected"),
                (total - connected).to_string(),
            ),
            (topic("clients/total"), total.to_string()),
            (topic("clients/maximum"), self.maximum.to_string()),
            (
                topic("retained messages/count"),
                reading.retained.to_string(),
            ),
            (
                topic("subscriptions/count"),
                reading.subscriptions.to_string(),
            ),
            (topic("heap/current"), reading.heap.to_string()),
            (topic("jwtgate/keys/loaded"), reading.keys.to_string()),
        ];
        for (name, value) in LOADED.iter().zip(reading.loaded()) {
            figures.push((topic(name), value.to_string()));
        }
        for (name, loads) in LOADED.iter().zip(&self.loads) {
            for ((window, _), load) in WINDOWS.iter().zip(loads) {
                figures.push((
                    topic(&format!("load/{name}/{window}")),
                    format!("{:.2}", load.0),
                ));
            }
        }
        for (bridge, queued) in &reading.queues {
            figures.push((
                topic(&format!("jwtgate/bridge/{bridge}/queued")),
                queued.to_string(),
            ));
        }
        figures
    }
}

#[cfg(test)]
mod tests;
