//! The bridge's subscriptions at the remote. Its session there outlives a
//! connection, so they are made once and recorded beside the database
//! (`bridge-NAME.subscriptions`): a resumed session is subscribed again
//! only when the subscribe rules changed since, and a filter the remote
//! refused is not recorded, so it is asked for again next time.

use std::io;
use std::path::Path;

use tracing::{error, info, warn};

use super::connection::{Changing, Connection, LinkError};
use crate::config::BridgeConfig;
use crate::mqtt::QoS;

/// The packet ids of the one SUBSCRIBE and the one UNSUBSCRIBE a
/// connection may send; publishes use the others.
pub(super) const SUBSCRIBE_PKID: u16 = 1;
pub(super) const UNSUBSCRIBE_PKID: u16 = 2;

/// What the bridge's session at the remote is subscribed to, as recorded
/// in its subscriptions file: the remote and client id on the first line
/// (another one is another session), then `{qos} {filter}` per rule.
fn subscription_record(config: &BridgeConfig) -> String {
    let mut record = format!(
        "{}:{} {}\n",
        config.remote.host, config.remote.port, config.client_id
    );
    for rule in &config.subscribe {
        record.push_str(&format!("{} {}\n", rule.qos.level(), rule.remote.as_str()));
    }
    record
}

/// The filters of a record, if it is of the same session as `current`.
fn recorded_filters<'a>(record: &'a str, current: &str) -> Vec<&'a str> {
    let mut lines = record.lines();
    if lines.next() != current.lines().next() {
        return Vec::new();
    }
    lines
        .filter_map(|line| line.split_once(' ').map(|(_, filter)| filter))
        .collect()
}

/// Subscribes as the session at the remote needs. A resumed session
/// still holds its subscriptions: subscribing again would only make
/// the remote send every retained message once more, so it is done
/// only when the rules changed since they were made (then the removed
/// ones are unsubscribed). A new session (the remote forgot it: it
/// expired, or the remote restarted without persistence) gets them
/// all.
pub(super) fn subscribe(
    config: &BridgeConfig,
    file: Option<&Path>,
    connection: &mut Connection,
) -> Result<(), LinkError> {
    let record = subscription_record(config);
    let wanted: Vec<(String, QoS)> = config
        .subscribe
        .iter()
        .map(|rule| (rule.remote.as_str().to_owned(), rule.qos))
        .collect();
    let mut removed = Vec::new();
    if let Some(file) = file {
        if connection.session_present {
            match std::fs::read_to_string(file) {
                Ok(previous) if previous == record => return Ok(()),
                Ok(previous) => {
                    removed = recorded_filters(&previous, &record)
                        .into_iter()
                        .filter(|filter| wanted.iter().all(|(f, _)| f != filter))
                        .map(str::to_owned)
                        .collect();
                }
                // Not recorded (or unreadable): subscribe to be sure.
                Err(_) => {}
            }
            info!(
                bridge = config.name.as_str(),
                subscribe = wanted.len(),
                unsubscribe = removed.len(),
                "bridge: the subscribe rules changed since the remote's session was made; subscribing again"
            );
        } else if let Err(err) = std::fs::remove_file(file) {
            // The remote holds no subscription: neither may the record.
            if err.kind() != io::ErrorKind::NotFound {
                warn!(bridge = config.name.as_str(), file = %file.display(), error = %err, "bridge: cannot remove the subscriptions record");
            }
        }
    }
    if !wanted.is_empty() {
        connection
            .codec
            .subscribe(SUBSCRIBE_PKID, &wanted, &mut connection.output)?;
    }
    if !removed.is_empty() {
        connection
            .codec
            .unsubscribe(UNSUBSCRIBE_PKID, &removed, &mut connection.output)?;
    }
    if !wanted.is_empty() || !removed.is_empty() {
        connection.changing = Some(Changing {
            suback: wanted.is_empty(),
            unsuback: removed.is_empty(),
            granted: true,
            record,
        });
    }
    Ok(())
}

/// Records what the remote's session is subscribed to, once it
/// acknowledged every change; a refused filter is not recorded, so it
/// is asked for again on the next connection.
fn record(config: &BridgeConfig, file: Option<&Path>, connection: &mut Connection) {
    let Some(changing) = connection.changing.take_if(|c| c.suback && c.unsuback) else {
        return;
    };
    let Some(file) = file else {
        return;
    };
    if !changing.granted {
        return;
    }
    // Written aside and renamed, so a crash leaves the old record or
    // the new one, never half of one.
    let partial = file.with_extension("partial");
    let written = std::fs::write(&partial, changing.record.as_bytes())
        .and_then(|()| std::fs::rename(&partial, file));
    if let Err(err) = written {
        warn!(bridge = config.name.as_str(), file = %file.display(), error = %err, "bridge: cannot record the remote session's subscriptions; they are made again on the next connection");
    }
}

/// The change an `ack` with `pkid` acknowledges: the one sent with
/// `expected`, not acknowledged yet (`acked`); anything else breaks the
/// protocol.
fn awaiting<'a>(
    connection: &'a mut Connection,
    ack: &str,
    pkid: u16,
    expected: u16,
    acked: fn(&Changing) -> bool,
) -> Result<&'a mut Changing, LinkError> {
    connection
        .changing
        .as_mut()
        .filter(|c| pkid == expected && !acked(c))
        .ok_or_else(|| LinkError::Protocol(format!("{ack} for unknown packet id {pkid}")))
}

/// The remote's SUBACK, `granted` per subscribe rule: a refused filter is
/// logged, and the record is written once every change is acknowledged.
pub(super) fn subacked(
    config: &BridgeConfig,
    file: Option<&Path>,
    connection: &mut Connection,
    pkid: u16,
    granted: Vec<Result<QoS, String>>,
) -> Result<(), LinkError> {
    let changing = awaiting(connection, "SUBACK", pkid, SUBSCRIBE_PKID, |c| c.suback)?;
    changing.suback = true;
    changing.granted = granted.len() == config.subscribe.len() && granted.iter().all(Result::is_ok);
    for (rule, granted) in config.subscribe.iter().zip(granted) {
        if let Err(reason) = granted {
            error!(
                bridge = config.name.as_str(),
                filter = rule.remote.as_str(),
                reason,
                "bridge: the remote refused a subscription; nothing comes in on it"
            );
        }
    }
    record(config, file, connection);
    Ok(())
}

/// The remote's UNSUBACK; the record is written once every change is
/// acknowledged.
pub(super) fn unsubacked(
    config: &BridgeConfig,
    file: Option<&Path>,
    connection: &mut Connection,
    pkid: u16,
) -> Result<(), LinkError> {
    let changing = awaiting(connection, "UNSUBACK", pkid, UNSUBSCRIBE_PKID, |c| {
        c.unsuback
    })?;
    changing.unsuback = true;
    record(config, file, connection);
    Ok(())
}
#[cfg(test)]
mod tests;
