//! Downloading the provider's JWK set into the gateway's keys directory.

use std::path::Path;

use crate::keys;

use super::error::Error;
use super::files::{check_out_dir, write_atomically};
use super::http::{Endpoint, Provider};
use super::login::refused;
use super::types::JwksStored;

/// A JWK set holds public keys only; who may read it is up to the keys
/// directory's permissions (the gateway runs as its own user).
const PUBLIC_MODE: u32 = 0o644;

/// Downloads the provider's JWK set to `out` (a `*.json` file in the
/// gateway's keys directory), after checking that the gateway's own loader
/// finds at least one usable key in it.
pub fn fetch_jwks(provider: &Provider, out: &Path) -> Result<JwksStored, Error> {
    check_jwks_name(out)?;
    check_out_dir(out)?;
    let answer = provider.send(&Endpoint::Jwks)?;
    if !answer.is_success() {
        return Err(refused(&answer, None));
    }
    let text = std::str::from_utf8(&answer.body).map_err(|_| answer.unexpected())?;
    // Parsed under the name it will have, so keys without `kid` get the ids
    // the gateway will give them.
    let parsed = keys::parse_jwks(text, out).map_err(|source| Error::NotJwks {
        url: answer.url.clone(),
        source,
        snippet: answer.snippet(),
    })?;
    if parsed.keys.is_empty() {
        return Err(Error::NoUsableKey {
            url: answer.url,
            skipped: parsed.skipped,
        });
    }
    write_atomically(out, &answer.body, PUBLIC_MODE)?;
    Ok(JwksStored {
        path: out.to_path_buf(),
        key_ids: parsed.keys.iter().map(|key| key.id().to_owned()).collect(),
        skipped: parsed.skipped,
    })
}

/// The gateway loads `*.json` files that are not dotfiles; anything else
/// would be downloaded and then silently ignored.
fn check_jwks_name(path: &Path) -> Result<(), Error> {
    // The same test as the gateway's loader.
    let dotfile = path
        .file_name()
        .is_some_and(|name| name.as_encoded_bytes().starts_with(b"."));
    if path.extension().is_some_and(|ext| ext == "json") && !dotfile {
        return Ok(());
    }
    Err(Error::OutPath {
        path: path.to_path_buf(),
        reason: "the gateway only loads *.json files (not dotfiles) from its keys directory; name it like KEYS_DIR/provider.json",
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn jwks_names_the_gateway_loads() {
        for good in ["keys/provider.json", "provider.json"] {
            check_jwks_name(Path::new(good)).unwrap();
        }
        for bad in [
            "keys/provider.jwks",
            "keys/.provider.json",
            "keys/",
            "keys/provider.json.tmp",
        ] {
            assert!(check_jwks_name(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
