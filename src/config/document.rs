//! The config file as text: where each value was written, and the error
//! that names it.
//!
//! Every section checks its values through a [`Document`], so that a bad
//! value is reported the same way whichever table it is in: a
//! [`ConfigError::Invalid`] naming the file, the line and column, and the
//! key with its table. Errors raised by toml itself (syntax errors, unknown
//! keys, wrong types) carry only a byte span, so the key they concern is
//! recovered here by looking that span up in toml's spanned document tree.

use std::fmt::Display;
use std::io;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// Bytes in one MiB, the unit of `[limits] memory_budget_mb` and of a
/// bridge's `max_queue_mb`.
pub(super) const MIB: usize = 1024 * 1024;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("cannot read config file {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// The file was read but is not a valid configuration. `line` and
    /// `column` are 1-based and point at the offending key or value; `key`
    /// is the key with its table (`[limits] max_packet_size`) when known.
    #[error("{}:{line}:{column}: {}", path.display(), with_key(key.as_deref(), message))]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        key: Option<String>,
        message: String,
    },
}

fn with_key(key: Option<&str>, message: &str) -> String {
    match key {
        Some(key) => format!("{key}: {message}"),
        None => message.to_owned(),
    }
}

/// The text being parsed and the name to report it under.
pub(super) struct Document<'a> {
    pub(super) text: &'a str,
    pub(super) origin: &'a Path,
}

impl Document<'_> {
    pub(super) fn invalid(
        &self,
        at: usize,
        key: Option<String>,
        message: impl Display,
    ) -> ConfigError {
        let (line, column) = line_column(self.text, at);
        ConfigError::Invalid {
            path: self.origin.to_path_buf(),
            line,
            column,
            key,
            message: message.to_string(),
        }
    }

    /// An error about a value whose key we know.
    pub(super) fn bad<T>(
        &self,
        value: &Spanned<T>,
        key: &str,
        message: impl Display,
    ) -> ConfigError {
        self.invalid(value.span().start, Some(key.to_owned()), message)
    }

    /// An `IP:port` value; `example` shows the form in the error.
    pub(super) fn socket_addr(
        &self,
        value: &Spanned<String>,
        key: &str,
        example: &str,
    ) -> Result<SocketAddr, ConfigError> {
        value.get_ref().parse().map_err(|_| {
            self.bad(
                value,
                key,
                format!(
                    "`{}` is not an IP address and port (for example \"{example}\")",
                    value.get_ref()
                ),
            )
        })
    }

    pub(super) fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        // toml always attaches a span in practice; the start of the file is
        // the honest fallback if a future version does not.
        let span = err.span().unwrap_or(0..0);
        let key = key_at(self.text, &span);
        self.invalid(span.start, key, err.message())
    }

    /// Checks an integer against `range` and converts it to the target type.
    pub(super) fn int<T: TryFrom<i64>>(
        &self,
        value: &Spanned<i64>,
        key: &str,
        range: RangeInclusive<i64>,
        unit: &str,
    ) -> Result<T, ConfigError> {
        let n = *value.get_ref();
        let (min, max) = (*range.start(), *range.end());
        let amount = |bound: i64| match unit {
            "" => bound.to_string(),
            _ => format!("{bound} {unit}"),
        };
        if n < min {
            let message = match min {
                0 => "must not be negative".to_owned(),
                1 => "must be greater than 0".to_owned(),
                _ => format!("must be at least {}", amount(min)),
            };
            return Err(self.bad(value, key, message));
        }
        if n > max {
            return Err(self.bad(value, key, format!("must be at most {}", amount(max))));
        }
        T::try_from(n).map_err(|_| self.bad(value, key, "is too large for this platform"))
    }

    pub(super) fn seconds(
        &self,
        value: &Spanned<i64>,
        key: &str,
        min: i64,
    ) -> Result<Duration, ConfigError> {
        self.int(value, key, min..=i64::MAX, "seconds")
            .map(Duration::from_secs)
    }

    pub(super) fn milliseconds(
        &self,
        value: &Spanned<i64>,
        key: &str,
        min: i64,
    ) -> Result<Duration, ConfigError> {
        self.int(value, key, min..=i64::MAX, "milliseconds")
            .map(Duration::from_millis)
    }

    pub(super) fn path(
        &self,
        value: &Spanned<PathBuf>,
        key: &str,
        base_dir: &Path,
    ) -> Result<PathBuf, ConfigError> {
        if value.get_ref().as_os_str().is_empty() {
            return Err(self.bad(value, key, "must not be empty"));
        }
        // `join` keeps absolute paths as they are.
        Ok(base_dir.join(value.get_ref()))
    }
}

