//! Where the log goes and what it looks like, chosen once at start for
//! `jwtgate` and `jwtgate-provision`.
//!
//! - On a terminal: text lines, coloured unless `NO_COLOR` is set
//!   (non-empty, as no-color.org says).
//! - Into a file or a pipe: the same lines without colour.
//! - Into the journal (systemd's `JOURNAL_STREAM` names stderr's device
//!   and inode): the gateway writes native journal entries (priority per
//!   level, `MESSAGE` as a terminal's line would read, and each event
//!   field as a journal field: `SUB`, `CLIENT_ID`, `OUTCOME`...; see
//!   `journal`), unless `--log-format` or `[log] format` asked for
//!   `text` or `json` (the default is `auto`).
//!   Lines that go to the journal (the tools', an explicit format's, or
//!   the gateway's when journald's socket cannot be reached) carry no
//!   timestamp, since journald stamps each entry, and start with a
//!   `<N>` syslog priority, which journald reads as the entry's priority.
//! - `json`: one object per line, wherever stderr goes.

use std::ffi::OsStr;
use std::fmt;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::{LookupSpan, Registry};

use crate::config::LogFormat;

mod journal;

use journal::Journal;
pub use journal::priority;

/// Who is logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// The gateway: timestamped lines with the event's target, native
    /// journal entries when stderr is the journal.
    Gateway,
    /// A command-line tool: terse lines (level and message), never native
    /// journal entries, so that a tool run from a hardened unit does not
    /// warn on every run that journald's socket is out of its reach.
    Tool,
}

/// What the caller knows about how to log.
#[derive(Debug, Clone, Copy)]
pub struct Options<'a> {
    /// `--log-format`, when given: it wins over the config.
    pub flag: Option<LogFormat>,
    /// The config's `[log] format` (`auto` when it says nothing).
    pub config: LogFormat,
    /// The filter used when `RUST_LOG` is unset or unreadable.
    pub default_filter: &'a str,
    pub program: Program,
}

/// What stderr is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stderr {
    pub terminal: bool,
    /// systemd's `JOURNAL_STREAM` names stderr's device and inode: it is
    /// the journal's stream socket.
    pub journal: bool,
}

impl Stderr {
    /// Looks at this process's stderr and environment.
    pub fn detect() -> Stderr {
        let stderr = std::io::stderr();
        Stderr {
            terminal: stderr.is_terminal(),
            journal: journal_stream_matches(
                std::env::var_os("JOURNAL_STREAM").as_deref(),
                identity(stderr.as_fd()),
            ),
        }
    }
}

/// Where the log goes, decided by [`choose`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// Native journal entries through journald's socket.
    Journald,
    /// Text lines; `journal`: stderr is the journal (no timestamp, a
    /// `<N>` priority first).
    Text { colour: bool, journal: bool },
    /// One JSON object per line; `journal` as for text.
    Json { journal: bool },
}

/// Decides where the log goes: `--log-format` over the config's format;
/// json stays json, text stays lines; auto is native journal entries for
/// the gateway when stderr is the journal, lines otherwise; colour only on
/// a terminal and without `NO_COLOR`.
pub fn choose(options: &Options<'_>, stderr: Stderr, no_color: bool) -> Sink {
    match options.flag.unwrap_or(options.config) {
        LogFormat::Json => Sink::Json {
            journal: stderr.journal,
        },
        LogFormat::Auto if stderr.journal && options.program == Program::Gateway => Sink::Journald,
        LogFormat::Auto | LogFormat::Text => Sink::Text {
            colour: stderr.terminal && !no_color,
            journal: stderr.journal,
        },
    }
}

/// no-color.org: `NO_COLOR` set to anything but the empty string.
pub fn no_color(value: Option<&OsStr>) -> bool {
    value.is_some_and(|v| !v.is_empty())
}

/// Whether `JOURNAL_STREAM` (`DEVICE:INODE`, both decimal, as systemd sets
/// it for a unit whose stderr or stdout is the journal) names the file
/// whose `(device, inode)` is `stderr`. A child process inherits the
/// variable with a stderr of its own, hence the comparison.
pub fn journal_stream_matches(journal_stream: Option<&OsStr>, stderr: Option<(u64, u64)>) -> bool {
    let Some((dev, ino)) = journal_stream
        .and_then(OsStr::to_str)
        .and_then(|value| value.split_once(':'))
    else {
        return false;
    };
    match (dev.parse::<u64>(), ino.parse::<u64>(), stderr) {
        (Ok(dev), Ok(ino), Some(stderr)) => (dev, ino) == stderr,
        _ => false,
    }
}

