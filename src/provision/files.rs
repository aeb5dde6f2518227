//! The files provisioning reads and writes: the command's secrets in,
//! tokens and key sets out, atomically.

use std::ffi::OsString;
use std::fs::{File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::error::Error;
use super::secret::{Secret, SecretSource, read_secret, read_secret_file};

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

/// The directory a file is written in; `.` for a bare file name.
fn parent_dir(path: &Path) -> &Path {
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

/// Fails before any request when the output could not be written anyway,
/// so a typo does not cost a login.
pub(super) fn check_out_dir(path: &Path) -> Result<(), Error> {
    let reason = match path.file_name() {
        None => "not a file name",
        Some(_) if parent_dir(path).is_dir() => return Ok(()),
        Some(_) => "its directory does not exist",
    };
    Err(Error::OutPath {
        path: path.to_path_buf(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

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
