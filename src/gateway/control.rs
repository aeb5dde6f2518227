//! What `jwtgate status`, `sessions` and `disconnect` read and do, from
//! the gateway's side: the [`Control`] the admin socket serves, over the
//! connection tasks' shared handles and the metrics' owners.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use super::shared::Shared;
use crate::admin::protocol::{
    BridgeRow, Connections, Disconnected, Filter, KeyRow, Memory, Messages, Reload, SessionCounts,
    SessionRow, Status, StorageState,
};
use crate::admin::server::Control;
use crate::bridge::LinkState;
use crate::metrics;
use crate::mqtt::{Transport, Version};
use crate::reload::Reloader;

/// How long `disconnect` waits for the connections it ended to let go
/// before it answers.
const LET_GO: Duration = Duration::from_secs(5);

/// How often the message counters are sampled for the per-second rates,
/// and how many samples are kept: a minute's worth.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const SAMPLES: usize = 13;

/// The gateway as the admin socket sees it.
pub(super) struct GatewayControl {
    shared: Arc<Shared>,
    state: metrics::State,
    reloader: Arc<Reloader>,
    started: SystemTime,
    /// What is listening where, by name.
    listeners: BTreeMap<String, String>,
    /// (when, received, sent), oldest first.
    samples: Mutex<VecDeque<(Instant, u64, u64)>>,
}

impl GatewayControl {
    pub(super) fn new(
        shared: Arc<Shared>,
        state: metrics::State,
        reloader: Arc<Reloader>,
        listeners: BTreeMap<String, String>,
    ) -> GatewayControl {
        GatewayControl {
            shared,
            state,
            reloader,
            started: SystemTime::now(),
            listeners,
            samples: Mutex::new(VecDeque::from([(Instant::now(), 0, 0)])),
        }
    }

    /// Samples the message counters until `stopped`, for the rates.
    pub(super) async fn sample(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.wait_for(|stop| *stop) => return,
            }
            let figures = self.shared.metrics.figures();
            let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
            if samples.len() == SAMPLES {
                samples.pop_front();
            }
            samples.push_back((Instant::now(), figures.received, figures.delivered));
        }
    }

    fn messages(&self, received: u64, sent: u64) -> Messages {
        let (at, received_then, sent_then) = self
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .front()
            .copied()
            .unwrap_or((Instant::now(), received, sent));
        let secs = at.elapsed().as_secs_f64();
        let rate = |now: u64, then: u64| {
            if secs < 0.5 {
                0.0
            } else {
                now.saturating_sub(then) as f64 / secs
            }
        };
        Messages {
            received_per_sec: rate(received, received_then),
            sent_per_sec: rate(sent, sent_then),
            received,
            sent,
        }
    }
}

