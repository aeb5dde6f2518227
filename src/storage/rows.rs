//! How a message and a parked session are laid out in the database's rows.
//!
//! A message is the same columns wherever it is kept (a bridge's queue, the
//! retained table): topic, payload, QoS, retain flag, the absolute expiry
//! (wall-clock milliseconds, since an `Instant` means nothing after a
//! restart) and the MQTT 5 properties as a JSON document, NULL when there
//! are none, which is nearly always.
//!
//! Reading is defensive: the file is the gateway's own, but a row that does
//! not decode (a disk error, an edit by hand) is reported and skipped by the
//! caller, never a panic.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::broker::store::SessionRecord;
use crate::broker::{Message, Properties, Publication};
use crate::mqtt::InvalidQoS;
use crate::mqtt::{QoS, SubscriptionOptions};

/// The columns of a message, in the order every table declares them.
pub(super) const MESSAGE_COLUMNS: &str = "topic, payload, qos, retain, expires_at, properties";

/// The column definitions that go with [`MESSAGE_COLUMNS`].
pub(super) const MESSAGE_SCHEMA: &str = "topic TEXT NOT NULL, payload BLOB NOT NULL, \
     qos INTEGER NOT NULL, retain INTEGER NOT NULL, expires_at INTEGER, properties TEXT";

/// A message's columns, ready to bind.
pub(super) struct MessageRow {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: i64,
    pub retain: bool,
    pub expires_at: Option<i64>,
    pub properties: Option<String>,
}

/// Why a stored row could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("{0}")]
    QoS(#[from] InvalidQoS),
    #[error("MQTT 5 properties do not decode: {0}")]
    Properties(String),
    #[error("{0}")]
    Sql(#[from] rusqlite::Error),
}

/// The MQTT 5 properties, as stored.
#[derive(Serialize, Deserialize)]
struct StoredProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_format_indicator: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response_topic: Option<String>,
    /// Base64 (standard alphabet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    correlation_data: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    user_properties: Vec<(String, String)>,
}

impl MessageRow {
    /// `message` with `qos` as the QoS it is kept at.
    pub fn new(message: &Message, qos: QoS) -> MessageRow {
        let properties = message.properties().map(|p| {
            let stored = StoredProperties {
                payload_format_indicator: p.payload_format_indicator,
                content_type: p.content_type.clone(),
                response_topic: p.response_topic.clone(),
                correlation_data: p.correlation_data.as_ref().map(|d| STANDARD.encode(d)),
                user_properties: p.user_properties.clone(),
            };
            // Serializing strings and numbers into JSON cannot fail.
            serde_json::to_string(&stored).unwrap_or_default()
        });
        MessageRow {
            topic: message.topic().to_owned(),
            payload: message.payload().to_vec(),
            qos: qos as i64,
            retain: message.retain(),
            expires_at: message.expires_at().map(|at| unix_millis(wall_clock(at))),
            properties,
        }
    }

    /// The bytes a row takes, for the queue's disk budget: its content
    /// plus SQLite's per-row overhead, roughly.
    pub fn size(&self) -> u64 {
        let content =
            self.topic.len() + self.payload.len() + self.properties.as_ref().map_or(0, String::len);
        content as u64 + ROW_OVERHEAD
    }

    /// The values of [`MESSAGE_COLUMNS`], in their order, to bind after
    /// whatever columns a table puts first.
    pub fn values(&self) -> [&dyn rusqlite::ToSql; 6] {
        [
            &self.topic,
            &self.payload,
            &self.qos,
            &self.retain,
            &self.expires_at,
            &self.properties,
        ]
    }

    /// Reads the message columns starting at column `first` of `row`.
    pub fn read(row: &rusqlite::Row<'_>, first: usize) -> Result<MessageRow, RowError> {
        Ok(MessageRow {
            topic: row.get(first)?,
            payload: row.get(first + 1)?,
            qos: row.get(first + 2)?,
            retain: row.get(first + 3)?,
            expires_at: row.get(first + 4)?,
            properties: row.get(first + 5)?,
        })
    }

