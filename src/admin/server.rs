//! The gateway's side of the admin socket: bound once at start with the
//! mode that decides who may use it, then one request a connection,
//! answered from what the gateway hands in as a [`Control`].
//!
//! Who may connect is the file system's decision (owner root or the
//! service user, group `jwtgate`, mode 0660), as for Docker's or
//! systemd's own sockets; the gateway logs each caller's uid beside what
//! it asked for.

use std::future::Future;
use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

use super::protocol::{Answer, Disconnected, Filter, Request, SessionRow, Status};

/// The socket's mode: read and write for its owner and group, nothing for
/// others.
pub const SOCKET_MODE: u32 = 0o660;

/// The longest request: a command and two names.
const MAX_REQUEST_BYTES: u64 = 4096;

/// What is read and dropped of a caller that sent more than a request.
const MAX_DRAINED_BYTES: u64 = 16 * 1024 * 1024;

/// How long a caller has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests served at once; more wait in the listen backlog.
const CONCURRENT_REQUESTS: usize = 4;

/// What the admin commands read and do, provided by the gateway.
pub trait Control: Send + Sync {
    fn status(&self) -> Status;
    fn sessions(&self, filter: &Filter) -> Vec<SessionRow>;
    /// Ends the live connections and (with `discard_session`) the
    /// sessions `filter` picks, and resolves once they have let go.
    fn disconnect<'a>(
        &'a self,
        filter: &'a Filter,
        discard_session: bool,
    ) -> Pin<Box<dyn Future<Output = Disconnected> + Send + 'a>>;
}

/// Why the admin socket could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another gateway answers on {0}")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; it is left alone")]
    NotASocket(PathBuf),
    #[error("cannot make the admin socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The bound admin socket. Dropping it removes the file, if it is still
/// this socket's.
#[derive(Debug)]
pub struct AdminSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the file bound, to tell it from a successor's.
    file: (u64, u64),
}

impl AdminSocket {
    /// Binds `path` with [`SOCKET_MODE`]. A socket left there by a gateway
    /// that is gone is replaced; one that still answers is not.
    pub fn bind(path: &Path) -> Result<AdminSocket, BindError> {
        let io = |source| BindError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(BindError::NotASocket(path.to_path_buf()));
            }
            Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(BindError::InUse(path.to_path_buf())),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(io(e)),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // Bound under another name and given its mode before it takes the
        // real one, so that no caller ever finds it with the umask's mode.
        let mut fresh = path.as_os_str().to_owned();
        fresh.push(".new");
        let fresh = PathBuf::from(fresh);
        match std::fs::remove_file(&fresh) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
        let listener = UnixListener::bind(&fresh).map_err(io)?;
        let placed = std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(SOCKET_MODE))
            .and_then(|()| std::fs::rename(&fresh, path))
            .and_then(|()| std::fs::metadata(path));
        match placed {
            Ok(meta) => Ok(AdminSocket {
                listener,
                path: path.to_path_buf(),
                file: (meta.dev(), meta.ino()),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&fresh);
                Err(io(e))
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers requests until `stopped` turns true.
    pub async fn serve(self, control: Arc<dyn Control>, mut stopped: watch::Receiver<bool>) {
        let places = Arc::new(Semaphore::new(CONCURRENT_REQUESTS));
        loop {
            let Ok(place) = Arc::clone(&places).acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = stopped.wait_for(|stop| *stop) => return,
            };
            match accepted {
                Ok((stream, _)) => {
                    let control = Arc::clone(&control);
                    tokio::spawn(async move {
                        serve_one(stream, &*control).await;
                        drop(place);
                    });
                }
                Err(e) => {
                    warn!(error = %e, socket = %self.path.display(), "admin socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.file);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Reads one request, answers it, and closes.
async fn serve_one(stream: UnixStream, control: &dyn Control) {
    let uid = stream.peer_cred().ok().map(|cred| cred.uid());
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES));
    let answer =
        match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
            Err(_) => Answer::Error(format!("no request within {}s", REQUEST_TIMEOUT.as_secs())),
            Ok(Err(e)) => Answer::Error(format!("reading the request failed: {e}")),
            Ok(Ok(_)) if !line.ends_with(b"\n") => Answer::Error(format!(
                "a request is one line of at most {MAX_REQUEST_BYTES} bytes"
            )),
            Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
                Ok(request) => answer(request, control, uid).await,
                Err(e) => Answer::Error(format!("not a request: {e}")),
            },
        };
    let Ok(mut text) = serde_json::to_vec(&answer) else {
        return;
    };
    text.push(b'\n');
    // A caller that went away has nothing left to be told.
    let _ = write.write_all(&text).await;
    let _ = write.shutdown().await;
    // Closing with bytes of the caller's still unread would reset the
    // connection, and the caller would lose the answer along with them:
    // what it still sends is read and dropped, within bounds.
    let mut rest = reader.into_inner().into_inner().take(MAX_DRAINED_BYTES);
    let _ = tokio::time::timeout(
        REQUEST_TIMEOUT,
        tokio::io::copy(&mut rest, &mut tokio::io::sink()),
    )
    .await;
}

async fn answer(request: Request, control: &dyn Control, uid: Option<u32>) -> Answer {
    match request {
        Request::Status => Answer::Status(Box::new(control.status())),
        Request::Sessions { filter } => Answer::Sessions(control.sessions(&filter)),
        Request::Disconnect { filter, .. } if filter.is_empty() => Answer::Error(
            "disconnect names the sessions to end: a client id, a subject, or both".into(),
        ),
        Request::Disconnect {
            filter,
            discard_session,
        } => {
            let done = control.disconnect(&filter, discard_session).await;
            info!(
                uid,
                sub = filter.subject.as_deref().unwrap_or("*"),
                client_id = filter.client_id.as_deref().unwrap_or("*"),
                discard_session,
                connections = done.connections,
                sessions_discarded = done.sessions_discarded,
                "administrative disconnect"
            );
            Answer::Disconnected(done)
        }
    }
}

#[cfg(test)]
mod tests;