impl Control for GatewayControl {
    fn status(&self) -> Status {
        let figures = self.shared.metrics.figures();
        let count = |names: &[&str], values: &[u64]| -> BTreeMap<String, u64> {
            names
                .iter()
                .zip(values)
                .map(|(name, n)| ((*name).to_owned(), *n))
                .collect()
        };
        let versions = [Version::V3_1, Version::V3_1_1, Version::V5].map(Version::as_str);
        let transports = Transport::ALL.map(Transport::as_str);
        let sessions = self.shared.broker.sessions();
        let live = sessions.iter().filter(|s| s.attached).count();
        let keys = self.state.keys.snapshot();
        let budget = self.shared.broker.budget();
        let storage = &self.state.storage;
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: rfc3339(self.started),
            uptime_secs: self.started.elapsed().unwrap_or_default().as_secs(),
            listeners: self.listeners.clone(),
            connections: Connections {
                total: figures.connections(),
                by_protocol: count(&versions, &figures.connections_by_version),
                by_transport: count(&transports, &figures.connections_by_transport),
            },
            sessions: SessionCounts {
                live,
                parked: sessions.len() - live,
            },
            messages: self.messages(figures.received, figures.delivered),
            memory: Memory {
                used_bytes: budget.used() as u64,
                budget_bytes: budget.limit() as u64,
            },
            keys: keys
                .iter()
                .map(|key| KeyRow {
                    kid: key.id().to_owned(),
                    algorithms: key.algorithms().iter().map(|a| format!("{a:?}")).collect(),
                    file: key.source().display().to_string(),
                    file_modified: keys.modified(key).map(rfc3339),
                })
                .collect(),
            deny_list_entries: keys.deny_list().len(),
            bridges: self.bridges(),
            storage: StorageState {
                state: if storage.disk_full() {
                    "disk full"
                } else {
                    "ok"
                }
                .to_owned(),
                failed_commits: storage.failed_commits(),
            },
            last_reload: self.reloader.last_reload().map(|last| Reload {
                at: rfc3339(last.at),
                outcome: if last.ok { "ok" } else { "failed" }.to_owned(),
                detail: last.problem,
            }),
        }
    }

    fn sessions(&self, filter: &Filter) -> Vec<SessionRow> {
        let live: HashMap<_, _> = self
            .shared
            .takeover
            .live()
            .into_iter()
            .filter_map(|(key, live)| Some((key, live?)))
            .collect();
        self.shared
            .broker
            .sessions()
            .into_iter()
            .filter(|s| filter.matches(s.key.subject(), s.key.client_id()))
            .map(|s| {
                let connection = live.get(&s.key).filter(|_| s.attached);
                SessionRow {
                    subject: s.key.subject().to_owned(),
                    client_id: s.key.client_id().to_owned(),
                    state: if s.attached { "live" } else { "parked" }.to_owned(),
                    remote: connection.map(|c| c.remote.to_string()),
                    protocol: connection.map(|c| c.version.as_str().to_owned()),
                    transport: connection.map(|c| c.transport.as_str().to_owned()),
                    connected_since: connection.map(|c| rfc3339(c.since)),
                    token_expires: connection
                        .and_then(|c| c.token_expires())
                        .and_then(|exp| UNIX_EPOCH.checked_add(Duration::from_secs(exp)))
                        .map(rfc3339),
                    session_expires: s.expires_at.map(rfc3339),
                    subscriptions: s.subscriptions,
                    queued: s.queued,
                }
            })
            .collect()
    }

    fn disconnect<'a>(
        &'a self,
        filter: &'a Filter,
        discard_session: bool,
    ) -> Pin<Box<dyn Future<Output = Disconnected> + Send + 'a>> {
        Box::pin(async move {
            let picked =
                |key: &crate::broker::SessionKey| filter.matches(key.subject(), key.client_id());
            let before = self.matching_sessions(filter);
            let slots = self.shared.takeover.end(picked, discard_session);
            let connections = slots.len();
            // Each slot is held until its connection has handed its
            // session back: locking it is waiting for that.
            let _ = tokio::time::timeout(LET_GO, async {
                for slot in slots {
                    drop(slot.lock().await);
                }
            })
            .await;
            let sessions_discarded = if discard_session {
                for view in self.shared.broker.sessions() {
                    if !view.attached && picked(&view.key) {
                        self.shared.broker.discard_parked(&view.key);
                    }
                }
                before.saturating_sub(self.matching_sessions(filter))
            } else {
                0
            };
            Disconnected {
                connections,
                sessions_discarded,
            }
        })
    }
}

impl GatewayControl {
    /// Each uplink: its link's state, and its queue (a bridge always has
    /// both; one the storage could not open has no queue and no link).
    fn bridges(&self) -> Vec<BridgeRow> {
        self.state
            .links
            .iter()
            .map(|link| {
                let state = link.state();
                let queued = self
                    .state
                    .queues
                    .iter()
                    .find(|queue| queue.name() == link.name())
                    .map(|queue| queue.snapshot())
                    .unwrap_or_default();
                BridgeRow {
                    name: link.name().to_owned(),
                    state: state.as_str().to_owned(),
                    since: Some(rfc3339(state.since())),
                    error: match &state {
                        LinkState::Down { error, .. } => Some(error.clone()),
                        _ => None,
                    },
                    queued_messages: queued.messages,
                    queued_bytes: queued.bytes,
                    oldest_queued_secs: queued
                        .oldest_queued_at
                        .map(|at| at.elapsed().unwrap_or_default().as_secs()),
                }
            })
            .collect()
    }

    fn matching_sessions(&self, filter: &Filter) -> usize {
        self.shared
            .broker
            .sessions()
            .iter()
            .filter(|s| filter.matches(s.key.subject(), s.key.client_id()))
            .count()
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}
