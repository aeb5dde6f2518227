//! The verification keys: loading them from the keys directory, and the
//! one place that holds the set currently in force.
//!
//! ## The model
//!
//! Keys live as files directly in one directory (not recursive, so
//! `keys/tls/` and any other subdirectory is ignored):
//!
//! - `{kid}.b64`: an HMAC secret as base64 text, see [`decode_secret`]. The
//!   key id is the file stem; the key allows HS256, HS384 and HS512.
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
//! outcome never depends on directory order.
//!
//! [`KeyStore::reload`] is built for a directory that is being edited while
//! the gateway runs: a file that now fails to load keeps the keys of its
//! last good version until a good version arrives (a deny list that cannot
//! be read keeps its last entries), while a file that is gone takes its
//! keys (or entries) with it. Either way the new [`KeySet`] replaces the old
//! one atomically; a connection verifies against the snapshot it took.
//!
//! Keys are parsed and checked (curve points, RSA sizes, base64) here, once,
//! so that a broken key is reported when it is loaded rather than surfacing
//! as a bad signature on every CONNECT.
//!
//! Nothing here logs by itself: [`LoadReport::log`] does, when the caller
//! decides to (the gateway at start and on reload; `jwtgate mint` may not
//! want to).
//!
//! ## The deny list
//!
//! `revoked` lists tokens that are refused although their signature holds,
//! one `jti:<id>`, `sub:<id>` or `kid:<id>` per line, with `#` comments
//! (see [`parse_deny_list`]). It is part of the [`KeySet`], loaded and
//! swapped with the keys, so a reload never pairs new keys with an old deny
//! list. [`crate::token::verify`] consults it once a signature has held;
//! since every live connection re-verifies its token after a reload, adding
//! an entry also closes the connections it names.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use aws_lc_rs::error::KeyRejected;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ED25519, EcdsaVerificationAlgorithm,
    ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD_INDIFFERENT;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::Deserialize;

/// Key files are small, and so is a deny list (1 MiB holds some 25,000
/// `jti:` entries); anything larger is a mistake (or an attack on the
/// loader), and is refused without being read to the end.
pub const MAX_KEY_FILE_BYTES: u64 = 1024 * 1024;

/// The RSA moduli aws-lc verifies signatures with.
const RSA_MODULUS_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

const HMAC_ALGORITHMS: &[Algorithm] = &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

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
    fn hmac(id: String, source: &Path, secret: &[u8], algorithms: &'static [Algorithm]) -> Key {
        Key {
            id,
            source: source.to_path_buf(),
            algorithms,
            decoding: DecodingKey::from_secret(secret),
            signing: Some(EncodingKey::from_secret(secret)),
        }
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

/// The keys directory itself could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyDirError {
    #[error("cannot read key directory {}: {source}", dir.display())]
    Read { dir: PathBuf, source: io::Error },
}

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
    pub issues: Vec<LoadIssue>,
}

impl LoadReport {
    /// Logs the outcome: one `warn` per issue, with the file and the reason
    /// (an `error` for a deny list that cannot be read, since tokens it
    /// revokes may then be accepted), and an `error` when no key at all is
    /// in force (every CONNECT will be refused), otherwise an `info`
    /// summary.
    pub fn log(&self) {
        for issue in &self.issues {
            let (file, reason) = (issue.file.display(), &issue.problem);
            if matches!(issue.problem, Problem::DenyList { .. }) {
                tracing::error!(%file, %reason, "keys directory problem");
            } else {
                tracing::warn!(%file, %reason, "keys directory problem");
            }
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
        Ok(())
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
    #[error("larger than {MAX_KEY_FILE_BYTES} bytes")]
    TooLarge,
    #[error("not UTF-8 text")]
    NotUtf8,
    #[error("the file name is not UTF-8, so it cannot name a key")]
    NameNotUtf8,
    #[error("bad HMAC secret: {0}")]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Jwks(#[from] JwksError),
}

/// Why the text of a `.b64` file is not a usable secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("no secret: the text is empty")]
    Empty,
    #[error("{ch:?} at byte {offset} is not a base64 character")]
    InvalidCharacter { offset: usize, ch: char },
    #[error("base64 data at byte {offset} follows '=' padding")]
    DataAfterPadding { offset: usize },
    #[error("the base64 text has one character too many or too few (a lone final character)")]
    DanglingCharacter,
    #[error("base64: {0}")]
    Base64(base64::DecodeError),
}

/// A file that is not a JWK set at all.
#[derive(Debug, thiserror::Error)]
#[error("not a JWK set ({{\"keys\": [...]}}): {0}")]
pub struct JwksError(#[source] serde_json::Error);

/// A key of a JWK set that was left out, and why.
#[derive(Debug)]
pub struct SkippedJwk {
    /// Position in the `keys` array, from 0.
    pub index: usize,
    pub kid: Option<String>,
    pub error: JwkError,
}

impl fmt::Display for SkippedJwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kid {
            Some(kid) => write!(f, "key #{} (kid {kid:?}): {}", self.index, self.error),
            None => write!(f, "key #{}: {}", self.index, self.error),
        }
    }
}

