//! What a load of the keys directory found: how many keys are in force,
//! each file, key or deny-list line that was left out and why (an issue),
//! and each file that was loaded but should be fixed (a warning), for the
//! caller to log ([`LoadReport::log`]) or print.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::deny::BadDenyLine;
use super::jwk::{JwksError, SkippedJwk};
use super::secret::{SecretError, ShortSecret};

/// What one load of the keys directory found.
#[derive(Debug)]
#[must_use = "a load report lists keys that were left out; log it"]
pub struct LoadReport {
    pub dir: PathBuf,
    /// Keys in force after the load.
    pub keys: usize,
    /// Files that provided them (including files kept from before).
    pub files: usize,
    /// Deny-list entries in force after the load.
    pub revoked: usize,
    /// What was left out.
    pub issues: Vec<LoadIssue>,
    /// What was loaded but should be fixed.
    pub warnings: Vec<LoadWarning>,
}

impl LoadReport {
    /// Logs the outcome: one `warn` per issue, with the file and the reason
    /// (an `error` for a deny list that cannot be read, since tokens it
    /// revokes may then be accepted), one `warn` per warning, and an
    /// `error` when no key at all is in force (every CONNECT will be
    /// refused), otherwise an `info` summary.
    pub fn log(&self) {
        for issue in &self.issues {
            let (file, reason) = (issue.file.display(), &issue.problem);
            if matches!(issue.problem, Problem::DenyList { .. }) {
                tracing::error!(%file, %reason, "keys directory problem");
            } else {
                tracing::warn!(%file, %reason, "keys directory problem");
            }
        }
        for warning in &self.warnings {
            let (file, concern) = (warning.file.display(), &warning.concern);
            tracing::warn!(%file, %concern, "keys directory warning");
        }
        if self.keys == 0 {
            tracing::error!(
                dir = %self.dir.display(),
                "no verification keys loaded: every token will be refused"
            );
        } else {
            tracing::info!(
                dir = %self.dir.display(),
                keys = self.keys,
                files = self.files,
                revoked = self.revoked,
                "verification keys loaded"
            );
        }
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} keys from {} files in {}, {} deny-list entries",
            self.keys,
            self.files,
            self.dir.display(),
            self.revoked
        )?;
        for issue in &self.issues {
            write!(f, "\n  {issue}")?;
        }
        for warning in &self.warnings {
            write!(f, "\n  warning: {warning}")?;
        }
        Ok(())
    }
}

/// A file that was loaded in full but should be fixed.
#[derive(Debug)]
pub struct LoadWarning {
    pub file: PathBuf,
    pub concern: Concern,
}

impl fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.concern)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concern {
    /// The file holds an HMAC secret, and its permission bits (`mode`, of
    /// the file a symbolic link leads to) let others at it, or a group
    /// other than the gateway's own (`foreign_group`).
    SecretNotPrivate { mode: u32, foreign_group: bool },
}

impl fmt::Display for Concern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Concern::SecretNotPrivate {
                mode,
                foreign_group,
            } => {
                let who = match (foreign_group && mode & 0o070 != 0, mode & 0o007 != 0) {
                    (true, true) => "another group and others",
                    (true, false) => "another group",
                    (false, _) => "others",
                };
                write!(
                    f,
                    "holds an HMAC secret, and {who} can access it (mode {mode:04o}): \
                     whoever reads it can sign tokens; loaded, but it should be mode 0600 \
                     (or 0640 with jwtgate's own group)"
                )
            }
        }
    }
}

/// Something in one file that was left out.
#[derive(Debug)]
pub struct LoadIssue {
    pub file: PathBuf,
    pub problem: Problem,
}

impl fmt::Display for LoadIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.problem)
    }
}

#[derive(Debug)]
pub enum Problem {
    /// The file as it is now was left out. `kept_previous` counts the keys
    /// of its last good version that stay loaded (0 when there was none).
    File {
        error: FileError,
        kept_previous: usize,
    },
    /// One key of a JWK set was left out; the rest of the file is in force.
    Key(SkippedJwk),
    /// This file defines a key id that `kept_from` (whose name sorts first)
    /// already defines; this file's key with that id was left out.
    DuplicateKid { kid: String, kept_from: PathBuf },
    /// The deny list as it is now could not be read. `kept_previous`
    /// counts the entries of its last good version, which stay in force.
    DenyList {
        error: FileError,
        kept_previous: usize,
    },
    /// One line of the deny list was left out; its other entries are in
    /// force.
    DenyLine(BadDenyLine),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::File {
                error,
                kept_previous: 0,
            } => write!(f, "{error}; file left out"),
            Problem::File {
                error,
                kept_previous,
            } => write!(
                f,
                "{error}; its previous version ({kept_previous} keys) stays in force"
            ),
            Problem::Key(skipped) => write!(f, "{skipped}"),
            Problem::DuplicateKid { kid, kept_from } => write!(
                f,
                "key id {kid:?} is already defined by {}; this file's key left out",
                kept_from.display()
            ),
            Problem::DenyList {
                error,
                kept_previous: 0,
            } => write!(f, "{error}; nothing is revoked until it can be read"),
            Problem::DenyList {
                error,
                kept_previous,
            } => write!(
                f,
                "{error}; its previous version ({kept_previous} entries) stays in force"
            ),
            Problem::DenyLine(bad) => write!(f, "{bad}"),
        }
    }
}

/// Why a whole key file was left out.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read: {0}")]
    Read(#[source] io::Error),
    /// `limit` is the loader's, carried here so that this report needs
    /// nothing from the loader.
    #[error("larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("not UTF-8 text")]
    NotUtf8,
    #[error("the file name is not UTF-8, so it cannot name a key")]
    NameNotUtf8,
    #[error("bad HMAC secret: {0}")]
    Secret(#[from] SecretError),
    #[error(transparent)]
    ShortSecret(#[from] ShortSecret),
    #[error(transparent)]
    Jwks(#[from] JwksError),
}