/// 1-based line and column (in characters) of byte offset `at` in `text`.
pub(super) fn line_column(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// Names the key an error span from toml points into, as `key`,
/// `[table] key`, `[table]`, or inside an array of tables as the bridge
/// module names its own errors: `[[bridge]] cloud: forward[0].qos`.
fn key_at(text: &str, span: &Range<usize>) -> Option<String> {
    // The recoverable parser still yields the keys it could read when the
    // text has a syntax error.
    let (root, _) = DeTable::parse_recoverable(text);
    let mut path = Vec::new();
    if let Some(is_table) = find_key(root.get_ref(), span.start, &mut path) {
        return Some(render_key(&path, is_table));
    }
    // A duplicate key is not in the tree; its span still covers the key
    // itself, which we recognise by what follows it.
    let word = text.get(span.clone())?;
    let after = text.get(span.end..)?.trim_start_matches([' ', '\t']);
    let is_bare_key = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    (is_bare_key && after.starts_with(['=', '.', ']'])).then(|| word.to_owned())
}

/// Depth-first search for the innermost key whose name or value covers
/// `at`, filling `path`; returns whether that key holds a table.
fn find_key(table: &DeTable<'_>, at: usize, path: &mut Vec<String>) -> Option<bool> {
    let covers = |span: Range<usize>| span.start <= at && at <= span.end;
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        // A `[table]` header's span covers only the header, so look inside
        // before deciding the table itself is meant.
        if let DeValue::Table(inner) = value.get_ref() {
            if let Some(found) = find_key(inner, at, path) {
                return Some(found);
            }
        }
        // The tables of an array (`[[bridge]]`, `forward = [{...}]`): an
        // element is named by its index, and by its `name` when it has one.
        if let DeValue::Array(items) = value.get_ref() {
            for (i, item) in items.iter().enumerate() {
                let DeValue::Table(inner) = item.get_ref() else {
                    continue;
                };
                let name = inner.get("name").and_then(|n| match n.get_ref() {
                    DeValue::String(name) => Some(name.to_string()),
                    _ => None,
                });
                path.push(match name {
                    Some(name) => format!("[{i}]={name}"),
                    None => format!("[{i}]"),
                });
                if let Some(found) = find_key(inner, at, path) {
                    return Some(found);
                }
                path.pop();
            }
        }
        if covers(key.span()) || covers(value.span()) {
            return Some(value.get_ref().is_table());
        }
        path.pop();
    }
    None
}

fn render_key(path: &[String], is_table: bool) -> String {
    // Inside an array of tables: `[[table]] name: key[1].key`.
    if let [table, element, rest @ ..] = path {
        if let Some(element) = element.strip_prefix('[') {
            let (index, name) = element.split_once(']').unwrap_or((element, ""));
            let label = name
                .strip_prefix('=')
                .map_or_else(|| format!("#{index}"), str::to_owned);
            let mut inner = String::new();
            for segment in rest {
                match segment.strip_prefix('[') {
                    Some(index) => {
                        let index = index.split_once(']').map_or(index, |(i, _)| i);
                        inner.push_str(&format!("[{index}]"));
                    }
                    None => {
                        if !inner.is_empty() {
                            inner.push('.');
                        }
                        inner.push_str(segment);
                    }
                }
            }
            return format!("[[{table}]] {label}: {inner}");
        }
    }
    match path {
        _ if is_table => format!("[{}]", path.join(".")),
        [key] => key.clone(),
        [tables @ .., key] => format!("[{}] {key}", tables.join(".")),
        [] => String::new(),
    }
}
