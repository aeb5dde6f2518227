// Tests panic on purpose when a fixture cannot be set up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use std::ffi::OsString;
use std::sync::{Arc, Mutex};

use tracing::Level;

fn gateway(flag: Option<LogFormat>, config: LogFormat) -> Options<'static> {
    Options {
        flag,
        config,
        default_filter: "info",
        program: Program::Gateway,
    }
}

const JOURNAL: Stderr = Stderr {
    terminal: false,
    journal: true,
};
const TERMINAL: Stderr = Stderr {
    terminal: true,
    journal: false,
};
const FILE: Stderr = Stderr {
    terminal: false,
    journal: false,
};

#[test]
fn journal_stream_must_name_stderr_itself() {
    let stream = |s: &str| Some(OsString::from(s));
    let matches =
        |value: Option<OsString>, stderr| journal_stream_matches(value.as_deref(), stderr);
    assert!(matches(stream("64770:123456"), Some((64770, 123456))));
    // Inherited from a parent whose stderr was the journal, with a
    // stderr of our own: not the journal.
    assert!(!matches(stream("64770:123456"), Some((64770, 654321))));
    assert!(!matches(stream("64771:123456"), Some((64770, 123456))));
    assert!(!matches(None, Some((64770, 123456))));
    assert!(!matches(stream("64770:123456"), None));
    for garbage in [
        "",
        ":",
        "64770",
        "64770:",
        ":123456",
        "a:b",
        "64770:123456:1",
        " 1:2",
    ] {
        assert!(
            !matches(stream(garbage), Some((64770, 123456))),
            "{garbage:?}"
        );
    }
}

#[test]
fn identity_is_the_files_device_and_inode() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let meta = std::fs::metadata(file.path()).unwrap();
    assert_eq!(
        identity(file.as_file().as_fd()),
        Some((meta.dev(), meta.ino()))
    );
    let other = tempfile::NamedTempFile::new().unwrap();
    assert_ne!(
        identity(other.as_file().as_fd()),
        identity(file.as_file().as_fd())
    );
}

#[test]
fn the_gateway_writes_native_entries_only_to_the_journal_and_unasked() {
    let auto = gateway(None, LogFormat::Auto);
    assert_eq!(choose(&auto, JOURNAL, false), Sink::Journald);
    assert_eq!(
        choose(&auto, FILE, false),
        Sink::Text {
            colour: false,
            journal: false
        }
    );
    // text, from the flag or the config, asks for lines, even on the
    // journal; the flag's auto gives the journal back.
    for options in [
        gateway(Some(LogFormat::Text), LogFormat::Auto),
        gateway(None, LogFormat::Text),
    ] {
        assert_eq!(
            choose(&options, JOURNAL, false),
            Sink::Text {
                colour: false,
                journal: true
            }
        );
    }
    assert_eq!(
        choose(
            &gateway(Some(LogFormat::Auto), LogFormat::Text),
            JOURNAL,
            false
        ),
        Sink::Journald
    );
    // json, from the flag or the config, stays json.
    for options in [
        gateway(Some(LogFormat::Json), LogFormat::Text),
        gateway(None, LogFormat::Json),
    ] {
        assert_eq!(
            choose(&options, JOURNAL, false),
            Sink::Json { journal: true }
        );
        assert_eq!(choose(&options, FILE, false), Sink::Json { journal: false });
    }
    // The flag beats the config.
    assert_eq!(
        choose(
            &gateway(Some(LogFormat::Text), LogFormat::Json),
            FILE,
            false
        ),
        Sink::Text {
            colour: false,
            journal: false
        }
    );
}

#[test]
fn tools_write_lines_even_to_the_journal() {
    let tool = Options {
        program: Program::Tool,
        ..gateway(None, LogFormat::Auto)
    };
    assert_eq!(
        choose(&tool, JOURNAL, false),
        Sink::Text {
            colour: false,
            journal: true
        }
    );
}

