//! What the last run kept, read back at start: the retained messages and
//! the parked sessions with the messages waiting for them. A row that does
//! not decode is reported and left out, never fatal.

use std::collections::HashMap;

use rusqlite::Connection;
use tracing::warn;

use super::rows::{self, MESSAGE_COLUMNS, MessageRow, RowError};
use crate::broker::store::SessionExpiry;
use crate::broker::{Publication, SessionKey};
use crate::mqtt::{QoS, SubscriptionOptions};

/// What was kept from the last run.
#[derive(Debug, Default)]
pub struct Restored {
    /// Retained messages not yet expired.
    pub retained: Vec<Publication>,
    /// Persistent sessions, expired ones included (the broker discards
    /// them).
    pub sessions: Vec<(SessionKey, ParkedSession)>,
    /// Rows that did not decode, reported and left out.
    pub skipped: usize,
}

/// A persistent session as read back: its record, with the messages
/// waiting for it not yet charged to the routing core's budget.
#[derive(Debug)]
pub struct ParkedSession {
    pub subscriptions: Vec<(String, SubscriptionOptions)>,
    pub expiry: SessionExpiry,
    pub queued: Vec<QueuedDelivery>,
}

/// A delivery waiting for a parked session, as read back.
#[derive(Debug)]
pub struct QueuedDelivery {
    pub publication: Publication,
    /// The QoS and RETAIN flag it is delivered with.
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

/// The messages waiting for parked sessions, per session, in order.
fn queued_deliveries(
    db: &Connection,
    skipped: &mut usize,
) -> rusqlite::Result<HashMap<SessionKey, Vec<QueuedDelivery>>> {
    let mut queued: HashMap<SessionKey, Vec<QueuedDelivery>> = HashMap::new();
    let mut select = db.prepare(&format!(
        "SELECT subject, client_id, delivery_qos, delivery_retain, subscription_ids, {MESSAGE_COLUMNS} \
         FROM session_messages ORDER BY subject, client_id, position"
    ))?;
    let rows = select.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, bool>(3)?,
            row.get::<_, String>(4)?,
            MessageRow::read(row, 5),
        ))
    })?;
    for row in rows {
        let (subject, client_id, qos, retain, ids, message) = row?;
        let key = SessionKey::new(&subject, &client_id);
        let decoded = message
            .and_then(MessageRow::publication)
            .and_then(|publication| {
                let ids: Vec<u32> = serde_json::from_str(&ids)
                    .map_err(|err| RowError::Properties(err.to_string()))?;
                let qos = QoS::try_from(qos)?;
                Ok(publication.map(|publication| QueuedDelivery {
                    publication,
                    qos,
                    retain,
                    subscription_ids: ids,
                }))
            });
        match decoded {
            Ok(Some(delivery)) => queued.entry(key).or_default().push(delivery),
            // Expired while the gateway was down.
            Ok(None) => {}
            Err(err) => {
                warn!(session = %key, error = %err, "storage: a message queued for a parked session does not decode; it is left out");
                *skipped += 1;
            }
        }
    }
    Ok(queued)
}

/// Reads the retained messages and parked sessions back.
pub(super) fn restore(db: &Connection) -> rusqlite::Result<Restored> {
    let mut restored = Restored::default();
    let mut select = db.prepare(&format!("SELECT {MESSAGE_COLUMNS} FROM retained"))?;
    let rows = select.query_map([], |row| Ok(MessageRow::read(row, 0)))?;
    for row in rows {
        match row?.and_then(MessageRow::publication) {
            Ok(Some(publication)) => restored.retained.push(publication),
            Ok(None) => {}
            Err(err) => {
                warn!(error = %err, "storage: a retained message does not decode; it is left out");
                restored.skipped += 1;
            }
        }
    }
    let mut select = db
        .prepare("SELECT subject, client_id, expires_at, expiry_ms, subscriptions FROM sessions")?;
    let rows = select.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, i64>(2)?,
            row.get::<_, Option<i64>>(3)?,
            row.get::<_, String>(4)?,
        ))
    })?;
    let mut queued = queued_deliveries(db, &mut restored.skipped)?;
    for row in rows {
        let (subject, client_id, expires_at, expiry_ms, subscriptions) = row?;
        let key = SessionKey::new(&subject, &client_id);
        let expiry = match expiry_ms {
            Some(ms) => SessionExpiry::AfterRestart(rows::duration_of_millis(ms)),
            None => SessionExpiry::At(rows::system_time(expires_at)),
        };
        match rows::subscriptions_from_json(&subscriptions) {
            Ok(subscriptions) => {
                let queued = queued.remove(&key).unwrap_or_default();
                restored.sessions.push((
                    key,
                    ParkedSession {
                        subscriptions,
                        expiry,
                        queued,
                    },
                ));
            }
            Err(err) => {
                warn!(session = %key, error = %err, "storage: a parked session does not decode; it is left out");
                restored.skipped += 1;
            }
        }
    }
    Ok(restored)
}
