//! The deny list: `revoked` lists tokens that are refused although their
//! signature holds, one `jti:<id>`, `sub:<id>` or `kid:<id>` per line, with
//! `#` comments (see [`parse_deny_list`]). It is part of the
//! [`KeySet`](super::KeySet), loaded and swapped with the keys, so a reload
//! never pairs new keys with an old deny list. [`crate::token::verify`]
//! consults it once a signature has held; since every live connection
//! re-verifies its token after a reload, adding an entry also closes the
//! connections it names.

use std::collections::HashSet;
use std::fmt;

/// The deny list's file name in the keys directory.
pub const DENY_LIST_FILE: &str = "revoked";

/// What a deny-list entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyKind {
    /// One token, by its `jti` claim.
    Jti,
    /// Every token of one subject (`sub` claim), usually one device.
    Sub,
    /// Every token verified with one key, by its key id: the key is
    /// disabled without removing its file.
    Kid,
}

impl DenyKind {
    const ALL: [DenyKind; 3] = [DenyKind::Jti, DenyKind::Sub, DenyKind::Kid];

    /// The prefix that names it in the file, without the colon.
    pub fn name(self) -> &'static str {
        match self {
            DenyKind::Jti => "jti",
            DenyKind::Sub => "sub",
            DenyKind::Kid => "kid",
        }
    }

    fn from_name(name: &str) -> Option<DenyKind> {
        DenyKind::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

impl fmt::Display for DenyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One deny-list entry; displayed as it is written in the file,
/// `kind:id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyEntry {
    pub kind: DenyKind,
    pub id: String,
}

impl fmt::Display for DenyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.id)
    }
}

/// The token ids, subjects and key ids whose tokens are refused even
/// though their signature holds. `DenyList::default()` is the empty list.
///
/// One set per kind, so that a lookup borrows the token's `&str` instead of
/// building an entry for every CONNECT.
#[derive(Debug, Default)]
pub struct DenyList {
    jti: HashSet<String>,
    sub: HashSet<String>,
    kid: HashSet<String>,
}

impl DenyList {
    fn ids(&self, kind: DenyKind) -> &HashSet<String> {
        match kind {
            DenyKind::Jti => &self.jti,
            DenyKind::Sub => &self.sub,
            DenyKind::Kid => &self.kid,
        }
    }

    fn insert(&mut self, entry: DenyEntry) {
        let ids = match entry.kind {
            DenyKind::Jti => &mut self.jti,
            DenyKind::Sub => &mut self.sub,
            DenyKind::Kid => &mut self.kid,
        };
        ids.insert(entry.id);
    }

    /// Distinct entries (an entry listed twice counts once).
    pub fn len(&self) -> usize {
        self.jti.len() + self.sub.len() + self.kid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, kind: DenyKind, id: &str) -> bool {
        self.ids(kind).contains(id)
    }

    /// The entry that refuses a token with this `jti` and subject, verified
    /// with key `kid`, if any. The most specific entry is named when
    /// several match: the token's, then the subject's, then the key's.
    pub fn matching(&self, jti: Option<&str>, sub: Option<&str>, kid: &str) -> Option<DenyEntry> {
        [
            (DenyKind::Jti, jti),
            (DenyKind::Sub, sub),
            (DenyKind::Kid, Some(kid)),
        ]
        .into_iter()
        .find_map(|(kind, id)| {
            let id = id?;
            self.contains(kind, id).then(|| DenyEntry {
                kind,
                id: id.to_owned(),
            })
        })
    }
}

/// A deny-list line that was left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {error}; line ignored")]
pub struct BadDenyLine {
    /// From 1.
    pub line: usize,
    pub error: DenyLineError,
}

/// Why a deny-list line is not an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DenyLineError {
    #[error("no \"kind:\" prefix; expected jti:<id>, sub:<id> or kid:<id>")]
    NoKind,
    #[error("unknown kind {0:?}; expected jti, sub or kid")]
    UnknownKind(String),
    #[error("\"{0}:\" without an id")]
    EmptyId(DenyKind),
    #[error("the {0} id contains whitespace (a comment starts with '#' after whitespace)")]
    SpaceInId(DenyKind),
}

/// The longest unknown kind a [`DenyLineError`] echoes: enough to spot a
/// typo, too little to copy a pasted token into the log.
const ECHO_KIND_CHARS: usize = 16;

/// Parses the text of a deny list: one `jti:<id>`, `sub:<id>` or
/// `kid:<id>` per line. Blank lines are skipped; `#` starts a comment at
/// the start of a line or after whitespace (so an id may contain `#`, as
/// in `jti:a#1`); whitespace around the entry and after the colon is
/// ignored. Ids cannot contain whitespace, since `sub:ab cd` is more likely
/// a missing `#` than a subject with a space. A malformed line is returned
/// with its number and left out; every other entry stands.
pub fn parse_deny_list(text: &str) -> (DenyList, Vec<BadDenyLine>) {
    let mut list = DenyList::default();
    let mut bad = Vec::new();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, line) in text.lines().enumerate() {
        let entry = strip_comment(line).trim();
        if entry.is_empty() {
            continue;
        }
        match parse_deny_entry(entry) {
            Ok(entry) => list.insert(entry),
            Err(error) => bad.push(BadDenyLine {
                line: index + 1,
                error,
            }),
        }
    }
    (list, bad)
}

/// `line` up to a `#` that opens the line or follows whitespace.
fn strip_comment(line: &str) -> &str {
    let mut after_space = true;
    for (at, ch) in line.char_indices() {
        if ch == '#' && after_space {
            return &line[..at];
        }
        after_space = ch.is_whitespace();
    }
    line
}

fn parse_deny_entry(entry: &str) -> Result<DenyEntry, DenyLineError> {
    let (kind, id) = entry.split_once(':').ok_or(DenyLineError::NoKind)?;
    let kind = kind.trim_end();
    let kind = DenyKind::from_name(kind)
        .ok_or_else(|| DenyLineError::UnknownKind(kind.chars().take(ECHO_KIND_CHARS).collect()))?;
    let id = id.trim_start();
    if id.is_empty() {
        return Err(DenyLineError::EmptyId(kind));
    }
    if id.contains(char::is_whitespace) {
        return Err(DenyLineError::SpaceInId(kind));
    }
    Ok(DenyEntry {
        kind,
        id: id.to_owned(),
    })
}

#[cfg(test)]
mod tests;