#[test]
fn colour_only_on_a_terminal_without_no_color() {
    let text = gateway(None, LogFormat::Auto);
    let colour = |stderr, no_color| match choose(&text, stderr, no_color) {
        Sink::Text { colour, .. } => colour,
        other => panic!("{other:?}"),
    };
    assert!(colour(TERMINAL, false));
    assert!(!colour(TERMINAL, true));
    assert!(!colour(FILE, false));
}

#[test]
fn no_color_is_any_non_empty_value() {
    assert!(!no_color(None));
    assert!(!no_color(Some(OsStr::new(""))));
    assert!(no_color(Some(OsStr::new("1"))));
    // no-color.org: whatever the value, "0" included.
    assert!(no_color(Some(OsStr::new("0"))));
}

/// What a logger built by [`subscriber`] writes for an info and a warning.
fn written(sink: Sink, program: Program) -> String {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let make = {
        let buffer = Arc::clone(&buffer);
        move || Buffer(Arc::clone(&buffer))
    };
    let logger = subscriber(sink, program, EnvFilter::new("info"), make);
    tracing::subscriber::with_default(logger, || {
        tracing::info!(sub = "thermostat-3", client_id = "c-1", "client connected");
        tracing::warn!(reason = "bad signature", "careful");
        tracing::debug!("filtered out");
    });
    let bytes = buffer.lock().unwrap().clone();
    String::from_utf8(bytes).unwrap()
}

struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn lines_to_the_journal_carry_the_priority_and_no_timestamp() {
    let journal = Sink::Text {
        colour: false,
        journal: true,
    };
    for program in [Program::Gateway, Program::Tool] {
        let log = written(journal, program);
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{log}");
        let info = lines[0].strip_prefix("<6>").expect(&log);
        let warn = lines[1].strip_prefix("<4>").expect(&log);
        assert!(info.trim_start().starts_with("INFO"), "no timestamp: {log}");
        assert!(warn.trim_start().starts_with("WARN"), "no timestamp: {log}");
        assert!(info.contains("client connected") && info.contains("thermostat-3"));
        assert!(!log.contains('\x1b'), "{log:?}");
    }
    // The priority is what journalctl -p filters on.
    assert_eq!(priority(Level::ERROR), 3);
    assert_eq!(priority(Level::DEBUG), 7);
}

#[test]
fn lines_elsewhere_are_timestamped_and_coloured_only_when_asked() {
    let plain = written(
        Sink::Text {
            colour: false,
            journal: false,
        },
        Program::Gateway,
    );
    assert!(!plain.contains('\x1b'), "{plain:?}");
    for line in plain.lines() {
        assert!(!line.starts_with('<'), "{plain}");
        // RFC 3339 time first: 2026-...
        assert!(line.starts_with("20"), "{plain}");
        assert!(line.contains("jwtgate::logging"), "the target: {plain}");
    }
    let coloured = written(
        Sink::Text {
            colour: true,
            journal: false,
        },
        Program::Gateway,
    );
    assert!(coloured.contains('\x1b'), "{coloured:?}");
    // A tool's lines: level and message only.
    let tool = written(
        Sink::Text {
            colour: false,
            journal: false,
        },
        Program::Tool,
    );
    let first = tool.lines().next().unwrap();
    assert!(first.trim_start().starts_with("INFO"), "{tool}");
    assert!(!tool.contains("jwtgate::logging"), "{tool}");
}

#[test]
fn json_to_the_journal_is_still_json_after_the_priority() {
    let log = written(Sink::Json { journal: true }, Program::Gateway);
    let first = log.lines().next().unwrap();
    let object: serde_json::Value =
        serde_json::from_str(first.strip_prefix("<6>").expect(&log)).unwrap();
    assert_eq!(object["sub"], "thermostat-3");
    assert_eq!(object["message"], "client connected");
    let log = written(Sink::Json { journal: false }, Program::Gateway);
    for line in log.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}