/// Why one JWK was left out.
#[derive(Debug, thiserror::Error)]
pub enum JwkError {
    #[error("not a JWK: {0}")]
    NotAJwk(#[source] serde_json::Error),
    #[error("\"use\" is {0:?}, not \"sig\"")]
    NotForSignatures(String),
    #[error("\"key_ops\" does not include \"verify\"")]
    NoVerifyOperation,
    #[error("\"kid\" is empty")]
    EmptyKid,
    #[error("unsupported key type {0:?} (supported: RSA, EC, OKP, oct)")]
    UnsupportedKeyType(String),
    #[error("unsupported {kty} curve {crv:?}")]
    UnsupportedCurve { kty: &'static str, crv: String },
    #[error("missing parameter {0:?}")]
    MissingParameter(&'static str),
    #[error("parameter {param:?} is not base64url: {error}")]
    BadBase64 {
        param: &'static str,
        error: base64::DecodeError,
    },
    #[error("parameter {param:?} is {found} bytes long, {expected} expected")]
    WrongLength {
        param: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("unsupported signature algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("\"alg\" is {alg:?}, not usable with this {kind} key")]
    AlgorithmMismatch { alg: Algorithm, kind: &'static str },
    #[error("the RSA modulus has {0} bits; 2048 to 8192 are supported")]
    RsaKeySize(usize),
    #[error("the secret \"k\" is empty")]
    EmptySecret,
    #[error("not a valid public key: {0}")]
    InvalidPublicKey(#[source] KeyRejected),
}

/// Decodes the base64 text of a `.b64` file.
///
/// As lenient as the Node.js code that shares these files (it decodes with
/// `Buffer.from(text, 'base64')`) wherever leniency is unambiguous: the
/// standard and URL-safe alphabets (even mixed), padding or none, whitespace
/// and line breaks anywhere, a byte order mark. Where Node would silently
/// drop input (a character outside both alphabets, data after `=`, a lone
/// final character) this refuses instead, because a secret that decodes to
/// something other than what the operator meant fails every token.
pub fn decode_secret(text: &str) -> Result<Vec<u8>, SecretError> {
    // Padding is stripped before decoding; unused low bits are allowed, as
    // Node allows them.
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_padding_mode(DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );

    let mut symbols = String::with_capacity(text.len());
    let mut padded = false;
    for (offset, ch) in text.char_indices() {
        let symbol = match ch {
            c if c.is_ascii_whitespace() || c == '\u{feff}' => continue,
            '=' => {
                padded = true;
                continue;
            }
            'A'..='Z' | 'a'..='z' | '0'..='9' | '+' | '/' => ch,
            '-' => '+',
            '_' => '/',
            _ => return Err(SecretError::InvalidCharacter { offset, ch }),
        };
        if padded {
            return Err(SecretError::DataAfterPadding { offset });
        }
        symbols.push(symbol);
    }
    if symbols.is_empty() {
        return Err(SecretError::Empty);
    }
    if symbols.len() % 4 == 1 {
        return Err(SecretError::DanglingCharacter);
    }
    LENIENT.decode(&symbols).map_err(SecretError::Base64)
}

/// The keys of one JWK set, and those of its keys that were left out.
#[derive(Debug)]
pub struct ParsedJwks {
    pub keys: Vec<Key>,
    pub skipped: Vec<SkippedJwk>,
}

/// Parses the text of a JWK set file. `source` is recorded in each key and
/// its stem names keys without `kid` (`{stem}#{index}`); nothing is read
/// from it.
///
/// A key that cannot be used is skipped and reported, never fatal; only
/// text that is not a `{"keys": [...]}` object is an error.
pub fn parse_jwks(text: &str, source: &Path) -> Result<ParsedJwks, JwksError> {
    #[derive(Deserialize)]
    struct RawJwks {
        keys: Vec<serde_json::Value>,
    }

    let raw: RawJwks = serde_json::from_str(text).map_err(JwksError)?;
    let stem = source
        .file_stem()
        .map(|stem| stem.to_string_lossy())
        .unwrap_or_default();
    let mut parsed = ParsedJwks {
        keys: Vec::with_capacity(raw.keys.len()),
        skipped: Vec::new(),
    };
    for (index, value) in raw.keys.iter().enumerate() {
        let jwk = match RawJwk::deserialize(value) {
            Ok(jwk) => jwk,
            Err(error) => {
                parsed.skipped.push(SkippedJwk {
                    index,
                    kid: kid_of(value),
                    error: JwkError::NotAJwk(error),
                });
                continue;
            }
        };
        match jwk.to_key(|| format!("{stem}#{index}"), source) {
            Ok(key) => parsed.keys.push(key),
            Err(error) => parsed.skipped.push(SkippedJwk {
                index,
                kid: jwk.kid,
                error,
            }),
        }
    }
    Ok(parsed)
}

/// The `kid` of a JWK that did not parse, to name it in the report.
fn kid_of(value: &serde_json::Value) -> Option<String> {
    value.get("kid")?.as_str().map(str::to_owned)
}

/// The members of a JWK this loader reads; the rest (`x5c`, private key
/// members, ...) is ignored.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default, rename = "use")]
    public_key_use: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    k: Option<String>,
}

impl RawJwk {
    fn to_key(&self, default_id: impl FnOnce() -> String, source: &Path) -> Result<Key, JwkError> {
        if let Some(public_key_use) = &self.public_key_use
            && public_key_use != "sig"
        {
            return Err(JwkError::NotForSignatures(public_key_use.clone()));
        }
        if let Some(key_ops) = &self.key_ops
            && !key_ops.iter().any(|op| op == "verify")
        {
            return Err(JwkError::NoVerifyOperation);
        }
        let id = match &self.kid {
            Some(kid) if kid.is_empty() => return Err(JwkError::EmptyKid),
            Some(kid) => kid.clone(),
            None => default_id(),
        };
        let alg = self
            .alg
            .as_deref()
            .map(|alg| {
                Algorithm::from_str(alg).map_err(|_| JwkError::UnsupportedAlgorithm(alg.to_owned()))
            })
            .transpose()?;

        match self.kty.as_str() {
            "RSA" => {
                let algorithms = restrict(RSA_ALGORITHMS, alg, "RSA")?;
                let n = strip_leading_zeros(self.param("n", &self.n)?);
                let e = strip_leading_zeros(self.param("e", &self.e)?);
                let bits = bit_length(&n);
                if !RSA_MODULUS_BITS.contains(&bits) {
                    return Err(JwkError::RsaKeySize(bits));
                }
                RsaPublicKeyComponents { n: &n, e: &e }
                    .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
                    .map_err(JwkError::InvalidPublicKey)?;
                let decoding = DecodingKey::from_rsa_raw_components(&n, &e);
                Ok(Key::public(id, source, algorithms, decoding))
            }
            "EC" => {
                let (curve, kind, len) = match self.crv.as_deref() {
                    Some("P-256") => (Curve::P256, "EC P-256", 32),
                    Some("P-384") => (Curve::P384, "EC P-384", 48),
                    other => return Err(unsupported_curve("EC", other)),
                };
                let algorithms = restrict(curve.algorithms(), alg, kind)?;
                let x = self.sized_param("x", &self.x, len)?;
                let y = self.sized_param("y", &self.y, len)?;
                // jsonwebtoken verifies EC signatures against the
                // uncompressed SEC1 point, which it keeps in its "DER" slot.
                let point = [&[0x04][..], &x, &y].concat();
                ParsedPublicKey::new(curve.verification(), &point)
                    .map_err(JwkError::InvalidPublicKey)?;
                Ok(Key::public(
                    id,
                    source,
                    algorithms,
                    DecodingKey::from_ec_der(&point),
                ))
            }
            "OKP" => {
                if self.crv.as_deref() != Some("Ed25519") {
                    return Err(unsupported_curve("OKP", self.crv.as_deref()));
                }
                let algorithms = restrict(&[Algorithm::EdDSA], alg, "Ed25519")?;
                let x = self.sized_param("x", &self.x, 32)?;
                ParsedPublicKey::new(&ED25519, &x).map_err(JwkError::InvalidPublicKey)?;
                // As for EC: the raw public key, in the "DER" slot.
                Ok(Key::public(
                    id,
                    source,
                    algorithms,
                    DecodingKey::from_ed_der(&x),
                ))
            }
            "oct" => {
                let algorithms = restrict(HMAC_ALGORITHMS, alg, "oct")?;
                let secret = self.param("k", &self.k)?;
                if secret.is_empty() {
                    return Err(JwkError::EmptySecret);
                }
                Ok(Key::hmac(id, source, &secret, algorithms))
            }
            other => Err(JwkError::UnsupportedKeyType(other.to_owned())),
        }
    }

    fn param(&self, name: &'static str, value: &Option<String>) -> Result<Vec<u8>, JwkError> {
        let value = value.as_deref().ok_or(JwkError::MissingParameter(name))?;
        URL_SAFE_NO_PAD_INDIFFERENT
            .decode(value)
            .map_err(|error| JwkError::BadBase64 { param: name, error })
    }

    fn sized_param(
        &self,
        name: &'static str,
        value: &Option<String>,
        expected: usize,
    ) -> Result<Vec<u8>, JwkError> {
        let bytes = self.param(name, value)?;
        if bytes.len() != expected {
            return Err(JwkError::WrongLength {
                param: name,
                expected,
                found: bytes.len(),
            });
        }
        Ok(bytes)
    }
}

#[derive(Clone, Copy)]
enum Curve {
    P256,
    P384,
}

impl Curve {
    fn algorithms(self) -> &'static [Algorithm] {
        match self {
            Curve::P256 => &[Algorithm::ES256],
            Curve::P384 => &[Algorithm::ES384],
        }
    }

    fn verification(self) -> &'static EcdsaVerificationAlgorithm {
        match self {
            Curve::P256 => &ECDSA_P256_SHA256_FIXED,
            Curve::P384 => &ECDSA_P384_SHA384_FIXED,
        }
    }
}

fn unsupported_curve(kty: &'static str, crv: Option<&str>) -> JwkError {
    match crv {
        Some(crv) => JwkError::UnsupportedCurve {
            kty,
            crv: crv.to_owned(),
        },
        None => JwkError::MissingParameter("crv"),
    }
}

/// The algorithms a key may verify: the one its `alg` names, which must
/// suit the key, or else every algorithm the key type supports.
fn restrict(
    supported: &'static [Algorithm],
    alg: Option<Algorithm>,
    kind: &'static str,
) -> Result<&'static [Algorithm], JwkError> {
    let Some(alg) = alg else {
        return Ok(supported);
    };
    supported
        .iter()
        .position(|candidate| *candidate == alg)
        .map(|at| &supported[at..=at])
        .ok_or(JwkError::AlgorithmMismatch { alg, kind })
}

/// RFC 7518 forbids leading zero octets in `n` and `e`, but some
/// producers emit them (a sign byte from a DER integer), and aws-lc
/// refuses them; the value is the same without.
fn strip_leading_zeros(bytes: Vec<u8>) -> Vec<u8> {
    match bytes.iter().position(|byte| *byte != 0) {
        Some(0) => bytes,
        Some(first) => bytes[first..].to_vec(),
        None => Vec::new(),
    }
}

fn bit_length(big_endian: &[u8]) -> usize {
    match big_endian.first() {
        Some(first) => (big_endian.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
        None => 0,
    }
}

/// Loads the directory. `previous` supplies the last good version of files
/// that fail now.
fn load(dir: &Path, previous: &KeySet) -> Result<(KeySet, LoadReport), KeyDirError> {
    let mut files = BTreeMap::new();
    let mut issues = Vec::new();
    for (path, kind) in key_files(dir)? {
        match read_key_file(&path, kind) {
            Ok(Some((file, skipped))) => {
                issues.extend(skipped.into_iter().map(|skipped| LoadIssue {
                    file: path.clone(),
                    problem: Problem::Key(skipped),
                }));
                files.insert(path, file);
            }
            // Removed between listing and reading: as good as never seen.
            Ok(None) => {}
            Err(error) => {
                let kept = previous.files.get(&path).cloned();
                let kept_previous = kept.as_ref().map_or(0, |file| file.keys.len());
                if let Some(kept) = kept {
                    files.insert(path.clone(), kept);
                }
                issues.push(LoadIssue {
                    file: path,
                    problem: Problem::File {
                        error,
                        kept_previous,
                    },
                });
            }
        }
    }

    // `files` iterates in path order, which makes the first file to define
    // a key id the one whose name sorts first.
    let mut by_kid: BTreeMap<String, Arc<Key>> = BTreeMap::new();
    for (path, file) in &files {
        for key in &file.keys {
            if let Some(kept) = by_kid.get(key.id()) {
                issues.push(LoadIssue {
                    file: path.clone(),
                    problem: Problem::DuplicateKid {
                        kid: key.id().to_owned(),
                        kept_from: kept.source().to_path_buf(),
                    },
                });
            } else {
                by_kid.insert(key.id().to_owned(), Arc::clone(key));
            }
        }
    }

    let deny = load_deny_list(dir, &previous.deny, &mut issues);
    let report = LoadReport {
        dir: dir.to_path_buf(),
        keys: by_kid.len(),
        files: files.len(),
        revoked: deny.len(),
        issues,
    };
    Ok((
        KeySet {
            by_kid,
            files,
            deny,
        },
        report,
    ))
}

/// Loads `dir/revoked`. No file is an empty list; a file that cannot be
/// read keeps `previous`, as a broken key file keeps its keys, so that a
/// bad write never un-revokes anything.
fn load_deny_list(
    dir: &Path,
    previous: &Arc<DenyList>,
    issues: &mut Vec<LoadIssue>,
) -> Arc<DenyList> {
    let path = dir.join(DENY_LIST_FILE);
    match read_text(&path) {
        Ok(None) => Arc::default(),
        Ok(Some((text, _))) => {
            let (list, bad) = parse_deny_list(&text);
            issues.extend(bad.into_iter().map(|bad| LoadIssue {
                file: path.clone(),
                problem: Problem::DenyLine(bad),
            }));
            Arc::new(list)
        }
        Err(error) => {
            issues.push(LoadIssue {
                file: path,
                problem: Problem::DenyList {
                    error,
                    kept_previous: previous.len(),
                },
            });
            Arc::clone(previous)
        }
    }
}

/// The key files in `dir`, sorted by path.
fn key_files(dir: &Path) -> Result<Vec<(PathBuf, FileKind)>, KeyDirError> {
    let read_error = |source| KeyDirError::Read {
        dir: dir.to_path_buf(),
        source,
    };
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        let Some(name) = path.file_name() else {
            continue;
        };
        if name.as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let kind = match path.extension().and_then(|ext| ext.to_str()) {
            Some("b64") => FileKind::Secret,
            Some("json") => FileKind::Jwks,
            _ => continue,
        };
        found.push((path, kind));
    }
    found.sort_by(|(a, _), (b, _)| a.cmp(b));
    Ok(found)
}

type LoadedFile = (KeyFile, Vec<SkippedJwk>);

/// Reads a key file or the deny list as text, with its modification time;
/// `None` when it is gone or turned out not to be a regular file (a
/// directory named `x.json`).
fn read_text(path: &Path) -> Result<Option<(String, SystemTime)>, FileError> {
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(FileError::Read(error)),
    };
    if !metadata.is_file() {
        return Ok(None);
    }
    // Some filesystems keep no modification time; such files sort oldest.
    let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let mut bytes = Vec::new();
    match fs::File::open(path) {
        Ok(file) => file.take(MAX_KEY_FILE_BYTES + 1).read_to_end(&mut bytes),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => Err(error),
    }
    .map_err(FileError::Read)?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(FileError::TooLarge);
    }
    let text = String::from_utf8(bytes).map_err(|_| FileError::NotUtf8)?;
    Ok(Some((text, modified)))
}