/// The `(device, inode)` of the file behind `fd` (fstat on a duplicate),
/// or `None` when it cannot be read (a closed stderr).
pub fn identity(fd: std::os::fd::BorrowedFd<'_>) -> Option<(u64, u64)> {
    let file = std::fs::File::from(fd.try_clone_to_owned().ok()?);
    let meta = file.metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Sets the process's logger to stderr (or journald) as [`choose`] says,
/// filtered by `RUST_LOG` or else `options.default_filter`. When
/// journald's socket cannot be reached, logs lines instead and says so
/// once.
pub fn init(options: &Options<'_>) {
    let sink = choose(
        options,
        Stderr::detect(),
        no_color(std::env::var_os("NO_COLOR").as_deref()),
    );
    let filter = || {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(options.default_filter))
    };
    let (subscriber, fallback) = match sink {
        Sink::Journald => match Journal::connect(Path::new(journal::SOCKET), "jwtgate") {
            Ok(layer) => {
                let subscriber: Box<dyn Subscriber + Send + Sync> =
                    Box::new(tracing_subscriber::registry().with(filter()).with(layer));
                (subscriber, None)
            }
            Err(e) => {
                let lines = Sink::Text {
                    colour: false,
                    journal: true,
                };
                (
                    subscriber(lines, options.program, filter(), std::io::stderr),
                    Some(e),
                )
            }
        },
        lines => (
            subscriber(lines, options.program, filter(), std::io::stderr),
            None,
        ),
    };
    // Only a second logger fails to install, and main sets one.
    let _ = tracing::subscriber::set_global_default(subscriber);
    if let Some(e) = fallback {
        tracing::warn!(
            error = %e,
            "stderr is the journal but journald's socket (/run/systemd/journal/socket) cannot be reached: logging plain lines"
        );
    }
}

/// The line-writing logger for `sink` (not [`Sink::Journald`], which is
/// taken as text to the journal), writing to `writer`.
pub fn subscriber<W>(
    sink: Sink,
    program: Program,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let (colour, journal) = match sink {
        Sink::Text { colour, journal } => (colour, journal),
        Sink::Journald => (false, true),
        Sink::Json { journal } => {
            let events = tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_ansi(false);
            return lines(
                Prefixed { events, journal },
                JsonFields::new(),
                filter,
                writer,
                false,
            );
        }
    };
    let events = tracing_subscriber::fmt::format().with_ansi(colour);
    let fields = tracing_subscriber::fmt::format::DefaultFields::new();
    match (program, journal) {
        (Program::Gateway, false) => {
            lines(Prefixed { events, journal }, fields, filter, writer, colour)
        }
        (Program::Gateway, true) => lines(
            Prefixed {
                events: events.without_time(),
                journal,
            },
            fields,
            filter,
            writer,
            colour,
        ),
        (Program::Tool, _) => lines(
            Prefixed {
                events: events.without_time().with_target(false),
                journal,
            },
            fields,
            filter,
            writer,
            colour,
        ),
    }
}

fn lines<E, N, W>(
    events: E,
    fields: N,
    filter: EnvFilter,
    writer: W,
    colour: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    E: FormatEvent<Registry, N> + Send + Sync + 'static,
    N: for<'w> FormatFields<'w> + Send + Sync + 'static,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    Box::new(
        tracing_subscriber::fmt()
            .with_ansi(colour)
            .with_env_filter(filter)
            .with_writer(writer)
            .fmt_fields(fields)
            .event_format(events)
            .finish(),
    )
}

/// A line format with the level's syslog priority (`<6>`) first when the
/// line goes to the journal (systemd's `SyslogLevelPrefix=`, on by
/// default, reads it and strips it), so that `journalctl -p warning`
/// works for lines too.
struct Prefixed<E> {
    events: E,
    journal: bool,
}

impl<S, N, E> FormatEvent<S, N> for Prefixed<E>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    E: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.journal {
            write!(writer, "<{}>", priority(*event.metadata().level()))?;
        }
        self.events.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests;
