//! Where a token is stored, and the gateway's verification it must pass
//! first.

use std::path::{Path, PathBuf};

use crate::config::{AuthConfig, Config};

use super::error::Error;
use super::types::TokenKind;

/// Where a token is stored and how it is checked first.
#[derive(Debug, Clone)]
pub struct TokenOut {
    /// The token file; the refresh token goes to `{path}.refresh`.
    pub path: PathBuf,
    pub kind: TokenKind,
    /// The claim the gateway reads topic filters from.
    pub topics_claim: String,
    /// The claim the gateway reads EMQX-style rules from (a token with it
    /// and no topics claim still grants).
    pub acl_claim: String,
    /// Verify the token as the gateway would and refuse to store it when
    /// that fails.
    pub verify: Option<Verify>,
}

/// The gateway's verification, as [`TokenOut::verify`] runs it.
#[derive(Debug, Clone)]
pub struct Verify {
    /// The gateway's `[auth]`: the keys directory, and the issuer,
    /// audience, algorithms, `require_kid` and lifetime it enforces.
    pub auth: AuthConfig,
    /// The config file `auth` was read from; `None` for the built-in
    /// defaults, which enforce less than a production `[auth]` may.
    pub config: Option<PathBuf>,
}

impl Verify {
    /// The built-in `[auth]` with keys from `keys_dir`.
    pub fn defaults(keys_dir: &Path) -> Verify {
        let mut auth = Config::defaults(keys_dir).auth;
        auth.keys_dir = keys_dir.to_path_buf();
        Verify { auth, config: None }
    }

    /// The `[auth]` of the gateway's config file; `keys_dir`, when given,
    /// replaces its keys directory.
    pub fn from_config(path: &Path, keys_dir: Option<&Path>) -> Result<Verify, Error> {
        let mut auth = Config::load(path)?.auth;
        if let Some(dir) = keys_dir {
            auth.keys_dir = dir.to_path_buf();
        }
        Ok(Verify {
            auth,
            config: Some(path.to_path_buf()),
        })
    }
}

impl TokenOut {
    /// Where the refresh token for this token lives.
    pub fn refresh_path(&self) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(".refresh");
        PathBuf::from(name)
    }
}
