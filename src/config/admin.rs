//! The `[admin] socket` table: where `jwtgate status`, `sessions` and
//! `disconnect` reach the running gateway. A Unix socket, never a network
//! port: who may use it is decided by the file's owner, group and mode.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::document::{ConfigError, Document};

/// `[admin] socket` for a gateway started from a config file: under the
/// packaged unit's `RuntimeDirectory=jwtgate`.
pub const DEFAULT_SOCKET: &str = "/run/jwtgate/admin.sock";

/// The admin socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// The socket's path; `None` when `socket = ""` turns it off.
    pub socket: Option<PathBuf>,
    /// Whether `socket` was written in the file. A default path the
    /// gateway cannot bind (no `/run/jwtgate` outside the package) is
    /// warned about and skipped; a path the operator chose must work.
    pub explicit: bool,
}

impl AdminConfig {
    /// The first-run default, with no config file: beside the state in
    /// `base_dir/state`, where the user running it can create it.
    pub fn defaults(base_dir: &Path) -> AdminConfig {
        AdminConfig {
            socket: Some(base_dir.join("state").join("admin.sock")),
            explicit: false,
        }
    }

    /// With a config file that does not say.
    pub fn packaged() -> AdminConfig {
        AdminConfig {
            socket: Some(PathBuf::from(DEFAULT_SOCKET)),
            explicit: false,
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [admin] table")]
pub(super) struct RawAdmin {
    socket: Option<Spanned<PathBuf>>,
}

impl RawAdmin {
    pub(super) fn validate(
        self,
        doc: &Document<'_>,
        base_dir: &Path,
    ) -> Result<AdminConfig, ConfigError> {
        let Some(socket) = &self.socket else {
            return Ok(AdminConfig::packaged());
        };
        if socket.get_ref().as_os_str().is_empty() {
            return Ok(AdminConfig {
                socket: None,
                explicit: true,
            });
        }
        let path = doc.path(socket, "[admin] socket", base_dir)?;
        // sun_path holds 108 bytes with its terminating NUL.
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(doc.bad(
                socket,
                "[admin] socket",
                format!(
                    "`{}` is longer than the {MAX_SOCKET_PATH} bytes a Unix socket's path may have",
                    path.display()
                ),
            ));
        }
        Ok(AdminConfig {
            socket: Some(path),
            explicit: true,
        })
    }
}

/// The longest path `bind(2)` takes for a Unix socket on Linux.
const MAX_SOCKET_PATH: usize = 107;
