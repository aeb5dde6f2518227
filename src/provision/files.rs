//! The files provisioning reads and writes: secrets in, tokens and key sets
//! out.

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::Error;

/// Secrets are a password or a token; anything larger is the wrong file.
const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// A password, client secret or token. Its `Debug` does not show it.
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Where a secret is read from: a file, or standard input for `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Stdin,
    File(PathBuf),
}

/// As a command-line argument names it (which is how clap builds one).
impl From<OsString> for SecretSource {
    fn from(arg: OsString) -> SecretSource {
        if arg == "-" {
            SecretSource::Stdin
        } else {
            SecretSource::File(arg.into())
        }
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Stdin => f.write_str("- (standard input)"),
            SecretSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Why a secret file is unusable.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("{0}")]
    Read(#[from] io::Error),
    #[error("it is empty")]
    Empty,
    #[error("it is larger than {MAX_SECRET_BYTES} bytes")]
    TooLarge,
    #[error("it is not UTF-8 text")]
    NotUtf8,
}

/// Reads the secrets of one command, making sure at most one of them comes
/// from standard input (a second read would find it empty).
#[derive(Debug, Default)]
pub struct SecretReader {
    stdin_read_for: Option<&'static str>,
}

impl SecretReader {
    /// Reads the secret `flag` names, without its trailing line break.
    pub fn read(&mut self, flag: &'static str, from: &SecretSource) -> Result<Secret, Error> {
        let secret = match from {
            SecretSource::Stdin => {
                if let Some(first) = self.stdin_read_for {
                    return Err(Error::StdinTwice {
                        first,
                        second: flag,
                    });
                }
                self.stdin_read_for = Some(flag);
                read_secret(io::stdin().lock())
            }
            SecretSource::File(path) => read_secret_file(path),
        };
        secret.map_err(|error| Error::Secret {
            flag,
            from: from.clone(),
            error,
        })
    }
}

pub(super) fn read_secret_file(path: &Path) -> Result<Secret, SecretFileError> {
    read_secret(File::open(path)?)
}

fn read_secret(reader: impl Read) -> Result<Secret, SecretFileError> {
    let mut bytes = Vec::new();
    reader.take(MAX_SECRET_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SECRET_BYTES {
        return Err(SecretFileError::TooLarge);
    }
    let text = String::from_utf8(bytes).map_err(|_| SecretFileError::NotUtf8)?;
    // `echo pw > file` and a typed line on stdin both end in a line break
    // that is not part of the secret.
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(SecretFileError::Empty);
    }
    Ok(Secret(secret.to_owned()))
}

/// The directory a file is written in; `.` for a bare file name.
pub(super) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Replaces `path` with `contents`, mode `mode`, so that at every moment
/// `path` holds either its old content or all of the new: the new content
/// goes to a temporary file in the same directory (a dotfile ending in
/// `.tmp`, which the gateway's key loader ignores), is flushed to disk and
/// renamed over `path`. On failure the temporary file is removed.
pub(super) fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    let failed = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = parent_dir(path);
    let mut prefix = OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".");
    // tempfile creates the file 0600; the mode is set before any byte is
    // written, and with fchmod, so the umask does not change it.
    let mut temp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(failed)?;
    temp.as_file()
        .set_permissions(Permissions::from_mode(mode))
        .map_err(failed)?;
    temp.write_all(contents).map_err(failed)?;
    temp.as_file().sync_all().map_err(failed)?;
    temp.persist(path).map_err(|error| failed(error.error))?;
    // The rename is only durable once the directory is; a power cut right
    // after must not bring the old file back with its refresh token spent.
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(failed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn secrets_lose_their_line_break_only() {
        for (text, secret) in [
            ("pw\n", "pw"),
            ("pw\r\n", "pw"),
            (" pw \n\n", " pw "),
            ("pw", "pw"),
        ] {
            assert_eq!(read_secret(text.as_bytes()).unwrap().expose(), secret);
        }
        assert!(matches!(
            read_secret(&b"\n"[..]),
            Err(SecretFileError::Empty)
        ));
        assert!(matches!(
            read_secret(&b"\xff"[..]),
            Err(SecretFileError::NotUtf8)
        ));
        let huge = vec![b'a'; MAX_SECRET_BYTES as usize + 1];
        assert!(matches!(
            read_secret(&huge[..]),
            Err(SecretFileError::TooLarge)
        ));
    }

    #[test]
    fn stdin_serves_one_secret() {
        let mut reader = SecretReader {
            stdin_read_for: Some("--password-file"),
        };
        let error = reader
            .read("--client-secret-file", &SecretSource::Stdin)
            .unwrap_err();
        assert!(matches!(
            error,
            Error::StdinTwice {
                first: "--password-file",
                second: "--client-secret-file"
            }
        ));
        assert_eq!(SecretSource::from(OsString::from("-")), SecretSource::Stdin);
    }

    #[test]
    fn secrets_do_not_show_in_debug() {
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(..)");
    }

    #[test]
    fn atomic_write_replaces_with_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.jwt");
        std::fs::write(&path, "old").unwrap();
        write_atomically(&path, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["device.jwt"]);
    }
}