/// Reads and parses one key file; `None` when [`read_text`] finds none.
fn read_key_file(path: &Path, kind: FileKind) -> Result<Option<LoadedFile>, FileError> {
    let Some((text, modified)) = read_text(path)? else {
        return Ok(None);
    };
    let (keys, skipped) = match kind {
        FileKind::Secret => {
            let id = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .ok_or(FileError::NameNotUtf8)?;
            let secret = decode_secret(&text)?;
            let key = Key::hmac(id.to_owned(), path, &secret, HMAC_ALGORITHMS);
            (vec![key], Vec::new())
        }
        FileKind::Jwks => {
            // Keys without kid are named after the file.
            if path.file_stem().and_then(|stem| stem.to_str()).is_none() {
                return Err(FileError::NameNotUtf8);
            }
            let parsed = parse_jwks(&text, path)?;
            (parsed.keys, parsed.skipped)
        }
    };
    let file = KeyFile {
        kind,
        modified,
        keys: keys.into_iter().map(Arc::new).collect(),
    };
    Ok(Some((file, skipped)))
}

/// Key material for tests, here, in `token` and in the integration tests
/// (which include the file with `#[path]`).
#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    // Tests panic on purpose when a fixture cannot be set up.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::testing::{b64url, ec_jwk, ed_jwk, jwks, rsa_jwk};
    use super::*;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use serde_json::json;
    use std::time::Duration;

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap();
    }

    fn open(dir: &Path) -> (KeyStore, LoadReport) {
        KeyStore::open(dir).unwrap()
    }

    fn kids(set: &KeySet) -> Vec<&str> {
        set.iter().map(Key::id).collect()
    }

    #[test]
    fn secret_in_every_base64_flavour() {
        let secret: Vec<u8> = (0u8..=255).rev().take(40).collect();
        let standard = STANDARD.encode(&secret);
        assert!(standard.contains('+') || standard.contains('/'));
        let wrapped: String = standard
            .as_bytes()
            .chunks(16)
            .map(|line| format!("  {}\r\n", String::from_utf8_lossy(line)))
            .collect();
        for text in [
            standard.clone(),
            URL_SAFE.encode(&secret),
            URL_SAFE_NO_PAD.encode(&secret),
            STANDARD_NO_PAD.encode(&secret),
            format!("\u{feff}{standard}\n"),
            format!("\n\t{standard}  \n\n"),
            wrapped,
        ] {
            assert_eq!(decode_secret(&text), Ok(secret.clone()), "{text:?}");
        }
    }

    #[test]
    fn secret_with_unused_bits_decodes_like_node() {
        // "QR" carries one byte (0x41) plus 4 unused bits that are not zero.
        assert_eq!(decode_secret("QR=="), Ok(vec![0x41]));
    }

    #[test]
    fn bad_secrets_say_why() {
        assert_eq!(decode_secret(""), Err(SecretError::Empty));
        assert_eq!(decode_secret(" \n=\n"), Err(SecretError::Empty));
        assert_eq!(
            decode_secret("abcd!efg"),
            Err(SecretError::InvalidCharacter { offset: 4, ch: '!' })
        );
        assert_eq!(
            decode_secret("QQ==QUFB"),
            Err(SecretError::DataAfterPadding { offset: 4 })
        );
        assert_eq!(decode_secret("QUFBQ"), Err(SecretError::DanglingCharacter));
    }

    #[test]
    fn b64_file_is_an_hmac_key_named_by_its_stem() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "device-fleet.b64",
            &STANDARD.encode(b"0123456789abcdef"),
        );
        let (store, report) = open(dir.path());
        assert!(report.issues.is_empty(), "{report}");
        assert_eq!(report.keys, 1);
        let set = store.snapshot();
        let key = set.get("device-fleet").unwrap();
        assert_eq!(key.algorithms(), HMAC_ALGORITHMS);
        assert_eq!(key.source(), dir.path().join("device-fleet.b64"));
        assert!(key.signing_key().is_some());
    }

    #[test]
    fn jwks_with_every_key_type() {
        let text = jwks(&[
            rsa_jwk("rsa"),
            ec_jwk("ec"),
            ed_jwk("ed"),
            json!({ "kty": "oct", "kid": "oct", "alg": "HS512", "k": b64url(b"secret") }),
            json!({ "kty": "EC", "crv": "P-384", "kid": "p384",
                    "x": b64url(&[0; 48]), "y": b64url(&[0; 48]) }),
        ]);
        let parsed = parse_jwks(&text, Path::new("idp.json")).unwrap();
        let by_id = |id: &str| parsed.keys.iter().find(|key| key.id() == id).unwrap();
        assert_eq!(by_id("rsa").algorithms(), RSA_ALGORITHMS);
        assert_eq!(by_id("ec").algorithms(), [Algorithm::ES256]);
        assert_eq!(by_id("ed").algorithms(), [Algorithm::EdDSA]);
        assert_eq!(by_id("oct").algorithms(), [Algorithm::HS512]);
        assert!(by_id("oct").signing_key().is_some());
        assert!(by_id("rsa").signing_key().is_none());
        // The all-zero point is not on P-384.
        assert_eq!(parsed.skipped.len(), 1);
        assert!(matches!(
            parsed.skipped[0].error,
            JwkError::InvalidPublicKey(_)
        ));
    }

    #[test]
    fn one_bad_key_does_not_spoil_the_file() {
        let mut short_rsa = rsa_jwk("short");
        short_rsa["n"] = json!(b64url(&[0xff; 128]));
        let mut mismatch = ec_jwk("mismatch");
        mismatch["alg"] = json!("RS256");
        let text = jwks(&[
            json!({ "kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB" }),
            json!({ "kty": "foo", "kid": "foo" }),
            json!({ "kty": "EC", "crv": "P-521", "x": "AA", "y": "AA" }),
            json!({ "kty": "EC", "crv": "P-256", "kid": "short-x", "x": "AAAA", "y": "AAAA" }),
            json!({ "kty": "oct", "kid": "no-k" }),
            json!({ "kty": "oct", "kid": 7, "k": "c2VjcmV0" }),
            json!({ "kty": "oct", "kid": "hs1", "alg": "HS1", "k": "c2VjcmV0" }),
            json!({ "kty": "oct", "kid": "ops", "key_ops": ["sign"], "k": "c2VjcmV0" }),
            short_rsa,
            mismatch,
            ed_jwk("good"),
        ]);
        let parsed = parse_jwks(&text, Path::new("/keys/idp.json")).unwrap();
        assert_eq!(
            parsed.keys.iter().map(Key::id).collect::<Vec<_>>(),
            ["good"]
        );
        let reasons: Vec<String> = parsed.skipped.iter().map(ToString::to_string).collect();
        let expected = [
            "key #0 (kid \"enc\"): \"use\" is \"enc\", not \"sig\"",
            "key #1 (kid \"foo\"): unsupported key type \"foo\" (supported: RSA, EC, OKP, oct)",
            "key #2: unsupported EC curve \"P-521\"",
            "key #3 (kid \"short-x\"): parameter \"x\" is 3 bytes long, 32 expected",
            "key #4 (kid \"no-k\"): missing parameter \"k\"",
            "key #5: not a JWK: invalid type: integer `7`, expected a string",
            "key #6 (kid \"hs1\"): unsupported signature algorithm \"HS1\"",
            "key #7 (kid \"ops\"): \"key_ops\" does not include \"verify\"",
            "key #8 (kid \"short\"): the RSA modulus has 1024 bits; 2048 to 8192 are supported",
            "key #9 (kid \"mismatch\"): \"alg\" is RS256, not usable with this EC P-256 key",
        ];
        assert_eq!(reasons, expected);
    }

    #[test]
    fn jwk_without_kid_is_named_after_file_and_index() {
        let mut key = ec_jwk("");
        key.as_object_mut().unwrap().remove("kid");
        let text = jwks(&[json!({ "kty": "oct", "k": "" }), key]);
        let parsed = parse_jwks(&text, Path::new("/keys/idp.json")).unwrap();
        assert_eq!(parsed.keys[0].id(), "idp#1");
        assert!(matches!(parsed.skipped[0].error, JwkError::EmptySecret));
    }

    #[test]
    fn rsa_components_with_leading_zero_are_accepted() {
        let mut key = rsa_jwk("rsa");
        let n = URL_SAFE_NO_PAD.decode(key["n"].as_str().unwrap()).unwrap();
        key["n"] = json!(b64url(&[&[0][..], &n].concat()));
        let parsed = parse_jwks(&jwks(&[key]), Path::new("a.json")).unwrap();
        assert_eq!(parsed.keys.len(), 1, "{:?}", parsed.skipped);
    }

    #[test]
    fn file_that_is_not_a_jwks_is_a_file_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "broken.json", "{\"keys\": [");
        write(dir.path(), "object.json", "{\"kty\": \"oct\"}");
        write(dir.path(), "ok.b64", "c2VjcmV0");
        let (store, report) = open(dir.path());
        assert_eq!(kids(&store.snapshot()), ["ok"]);
        assert_eq!(report.issues.len(), 2, "{report}");
        for issue in &report.issues {
            assert!(matches!(
                issue.problem,
                Problem::File {
                    error: FileError::Jwks(_),
                    kept_previous: 0
                }
            ));
        }
    }

    #[test]
    fn ignores_dotfiles_tmp_files_other_names_and_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "c2VjcmV0";
        write(dir.path(), ".hidden.b64", secret);
        write(dir.path(), "next.b64.tmp", secret);
        write(dir.path(), ".x.tmp", secret);
        write(dir.path(), "revoked", "kid:real");
        write(dir.path(), "README.md", "not a key");
        fs::create_dir(dir.path().join("tls")).unwrap();
        write(&dir.path().join("tls"), "inner.b64", secret);
        fs::create_dir(dir.path().join("dir.json")).unwrap();
        write(dir.path(), "real.b64", secret);
        let (store, report) = open(dir.path());
        assert!(report.issues.is_empty(), "{report}");
        assert_eq!(kids(&store.snapshot()), ["real"]);
    }

    #[test]
    fn duplicate_kid_keeps_the_lexically_first_file() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "b.json",
            &jwks(&[ec_jwk("shared"), ec_jwk("other")]),
        );
        write(dir.path(), "shared.b64", "c2VjcmV0");
        write(dir.path(), "a.json", &jwks(&[ed_jwk("shared")]));
        let (store, report) = open(dir.path());
        let set = store.snapshot();
        assert_eq!(kids(&set), ["other", "shared"]);
        assert_eq!(
            set.get("shared").unwrap().source(),
            dir.path().join("a.json")
        );
        let duplicates: Vec<&Path> = report
            .issues
            .iter()
            .filter(|issue| matches!(issue.problem, Problem::DuplicateKid { .. }))
            .map(|issue| issue.file.as_path())
            .collect();
        assert_eq!(
            duplicates,
            [dir.path().join("b.json"), dir.path().join("shared.b64")]
        );
    }

    #[test]
    fn reload_keeps_a_broken_files_previous_keys_and_drops_removed_ones() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "idp.json", &jwks(&[ec_jwk("ec-1")]));
        write(dir.path(), "dev.b64", "c2VjcmV0");
        write(dir.path(), "gone.b64", "Z29uZQ");
        let (store, report) = open(dir.path());
        assert_eq!(report.keys, 3);
        let before = store.snapshot();

        write(dir.path(), "idp.json", "{ half-written");
        write(dir.path(), "dev.b64", "not base64!");
        fs::remove_file(dir.path().join("gone.b64")).unwrap();
        write(dir.path(), "new.b64", "bmV3");
        let report = store.reload().unwrap();
        let after = store.snapshot();
        assert_eq!(kids(&after), ["dev", "ec-1", "new"]);
        // The very same keys, not re-read ones.
        assert!(std::ptr::eq(
            after.get("ec-1").unwrap(),
            before.get("ec-1").unwrap()
        ));
        assert_eq!(report.issues.len(), 2, "{report}");
        assert!(report.issues.iter().all(|issue| matches!(
            issue.problem,
            Problem::File {
                kept_previous: 1,
                ..
            }
        )));
        assert!(report.to_string().contains("stays in force"));
        // The snapshot taken before is untouched.
        assert_eq!(kids(&before), ["dev", "ec-1", "gone"]);

        // A good version replaces the kept one; a file broken from the start
        // provides nothing.
        write(dir.path(), "idp.json", &jwks(&[ec_jwk("ec-2")]));
        write(dir.path(), "bad.b64", "!");
        let report = store.reload().unwrap();
        assert_eq!(kids(&store.snapshot()), ["dev", "ec-2", "new"]);
        assert!(report.issues.iter().any(|issue| matches!(
            issue.problem,
            Problem::File {
                kept_previous: 0,
                ..
            }
        )));
    }

    #[test]
    fn empty_directory_is_an_empty_set_and_a_missing_one_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (store, report) = open(dir.path());
        assert!(store.snapshot().is_empty());
        assert_eq!(report.keys, 0);
        let missing = dir.path().join("nope");
        let error = KeyStore::open(&missing).unwrap_err();
        assert!(error.to_string().contains(&*missing.to_string_lossy()));
        // A reload that cannot read the directory leaves the set alone.
        write(dir.path(), "k.b64", "c2VjcmV0");
        let (store, _) = open(dir.path());
        fs::remove_dir_all(dir.path()).unwrap();
        assert!(store.reload().is_err());
        assert_eq!(store.snapshot().len(), 1);
    }

    #[test]
    fn oversized_and_non_utf8_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let huge = "A".repeat(MAX_KEY_FILE_BYTES as usize + 4);
        write(dir.path(), "huge.b64", &huge);
        fs::write(dir.path().join("latin1.b64"), b"\xe9t\xe9").unwrap();
        let (_, report) = open(dir.path());
        let errors: Vec<String> = report.issues.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 2);
        assert!(errors[0].contains("huge.b64: larger than"), "{errors:?}");
        assert!(errors[1].contains("latin1.b64: not UTF-8"), "{errors:?}");
    }

    #[test]
    fn candidates_are_the_keys_allowing_the_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "idp.json",
            &jwks(&[ec_jwk("ec"), rsa_jwk("rsa")]),
        );
        write(dir.path(), "dev.b64", "c2VjcmV0");
        let (store, _) = open(dir.path());
        let set = store.snapshot();
        let ids = |alg| set.candidates(alg).map(Key::id).collect::<Vec<_>>();
        assert_eq!(ids(Algorithm::ES256), ["ec"]);
        assert_eq!(ids(Algorithm::PS384), ["rsa"]);
        assert_eq!(ids(Algorithm::HS256), ["dev"]);
        assert!(ids(Algorithm::EdDSA).is_empty());
    }

    #[test]
    fn newest_hmac_is_the_most_recently_modified_b64_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let set_age = |name: &str, secs_ago: u64| {
            let file = fs::File::options()
                .write(true)
                .open(dir.path().join(name))
                .unwrap();
            file.set_modified(SystemTime::now() - Duration::from_secs(secs_ago))
                .unwrap();
        };
        write(dir.path(), "old.b64", "b2xk");
        write(dir.path(), "new.b64", "bmV3");
        // Newest of all, but its id is taken by a.json, so it is not in force.
        write(dir.path(), "taken.b64", "dGFrZW4");
        write(
            dir.path(),
            "a.json",
            &jwks(&[json!({ "kty": "oct", "kid": "taken", "k": "eA" })]),
        );
        set_age("old.b64", 100);
        set_age("new.b64", 10);
        set_age("taken.b64", 1);
        let (store, _) = open(dir.path());
        assert_eq!(store.snapshot().newest_hmac().map(Key::id), Some("new"));

        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "idp.json", &jwks(&[ec_jwk("ec")]));
        let (store, _) = open(dir.path());
        assert!(store.snapshot().newest_hmac().is_none());
    }

    #[test]
    fn deny_list_syntax() {
        let text = "\u{feff}# revoked devices\r\n\
                    jti:7f1c9a0e3b\r\n\
                    \n\
                    \t sub:thermostat-7c        # stolen unit\n\
                    kid: fleet-2025#old\n\
                    sub:thermostat-7c\n\
                    jti:a#1 # an id may contain '#'\n";
        let (list, bad) = parse_deny_list(text);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(list.len(), 4);
        assert!(list.contains(DenyKind::Jti, "7f1c9a0e3b"));
        assert!(list.contains(DenyKind::Sub, "thermostat-7c"));
        assert!(list.contains(DenyKind::Kid, "fleet-2025#old"));
        assert!(list.contains(DenyKind::Jti, "a#1"));
        // Kinds are separate: a subject named like a jti is not that jti.
        assert!(!list.contains(DenyKind::Jti, "thermostat-7c"));
    }

    #[test]
    fn malformed_deny_lines_are_named_and_skipped() {
        let text = "jti:ok\n\
                    thermostat-7c\n\
                    uid:42\n\
                    sub:   # nothing\n\
                    sub:ab cd\n\
                    eyJhbGciOiJIUzI1NiJ9.very-long-kind-that-is-clipped:x\n\
                    kid:ok\n";
        let (list, bad) = parse_deny_list(text);
        assert_eq!(list.len(), 2);
        let reasons: Vec<String> = bad.iter().map(ToString::to_string).collect();
        assert_eq!(
            reasons,
            [
                "line 2: no \"kind:\" prefix; expected jti:<id>, sub:<id> or kid:<id>; line ignored",
                "line 3: unknown kind \"uid\"; expected jti, sub or kid; line ignored",
                "line 4: \"sub:\" without an id; line ignored",
                "line 5: the sub id contains whitespace (a comment starts with '#' after whitespace); line ignored",
                "line 6: unknown kind \"eyJhbGciOiJIUzI1\"; expected jti, sub or kid; line ignored",
            ]
        );
    }

    #[test]
    fn deny_list_matches_the_most_specific_entry() {
        let (list, _) = parse_deny_list("kid:dev\nsub:d1\njti:t1\n");
        let entry = |kind, id: &str| {
            Some(DenyEntry {
                kind,
                id: id.to_owned(),
            })
        };
        assert_eq!(
            list.matching(Some("t1"), Some("d1"), "dev"),
            entry(DenyKind::Jti, "t1")
        );
        assert_eq!(
            list.matching(Some("t2"), Some("d1"), "dev"),
            entry(DenyKind::Sub, "d1")
        );
        assert_eq!(
            list.matching(None, None, "dev"),
            entry(DenyKind::Kid, "dev")
        );
        assert_eq!(list.matching(Some("t2"), Some("d2"), "other"), None);
        assert_eq!(entry(DenyKind::Sub, "d1").unwrap().to_string(), "sub:d1");
    }

    #[test]
    fn deny_list_is_loaded_with_the_keys_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "dev.b64", "c2VjcmV0");
        write(dir.path(), DENY_LIST_FILE, "sub:d1\nnonsense\njti:t1\n");
        let (store, report) = open(dir.path());
        assert_eq!(report.revoked, 2);
        assert!(
            report.to_string().contains("2 deny-list entries"),
            "{report}"
        );
        let issues: Vec<String> = report.issues.iter().map(ToString::to_string).collect();
        let revoked = dir.path().join(DENY_LIST_FILE);
        assert_eq!(issues.len(), 1);
        assert!(
            issues[0].starts_with(&format!("{}: line 2: no \"kind:\"", revoked.display())),
            "{issues:?}"
        );
        let set = store.snapshot();
        assert!(set.deny_list().contains(DenyKind::Sub, "d1"));
        assert_eq!(kids(&set), ["dev"]);
    }

    #[test]
    fn unreadable_deny_list_keeps_its_previous_entries_and_a_removed_one_none() {
        let dir = tempfile::tempdir().unwrap();
        let (store, report) = open(dir.path());
        assert_eq!(report.revoked, 0);
        assert!(report.issues.is_empty(), "no deny list is no problem");

        write(dir.path(), DENY_LIST_FILE, "sub:d1\nsub:d2\n");
        let report = store.reload().unwrap();
        assert_eq!(report.revoked, 2);
        let before = store.snapshot();

        // Not UTF-8: as unreadable as a file can be without chmod, which
        // root (CI containers) ignores.
        fs::write(dir.path().join(DENY_LIST_FILE), b"sub:d3\n\xff\n").unwrap();
        let report = store.reload().unwrap();
        assert_eq!(report.revoked, 2);
        assert!(matches!(
            report.issues[..],
            [LoadIssue {
                problem: Problem::DenyList {
                    error: FileError::NotUtf8,
                    kept_previous: 2
                },
                ..
            }]
        ));
        assert!(report.to_string().contains("(2 entries) stays in force"));
        let after = store.snapshot();
        // The very same list, not a re-read one.
        assert!(std::ptr::eq(after.deny_list(), before.deny_list()));

        fs::remove_file(dir.path().join(DENY_LIST_FILE)).unwrap();
        let report = store.reload().unwrap();
        assert_eq!(report.revoked, 0);
        assert!(store.snapshot().deny_list().is_empty());

        // Unreadable from the first load: nothing to keep, and it says so.
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(DENY_LIST_FILE), b"\xff").unwrap();
        let (_, report) = open(dir.path());
        assert!(
            report
                .to_string()
                .contains("nothing is revoked until it can be read"),
            "{report}"
        );
    }
}