    /// The publication this row holds; `None` when its expiry has passed.
    pub fn publication(self) -> Result<Option<Publication>, RowError> {
        let qos = QoS::try_from(self.qos)?;
        let expiry = match self.expires_at {
            None => None,
            Some(at) => match left_until(at) {
                Some(left) => Some(left),
                None => return Ok(None),
            },
        };
        let properties = match self.properties {
            None => Properties::default(),
            Some(text) => {
                let stored: StoredProperties = serde_json::from_str(&text)
                    .map_err(|err| RowError::Properties(err.to_string()))?;
                let correlation_data = match stored.correlation_data {
                    None => None,
                    Some(data) => Some(Bytes::from(
                        STANDARD
                            .decode(data)
                            .map_err(|err| RowError::Properties(err.to_string()))?,
                    )),
                };
                Properties {
                    payload_format_indicator: stored.payload_format_indicator,
                    content_type: stored.content_type,
                    response_topic: stored.response_topic,
                    correlation_data,
                    user_properties: stored.user_properties,
                }
            }
        };
        Ok(Some(Publication {
            topic: self.topic,
            payload: Bytes::from(self.payload),
            qos,
            retain: self.retain,
            properties,
            expiry,
        }))
    }
}

/// SQLite's cost per row beyond its content (record header, cell pointer,
/// b-tree slack), so that a queue of tiny messages is budgeted honestly.
const ROW_OVERHEAD: u64 = 32;

/// The wall-clock time of a monotonic instant.
fn wall_clock(at: Instant) -> SystemTime {
    let now = Instant::now();
    match at.checked_duration_since(now) {
        Some(ahead) => SystemTime::now() + ahead,
        None => SystemTime::now() - now.saturating_duration_since(at),
    }
}

pub(super) fn unix_millis(at: SystemTime) -> i64 {
    let millis = at
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis();
    i64::try_from(millis).unwrap_or(i64::MAX)
}

/// A duration stored in milliseconds (a negative one, written by nobody,
/// reads as zero).
pub(super) fn duration_of_millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// A duration in milliseconds, as stored.
pub(super) fn millis_of(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Time left until `at` (unix milliseconds); `None` once it has passed.
pub(super) fn left_until(at: i64) -> Option<Duration> {
    system_time(at)
        .duration_since(SystemTime::now())
        .ok()
        .filter(|left| !left.is_zero())
}

/// A parked session's subscriptions, as stored.
#[derive(Serialize, Deserialize)]
struct StoredSubscription {
    filter: String,
    qos: u8,
    #[serde(default)]
    no_local: bool,
    #[serde(default)]
    retain_as_published: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<u32>,
}

/// The subscriptions of `record` as the JSON text stored for them.
pub(super) fn subscriptions_json(record: &SessionRecord) -> String {
    let stored: Vec<StoredSubscription> = record
        .subscriptions
        .iter()
        .map(|(filter, options)| StoredSubscription {
            filter: filter.clone(),
            qos: options.qos as u8,
            no_local: options.no_local,
            retain_as_published: options.retain_as_published,
            id: options.id,
        })
        .collect();
    serde_json::to_string(&stored).unwrap_or_else(|_| "[]".to_owned())
}

/// Reads back [`subscriptions_json`]'s text.
pub(super) fn subscriptions_from_json(
    text: &str,
) -> Result<Vec<(String, SubscriptionOptions)>, RowError> {
    let stored: Vec<StoredSubscription> =
        serde_json::from_str(text).map_err(|err| RowError::Properties(err.to_string()))?;
    stored
        .into_iter()
        .map(|s| {
            Ok((
                s.filter,
                SubscriptionOptions {
                    qos: QoS::try_from(i64::from(s.qos))?,
                    no_local: s.no_local,
                    retain_as_published: s.retain_as_published,
                    id: s.id,
                },
            ))
        })
        .collect()
}

/// The wall-clock time of unix milliseconds `at`.
pub(super) fn system_time(at: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(at).unwrap_or(0))
}
