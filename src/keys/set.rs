//! The key model: one checked [`Key`], and the immutable [`KeySet`] a
//! load builds and a connection verifies against. Kept apart from the
//! store in `mod.rs` so that the loader and the JWK parser, which build
//! keys and sets, need nothing from the module that re-exports them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

use super::deny::DenyList;
use super::secret::{self, ShortSecret};

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
    pub(super) fn hmac(
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

    pub(super) fn public(
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
    pub(super) by_kid: BTreeMap<String, Arc<Key>>,
    /// Every file that contributed, with all of its keys (also those that
    /// lost a key id clash). The next reload falls back on these when a
    /// file turns bad.
    pub(super) files: BTreeMap<PathBuf, KeyFile>,
    /// Shared with the next set when the file cannot be read then.
    pub(super) deny: Arc<DenyList>,
}

#[derive(Debug, Clone)]
pub(super) struct KeyFile {
    pub(super) kind: FileKind,
    pub(super) modified: SystemTime,
    pub(super) keys: Vec<Arc<Key>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileKind {
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

    /// When the file `key` came from was last modified, as loaded.
    pub fn modified(&self, key: &Key) -> Option<SystemTime> {
        self.files.get(key.source()).map(|file| file.modified)
    }

    /// The deny list loaded with these keys.
    pub fn deny_list(&self) -> &DenyList {
        &self.deny
    }
}
