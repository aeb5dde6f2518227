//! What `jwtgate status`, `sessions` and `disconnect` ask and the gateway
//! answers, as JSON: one request line from the tool, one answer from the
//! gateway, then the connection closes. `--json` prints the answer as the
//! gateway gave it, so these types are also the commands' JSON output.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A request, one JSON object on one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    Sessions {
        #[serde(default)]
        filter: Filter,
    },
    Disconnect {
        filter: Filter,
        #[serde(default)]
        discard_session: bool,
    },
}

/// Which sessions a command is about: all given fields must match; an
/// empty filter matches every session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl Filter {
    pub fn matches(&self, subject: &str, client_id: &str) -> bool {
        self.subject.as_deref().is_none_or(|s| s == subject)
            && self.client_id.as_deref().is_none_or(|c| c == client_id)
    }

    pub fn is_empty(&self) -> bool {
        self.subject.is_none() && self.client_id.is_none()
    }
}

/// The gateway's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Status(Box<Status>),
    Sessions(Vec<SessionRow>),
    Disconnected(Disconnected),
    /// The request could not be served; the text says why.
    Error(String),
}

/// `jwtgate status`. Times are RFC 3339, UTC, to the second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub started_at: String,
    pub uptime_secs: u64,
    /// What is listening: `mqtt`, `websocket`, `metrics`, with the address.
    pub listeners: BTreeMap<String, String>,
    pub connections: Connections,
    pub sessions: SessionCounts,
    pub messages: Messages,
    pub memory: Memory,
    pub keys: Vec<KeyRow>,
    pub deny_list_entries: usize,
    pub bridges: Vec<BridgeRow>,
    pub storage: StorageState,
    /// The last reload of keys and certificate since start (file change
    /// or SIGHUP); none yet when absent.
    pub last_reload: Option<Reload>,
}

/// Authenticated connections open now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connections {
    pub total: u64,
    /// By MQTT version: `3.1`, `3.1.1`, `5`.
    pub by_protocol: BTreeMap<String, u64>,
    /// By transport: `tls`, `wss`.
    pub by_transport: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCounts {
    /// Held by a connection.
    pub live: usize,
    /// Kept for a client that is away, until their expiry.
    pub parked: usize,
}

/// PUBLISH packets from and to clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Messages {
    /// Over the last minute (or since start, when younger).
    pub received_per_sec: f64,
    pub sent_per_sec: f64,
    /// Since start.
    pub received: u64,
    pub sent: u64,
}

/// The one memory ledger (`[limits] memory_budget_mb`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub used_bytes: u64,
    pub budget_bytes: u64,
}

/// A verification key in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRow {
    pub kid: String,
    pub algorithms: Vec<String>,
    pub file: String,
    /// When that file was last changed. Neither a base64 secret nor a JWK
    /// carries a validity period, so this is what tells an old key.
    pub file_modified: Option<String>,
}

/// An uplink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeRow {
    pub name: String,
    /// `connected`, `connecting`, `down` or (at shutdown) `stopped`.
    pub state: String,
    /// Since when it has been in that state.
    pub since: Option<String>,
    /// Why it is down.
    pub error: Option<String>,
    pub queued_messages: u64,
    pub queued_bytes: u64,
    /// The age of the oldest message waiting for the remote.
    pub oldest_queued_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageState {
    /// `ok`, or `disk full` while commits fail for want of room.
    pub state: String,
    pub failed_commits: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reload {
    pub at: String,
    /// `ok`, or `failed`: the keys in force were kept.
    pub outcome: String,
    pub detail: Option<String>,
}

/// A session, live or parked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRow {
    pub subject: String,
    pub client_id: String,
    /// `live` or `parked`.
    pub state: String,
    /// For a live session: its connection.
    pub remote: Option<String>,
    /// `3.1`, `3.1.1` or `5`.
    pub protocol: Option<String>,
    /// `tls` or `wss`.
    pub transport: Option<String>,
    pub connected_since: Option<String>,
    /// When the connection's token expires (and the connection with it).
    pub token_expires: Option<String>,
    /// For a parked session: when it expires.
    pub session_expires: Option<String>,
    pub subscriptions: usize,
    /// Messages waiting in its queue.
    pub queued: usize,
}

/// What `jwtgate disconnect` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disconnected {
    /// Live connections closed.
    pub connections: usize,
    /// Sessions discarded (with `--discard-session`), live or parked.
    pub sessions_discarded: usize,
}
