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
//! One file per job: `secret.rs` decodes `.b64` text, `jwk.rs` turns JWK
//! sets into keys, `deny.rs` parses the deny list, `load.rs` reads the
//! directory into a [`KeySet`], and `report.rs` says what a load found.
//! This file holds the key model and the store; the public items of the
//! others are re-exported here, so callers name them `keys::...`.

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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

pub use deny::{
    BadDenyLine, DENY_LIST_FILE, DenyEntry, DenyKind, DenyLineError, DenyList, parse_deny_list,
};
pub use jwk::{JwkError, JwksError, ParsedJwks, SkippedJwk, parse_jwks};
pub use load::{KeyDirError, MAX_KEY_FILE_BYTES};
pub use report::{Concern, FileError, LoadIssue, LoadReport, LoadWarning, Problem};
pub use secret::{SecretError, ShortSecret, decode_secret};

use load::load;

/// One verification key.
///
/// A key only exists fully checked: its allowed algorithms are never empty
/// and always belong to the family of its decoding key, and only HMAC keys
/// carry a signing key.
#[derive(Debug)]
pub struct Key {
    id: String,
    source: PathBuf,
    algorithms: &'static [Algorithm],
    decoding: DecodingKey,
    signing: Option<EncodingKey>,
}

impl Key {
    /// An HMAC key for those of `allowed` its secret is long enough for;
    /// none is an error.
    fn hmac(
        id: String,
        source: &Path,
        secret: &[u8],
        allowed: &'static [Algorithm],
    ) -> Result<Key, ShortSecret> {
        Ok(Key {
            id,
            source: source.to_path_buf(),
            algorithms: secret::usable_algorithms(secret.len(), allowed)?,
            decoding: DecodingKey::from_secret(secret),
            signing: Some(EncodingKey::from_secret(secret)),
        })
    }

    fn public(
        id: String,
        source: &Path,
        algorithms: &'static [Algorithm],
        decoding: DecodingKey,
    ) -> Key {
        Key {
            id,
            source: source.to_path_buf(),
            algorithms,
            decoding,
            signing: None,
        }
    }

    /// The key id a token names in its `kid` header.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The file the key was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The signature algorithms this key may verify.
    pub fn algorithms(&self) -> &'static [Algorithm] {
        self.algorithms
    }

    /// Whether a token signed with `alg` may be verified with this key.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }

    /// The key as jsonwebtoken verifies with it.
    pub fn decoding_key(&self) -> &DecodingKey {
        &self.decoding
    }

    /// The secret as a signing key; `Some` exactly for HMAC keys.
    pub fn signing_key(&self) -> Option<&EncodingKey> {
        self.signing.as_ref()
    }
}

/// An immutable set of keys, indexed by key id, with the deny list loaded
/// along with them. `KeySet::default()` is the empty set.
#[derive(Debug, Default)]
pub struct KeySet {
    by_kid: BTreeMap<String, Arc<Key>>,
    /// Every file that contributed, with all of its keys (also those that
    /// lost a key id clash). The next reload falls back on these when a
    /// file turns bad.
    files: BTreeMap<PathBuf, KeyFile>,
    /// Shared with the next set when the file cannot be read then.
    deny: Arc<DenyList>,
}

#[derive(Debug, Clone)]
struct KeyFile {
    kind: FileKind,
    modified: SystemTime,
    keys: Vec<Arc<Key>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileKind {
    Secret,
    Jwks,
}

impl KeySet {
    /// The key with this id.
    pub fn get(&self, kid: &str) -> Option<&Key> {
        self.by_kid.get(kid).map(|key| &**key)
    }

    /// All keys in force, in key id order.
    pub fn iter(&self) -> impl Iterator<Item = &Key> {
        self.by_kid.values().map(|key| &**key)
    }

    pub fn len(&self) -> usize {
        self.by_kid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty()
    }

    /// The keys a token without `kid` may have been signed with: those
    /// allowing `alg`, in key id order.
    pub fn candidates(&self, alg: Algorithm) -> impl Iterator<Item = &Key> {
        self.iter().filter(move |key| key.allows(alg))
    }

    /// The key to mint development tokens with: the key of the most
    /// recently modified `.b64` file (of two files modified in the same
    /// instant, the one whose name sorts first). A key whose id another
    /// file took is not in force, and so not a candidate.
    pub fn newest_hmac(&self) -> Option<&Key> {
        self.files
            .iter()
            .filter(|(_, file)| file.kind == FileKind::Secret)
            .flat_map(|(path, file)| file.keys.iter().map(move |key| (path, file.modified, key)))
            .filter(|(_, _, key)| self.is_in_force(key))
            .max_by(|(path_a, time_a, _), (path_b, time_b, _)| {
                time_a.cmp(time_b).then_with(|| path_b.cmp(path_a))
            })
            .map(|(_, _, key)| &**key)
    }

    fn is_in_force(&self, key: &Arc<Key>) -> bool {
        self.by_kid
            .get(key.id())
            .is_some_and(|in_force| Arc::ptr_eq(in_force, key))
    }

    /// The deny list loaded with these keys.
    pub fn deny_list(&self) -> &DenyList {
        &self.deny
    }
}

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
