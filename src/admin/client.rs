//! The tools' side: `jwtgate status`, `sessions` and `disconnect` ask the
//! running gateway one question over its admin socket.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{Answer, Request};
use crate::config::{AdminConfig, DEFAULT_ADMIN_SOCKET};

/// How long the gateway gets to answer. A status is read from memory; a
/// disconnect waits up to `server::LET_GO` for the connections to close.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// The longest answer read: a session list of a full gateway (10,000
/// connections at about 400 bytes a row) fits many times over.
const MAX_ANSWER_BYTES: u64 = 256 * 1024 * 1024;

/// Why the gateway could not be asked. Each says so in one line, and the
/// tools exit with status 2 on any of them.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "the gateway is not running: nothing answers on {0} (is `jwtgate serve` up, and is this its [admin] socket?)"
    )]
    NotRunning(PathBuf),
    #[error(
        "permission denied on {0}: the admin socket is for root and the jwtgate group (sudo, or `adduser $USER jwtgate`)"
    )]
    Denied(PathBuf),
    #[error("cannot talk to the gateway on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the gateway's answer on {path} does not read: {detail}")]
    Garbled { path: PathBuf, detail: String },
    #[error("the gateway refused: {0}")]
    Refused(String),
}

/// The socket to ask: `--socket`, else the config's `[admin] socket`
/// (`--config`), else the first-run default `state/admin.sock` if a
/// gateway started here made one, else `/run/jwtgate/admin.sock`.
pub fn socket_path(
    explicit: Option<&Path>,
    config: Option<&AdminConfig>,
) -> Result<PathBuf, AdminError> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    if let Some(config) = config {
        return config.socket.clone().ok_or_else(|| {
            AdminError::Refused(
                "the config turns the admin socket off ([admin] socket = \"\")".into(),
            )
        });
    }
    let first_run = AdminConfig::defaults(Path::new(""));
    Ok(first_run
        .socket
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ADMIN_SOCKET)))
}

/// Sends `request` to the gateway on `socket` and reads its answer. An
/// `Answer::Error` is returned as [`AdminError::Refused`].
pub fn ask(socket: &Path, request: &Request) -> Result<Answer, AdminError> {
    let io = |source: std::io::Error| AdminError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
            AdminError::NotRunning(socket.to_path_buf())
        }
        ErrorKind::PermissionDenied => AdminError::Denied(socket.to_path_buf()),
        _ => io(e),
    })?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_vec(request).map_err(|e| AdminError::Garbled {
        path: socket.to_path_buf(),
        detail: e.to_string(),
    })?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut text = String::new();
    BufReader::new(stream.take(MAX_ANSWER_BYTES))
        .read_line(&mut text)
        .map_err(io)?;
    if text.is_empty() {
        return Err(AdminError::Garbled {
            path: socket.to_path_buf(),
            detail: "it closed without answering".into(),
        });
    }
    match serde_json::from_str(&text) {
        Ok(Answer::Error(why)) => Err(AdminError::Refused(why)),
        Ok(answer) => Ok(answer),
        Err(e) => Err(AdminError::Garbled {
            path: socket.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}
