//! Native journal entries, over journald's datagram socket.
//!
//! Written here rather than taken from tracing-journald, which puts the
//! event's message alone in `MESSAGE`: `journalctl -u jwtgate`, whose
//! default view shows `MESSAGE` and nothing else, then read "client
//! connected" with no word of who. Here `MESSAGE` is the line an operator
//! would read on a terminal (the message, then each field as `name=value`,
//! strings quoted), and every field is also a journal field of its own in
//! capitals (`CLIENT_ID=thermostat-3`, the value as it is), so that
//! `journalctl SUB=thermostat-3` and `-p warning` work as well.
//!
//! The protocol is systemd's native one (systemd.io, "Native Journal
//! Protocol"): one datagram an entry, `NAME=value` lines, or for a value
//! holding a newline `NAME`, its length as a little-endian u64, the value,
//! and a newline.

use std::fmt::{self, Write as _};
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Where journald takes native entries.
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// Writes each event as one journal entry.
#[derive(Debug)]
pub struct Journal {
    socket: UnixDatagram,
    identifier: &'static str,
}

impl Journal {
    /// Connects to journald's socket at `path`: an error when nothing is
    /// there to take entries (the caller then writes lines).
    pub fn connect(path: &Path, identifier: &'static str) -> io::Result<Journal> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        Ok(Journal { socket, identifier })
    }
}

impl<S: Subscriber> Layer<S> for Journal {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut entry = Vec::with_capacity(512);
        put(&mut entry, "PRIORITY", &priority(*meta.level()).to_string());
        put(&mut entry, "SYSLOG_IDENTIFIER", self.identifier);
        put(&mut entry, "TARGET", meta.target());
        if let (Some(file), Some(line)) = (meta.file(), meta.line()) {
            put(&mut entry, "CODE_FILE", file);
            put(&mut entry, "CODE_LINE", &line.to_string());
        }
        put(&mut entry, "MESSAGE", &fields.line());
        for (name, value, _) in &fields.others {
            put(&mut entry, &journal_name(name), value);
        }
        // A lost entry is not worth a failure of what logged it: journald
        // gone, or an entry larger than the socket takes.
        let _ = self.socket.send(&entry);
    }
}

/// An event's message, and its other fields as `(name, value, shown)`:
/// the value as it is, and as a text line shows it (strings quoted).
#[derive(Debug, Default)]
struct Fields {
    message: String,
    others: Vec<(&'static str, String, String)>,
}

impl Fields {
    /// `message name=value name="text"`, as on a terminal.
    fn line(&self) -> String {
        let mut line = self.message.clone();
        for (name, _, shown) in &self.others {
            let _ = write!(line, " {name}={shown}");
        }
        line
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_owned();
        } else {
            self.others
                .push((field.name(), value.to_owned(), format!("{value:?}")));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let shown = format!("{value:?}");
        if field.name() == "message" {
            self.message = shown;
        } else {
            self.others.push((field.name(), shown.clone(), shown));
        }
    }
}

/// A field's name as the journal wants it: capitals, digits and `_`, not
/// starting with `_` (the journal's own) or a digit.
fn journal_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c == '_' || c.is_ascii_digit()) {
        out.insert(0, 'F');
    }
    out
}

/// The syslog priority of a level: `<3>` error, `<4>` warning, `<6>` info,
/// `<7>` debug and trace, as `journalctl -p` filters them.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Appends one field in the native protocol's framing.
fn put(entry: &mut Vec<u8>, name: &str, value: &str) {
    entry.extend_from_slice(name.as_bytes());
    if value.contains('\n') {
        entry.push(b'\n');
        entry.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        entry.push(b'=');
    }
    entry.extend_from_slice(value.as_bytes());
    entry.push(b'\n');
}

#[cfg(test)]
mod tests;
