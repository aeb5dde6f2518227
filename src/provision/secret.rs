//! The secrets provisioning reads (a password, a client secret, a refresh
//! token), kept out of `Debug` and bounded in size.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

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

pub(super) fn read_secret_file(path: &Path) -> Result<Secret, SecretFileError> {
    read_secret(File::open(path)?)
}

pub(super) fn read_secret(reader: impl Read) -> Result<Secret, SecretFileError> {
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
    fn secrets_do_not_show_in_debug() {
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(..)");
    }
}
