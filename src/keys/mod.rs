//! The verification keys: loading them from the keys directory, and the
//! one place that holds the set currently in force.
//!
//! ## The model
//!
//! Keys live as files directly in one directory (not recursive, so
//! `keys/tls/` and any other subdirectory is ignored):
//!
//! - `{kid}.b64`: an HMAC secret as base64 text, see [`decode_secret`]. The
//!   key id is the file stem; the key allows HS256, and HS384 and HS512 as
//!   far as the secret is long enough ([`ShortSecret`]: at least 32 bytes,
//!   48 for HS384, 64 for HS512).
//! - `{name}.json`: a JWK set (RFC 7517, `{"keys": [...]}`) holding RSA,
//!   EC P-256/P-384, OKP Ed25519 and `oct` keys, see [`parse_jwks`]. The key
//!   id is the JWK's `kid`, or `{name}#{index}` when it has none.
//!
//! Dotfiles and `*.tmp` files are ignored, so writing `.x.tmp` and renaming
//! it into place is an atomic drop. Every other name (`README`) is ignored
//! too, except `revoked`, the deny list. Symbolic links are followed,
//! because that is how Kubernetes mounts secrets.
//!
//! A load never fails because of one file. Only an unreadable directory is
//! an error ([`KeyDirError`]); a bad file, a bad key inside a JWK set, a
//! key id defined twice or a malformed deny-list line is a [`LoadIssue`] in
//! the [`LoadReport`], and everything else stays in force. A key id defined
//! by several files is taken from the file whose name sorts first, so the
//! outcome never depends on directory order. A file holding an HMAC secret
//! that others, or a group other than the gateway's own, can read is
//! loaded with a [`LoadWarning`].
//!
//! [`KeyStore::reload`] is built for a directory that is being edited while
//! the gateway runs: a file that now fails to load keeps the keys of its
//! last good version until a good version arrives (a deny list that cannot
//! be read keeps its last entries), while a file that is gone takes its
//! keys (or entries) with it. Either way the new [`KeySet`] replaces the old
//! one atomically; a connection verifies against the snapshot it took.
//!
//! Nothing here logs by itself: [`LoadReport::log`] does, when the caller
//! decides to (the gateway at start and on reload; `jwtgate mint` may not
//! want to).
//!
//! The deny list, `revoked`, is loaded and swapped with the keys, so a
//! reload never pairs new keys with an old deny list (see [`DenyList`]).
//!
//! One file per job: `set.rs` holds the key model ([`Key`], [`KeySet`]),
//! `secret.rs` decodes `.b64` text, `jwk.rs` turns JWK sets into keys,
//! `deny.rs` parses the deny list, `load.rs` reads the directory into a
//! [`KeySet`], and `report.rs` says what a load found. This file holds the
//! store; the public items of the others are re-exported here, so callers
//! name them `keys::...`.

// Untrusted input (the keys directory may hold anything; the lints cover the
// submodules too): fail with an error, never a panic. Tests are exempt
// through clippy.toml; an exception in this code carries an `#[allow]`
// saying why it cannot fail. See "Robustness" in the crate docs.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod deny;
mod jwk;
mod load;
mod report;
mod secret;
mod set;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

pub use deny::{
    BadDenyLine, DENY_LIST_FILE, DenyEntry, DenyKind, DenyLineError, DenyList, parse_deny_list,
};
pub use jwk::{JwkError, JwksError, ParsedJwks, SkippedJwk, parse_jwks};
pub use load::{KeyDirError, MAX_KEY_FILE_BYTES};
pub use report::{Concern, FileError, LoadIssue, LoadReport, LoadWarning, Problem};
pub use secret::{SecretError, ShortSecret, decode_secret};
pub use set::{Key, KeySet};

use load::load;

/// Owns the key set in force and the directory it comes from.
#[derive(Debug)]
pub struct KeyStore {
    dir: PathBuf,
    current: ArcSwap<KeySet>,
    /// Two reloads racing (file watcher and SIGHUP) would each build on the
    /// same previous set; serializing them keeps the fallback chain intact.
    reload_lock: Mutex<()>,
}

impl KeyStore {
    /// Loads every key file in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<(KeyStore, LoadReport), KeyDirError> {
        let dir = dir.into();
        let (set, report) = load(&dir, &KeySet::default())?;
        let store = KeyStore {
            dir,
            current: ArcSwap::from_pointee(set),
            reload_lock: Mutex::new(()),
        };
        Ok((store, report))
    }

    /// The set in force now. Cheap: one atomic reference count.
    pub fn snapshot(&self) -> Arc<KeySet> {
        self.current.load_full()
    }

    /// Re-reads the directory and swaps the new set in. A file that fails
    /// to load keeps the keys of its previous good version; a removed file
    /// loses its keys. When the directory itself cannot be read, the set in
    /// force is left alone.
    pub fn reload(&self) -> Result<LoadReport, KeyDirError> {
        // The guarded data is `()`, so a panic elsewhere cannot have left it
        // inconsistent.
        let _guard = self
            .reload_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let previous = self.current.load();
        let (set, report) = load(&self.dir, &previous)?;
        self.current.store(Arc::new(set));
        Ok(report)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Key material for tests, here, in `token` and in the integration tests
/// (which include the file with `#[path]`).
#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
