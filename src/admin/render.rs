//! The admin answers as an operator reads them at a terminal: a summary
//! of labelled lines, and tables with a header row and aligned columns.

use std::fmt::Write as _;
use std::time::Duration;

use super::protocol::{Disconnected, SessionRow, Status};

/// `jwtgate status`.
pub fn status(status: &Status) -> String {
    let mut out = String::new();
    let uptime = humantime::format_duration(Duration::from_secs(status.uptime_secs));
    let _ = writeln!(
        out,
        "jwtgate {}, up {uptime} (since {})",
        status.version, status.started_at
    );
    let listeners: Vec<String> = status
        .listeners
        .iter()
        .map(|(name, addr)| format!("{name} {addr}"))
        .collect();
    let c = &status.connections;
    let by = |counts: &std::collections::BTreeMap<String, u64>| {
        counts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(name, n)| format!("{name}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let connections = if c.total == 0 {
        "0".to_owned()
    } else {
        format!(
            "{} (MQTT {}; {})",
            c.total,
            by(&c.by_protocol),
            by(&c.by_transport)
        )
    };
    let m = &status.messages;
    let memory = &status.memory;
    let share = if memory.budget_bytes == 0 {
        0.0
    } else {
        memory.used_bytes as f64 * 100.0 / memory.budget_bytes as f64
    };
    let reload = match &status.last_reload {
        None => "none since start".to_owned(),
        Some(r) => match &r.detail {
            Some(detail) => format!("{} {}: {detail}", r.at, r.outcome),
            None => format!("{} {}", r.at, r.outcome),
        },
    };
    let lines = [
        ("listeners", listeners.join(", ")),
        ("connections", connections),
        (
            "sessions",
            format!(
                "{} live, {} parked",
                status.sessions.live, status.sessions.parked
            ),
        ),
        (
            "messages",
            format!(
                "in {:.1}/s, out {:.1}/s (last minute); {} in, {} out since start",
                m.received_per_sec, m.sent_per_sec, m.received, m.sent
            ),
        ),
        (
            "memory",
            format!(
                "{} of the {} budget ({share:.1}%)",
                bytes(memory.used_bytes),
                bytes(memory.budget_bytes)
            ),
        ),
        (
            "storage",
            format!(
                "{} ({} failed commits)",
                status.storage.state, status.storage.failed_commits
            ),
        ),
        ("keys", format!("{} in force", status.keys.len())),
        ("deny list", format!("{} entries", status.deny_list_entries)),
        ("last reload", reload),
    ];
    for (label, value) in lines {
        let _ = writeln!(out, "{label:<12} {value}");
    }
    if !status.keys.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["KEY ID", "ALGORITHMS", "FILE", "FILE MODIFIED"],
            status
                .keys
                .iter()
                .map(|k| {
                    vec![
                        k.kid.clone(),
                        k.algorithms.join(","),
                        k.file.clone(),
                        or_dash(k.file_modified.as_deref()),
                    ]
                })
                .collect(),
        ));
    }
    if !status.bridges.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "BRIDGE", "STATE", "SINCE", "QUEUED", "BYTES", "OLDEST", "ERROR",
            ],
            status
                .bridges
                .iter()
                .map(|b| {
                    vec![
                        b.name.clone(),
                        b.state.clone(),
                        or_dash(b.since.as_deref()),
                        b.queued_messages.to_string(),
                        bytes(b.queued_bytes),
                        b.oldest_queued_secs.map_or_else(
                            || "-".to_owned(),
                            |secs| {
                                humantime::format_duration(Duration::from_secs(secs)).to_string()
                            },
                        ),
                        or_dash(b.error.as_deref()),
                    ]
                })
                .collect(),
        ));
    }
    out
}

/// `jwtgate sessions`.
pub fn sessions(rows: &[SessionRow]) -> String {
    if rows.is_empty() {
        return "no sessions\n".to_owned();
    }
    table(
        &[
            "SUBJECT",
            "CLIENT ID",
            "STATE",
            "REMOTE",
            "PROTOCOL",
            "CONNECTED SINCE",
            "TOKEN EXPIRES",
            "SUBS",
            "QUEUED",
        ],
        rows.iter()
            .map(|r| {
                let state = match &r.session_expires {
                    Some(at) => format!("{} until {at}", r.state),
                    None => r.state.clone(),
                };
                let protocol = match (&r.protocol, &r.transport) {
                    (Some(p), Some(t)) => format!("{p}/{t}"),
                    _ => "-".to_owned(),
                };
                vec![
                    r.subject.clone(),
                    r.client_id.clone(),
                    state,
                    or_dash(r.remote.as_deref()),
                    protocol,
                    or_dash(r.connected_since.as_deref()),
                    or_dash(r.token_expires.as_deref()),
                    r.subscriptions.to_string(),
                    r.queued.to_string(),
                ]
            })
            .collect(),
    )
}

/// `jwtgate disconnect`.
pub fn disconnected(done: &Disconnected) -> String {
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    if done.connections == 0 && done.sessions_discarded == 0 {
        return "no live connection or session matched\n".to_owned();
    }
    format!(
        "disconnected {}; discarded {}\n",
        plural(done.connections, "connection", "connections"),
        plural(done.sessions_discarded, "session", "sessions")
    )
}

fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

/// Bytes in the largest binary unit that keeps a whole number in front.
fn bytes(n: u64) -> String {
    let mut value = n as f64;
    let mut unit = "B";
    for next in ["KiB", "MiB", "GiB", "TiB"] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    if unit == "B" {
        format!("{n} B")
    } else {
        format!("{value:.1} {unit}")
    }
}

/// Columns padded to their widest cell, two spaces apart; the last is not
/// padded, so no line ends in blanks.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<width$}  ");
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
