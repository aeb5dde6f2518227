//! Reading the keys directory into a [`KeySet`]: which names are key files,
//! reading each one (bounded, through symbolic links), and falling back on
//! the previous set for files that fail now, so that a bad write never
//! takes keys or deny-list entries away. A secret that others than its
//! owner can read is loaded, with a warning: refusing it would take a
//! working gateway down over a chmod.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::deny::{DENY_LIST_FILE, DenyList, parse_deny_list};
use super::jwk::{SkippedJwk, parse_jwks};
use super::report::{Concern, FileError, LoadIssue, LoadReport, LoadWarning, Problem};
use super::secret::{HMAC_ALGORITHMS, decode_secret};
use super::set::{FileKind, Key, KeyFile, KeySet};

/// Key files are small, and so is a deny list (1 MiB holds some 25,000
/// `jti:` entries); anything larger is a mistake (or an attack on the
/// loader), and is refused without being read to the end.
pub const MAX_KEY_FILE_BYTES: u64 = 1024 * 1024;

/// The keys directory itself could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyDirError {
    #[error("cannot read key directory {}: {source}", dir.display())]
    Read { dir: PathBuf, source: io::Error },
}

/// Loads the directory. `previous` supplies the last good version of files
/// that fail now.
pub(super) fn load(dir: &Path, previous: &KeySet) -> Result<(KeySet, LoadReport), KeyDirError> {
    let mut files = BTreeMap::new();
    let mut issues = Vec::new();
    let mut warnings = Vec::new();
    for (path, kind) in key_files(dir)? {
        match read_key_file(&path, kind) {
            Ok(Some(loaded)) => {
                issues.extend(loaded.skipped.into_iter().map(|skipped| LoadIssue {
                    file: path.clone(),
                    problem: Problem::Key(skipped),
                }));
                warnings.extend(loaded.exposed.map(|concern| LoadWarning {
                    file: path.clone(),
                    concern,
                }));
                files.insert(path, loaded.file);
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
        warnings,
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

/// One key file as it is now.
struct LoadedFile {
    file: KeyFile,
    skipped: Vec<SkippedJwk>,
    /// Set when the file holds a secret that others than its owner can
    /// read.
    exposed: Option<Concern>,
}

/// Reads a key file or the deny list as text, with its metadata (of the
/// file a symbolic link leads to); `None` when it is gone or turned out
/// not to be a regular file (a directory named `x.json`).
fn read_text(path: &Path) -> Result<Option<(String, fs::Metadata)>, FileError> {
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(FileError::Read(error)),
    };
    if !metadata.is_file() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    match fs::File::open(path) {
        Ok(file) => file.take(MAX_KEY_FILE_BYTES + 1).read_to_end(&mut bytes),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => Err(error),
    }
    .map_err(FileError::Read)?;
    if bytes.len() as u64 > MAX_KEY_FILE_BYTES {
        return Err(FileError::TooLarge {
            limit: MAX_KEY_FILE_BYTES,
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| FileError::NotUtf8)?;
    Ok(Some((text, metadata)))
}

/// Reads and parses one key file; `None` when [`read_text`] finds none.
fn read_key_file(path: &Path, kind: FileKind) -> Result<Option<LoadedFile>, FileError> {
    let Some((text, metadata)) = read_text(path)? else {
        return Ok(None);
    };
    let (keys, skipped) = match kind {
        FileKind::Secret => {
            let id = path
                .file_stem()
                .and_then(|stem| stem.to_str())
                .ok_or(FileError::NameNotUtf8)?;
            let secret = decode_secret(&text)?;
            let key = Key::hmac(id.to_owned(), path, &secret, HMAC_ALGORITHMS)?;
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
    let exposed = exposure(&metadata, &keys);
    let file = KeyFile {
        kind,
        // Some filesystems keep no modification time; such files sort
        // oldest.
        modified: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        keys: keys.into_iter().map(Arc::new).collect(),
    };
    Ok(Some(LoadedFile {
        file,
        skipped,
        exposed,
    }))
}

/// Whether a file with these `keys` and `metadata` holds a secret that
/// others, or a group other than the gateway's own, can read (or write):
/// whoever reads an HMAC secret can sign tokens with it. Public keys may
/// be read by anyone.
fn exposure(metadata: &fs::Metadata, keys: &[Key]) -> Option<Concern> {
    use std::os::unix::fs::MetadataExt;
    let holds_secret = keys.iter().any(|key| key.signing_key().is_some());
    // SAFETY: getegid has no preconditions and cannot fail.
    let own_group = unsafe { libc::getegid() };
    exposed(metadata.permissions().mode(), metadata.gid(), own_group).filter(|_| holds_secret)
}

/// The permission rule for secrets: the file's group may read it only when
/// that group is the gateway's own (the systemd unit's `root:jwtgate 0640`
/// layout), others never.
fn exposed(mode: u32, file_group: u32, own_group: u32) -> Option<Concern> {
    let mode = mode & 0o7777;
    let foreign_group = file_group != own_group;
    let group = mode & 0o070 != 0 && foreign_group;
    let others = mode & 0o007 != 0;
    (group || others).then_some(Concern::SecretNotPrivate {
        mode,
        foreign_group,
    })
}

#[cfg(test)]
mod tests;
