//! `jwtgate-provision keygen`: a device's own key pair (ES256, P-256), the
//! public key as PEM and as the JWK one registers with the provider for
//! `private_key_jwt`, and, for the mTLS path, a certificate signing request
//! for the device's CA. A key is never overwritten: the one registered with
//! the provider would stop working.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, EncodingKey};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};

use super::device_key::public_jwk;
use super::error::Error;

/// The private key: owner only.
const KEY_MODE: u32 = 0o600;
/// Public material, meant to be copied off the device.
const PUBLIC_MODE: u32 = 0o644;
/// A directory keygen creates holds a private key.
const DIR_MODE: u32 = 0o700;

/// What [`keygen`] makes.
#[derive(Debug, Clone)]
pub struct Keygen {
    /// Created (mode 0700) when missing.
    pub dir: PathBuf,
    /// The files' stem: `NAME.key`, `NAME.pub.pem`, `NAME.jwk.json`,
    /// `NAME.csr`.
    pub name: String,
    /// The CSR's subject common name; `None` for no CSR.
    pub csr_subject: Option<String>,
}

/// The files [`keygen`] wrote.
#[derive(Debug, Clone)]
pub struct Generated {
    pub key: PathBuf,
    pub public_pem: PathBuf,
    pub jwk: PathBuf,
    pub csr: Option<PathBuf>,
    /// The JWK's `kid` (its RFC 7638 thumbprint), which client assertions
    /// signed with the key carry unless `--kid` says otherwise.
    pub kid: String,
}

/// Makes a P-256 key pair and writes its files, refusing before anything is
/// written if any of them exists.
pub fn keygen(request: &Keygen) -> Result<Generated, Error> {
    check_name(&request.name, &request.dir)?;
    let path = |suffix: &str| request.dir.join(format!("{}{suffix}", request.name));
    let files = Generated {
        key: path(".key"),
        public_pem: path(".pub.pem"),
        jwk: path(".jwk.json"),
        csr: request.csr_subject.as_ref().map(|_| path(".csr")),
        kid: String::new(),
    };
    let targets: Vec<&PathBuf> = [&files.key, &files.public_pem, &files.jwk]
        .into_iter()
        .chain(files.csr.as_ref())
        .collect();
    if let Some(existing) = targets.iter().find(|path| path.symlink_metadata().is_ok()) {
        return Err(Error::KeygenExists {
            path: (*existing).clone(),
        });
    }
    let failed = |error: rcgen::Error| Error::Keygen {
        reason: error.to_string(),
    };
    let pair = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(failed)?;
    let jwk = public_jwk(
        &EncodingKey::from_ec_der(pair.serialized_der()),
        Algorithm::ES256,
    )?;
    let kid = jwk.common.key_id.clone().unwrap_or_default();
    let jwk_text = serde_json::to_string_pretty(&jwk).map_err(|error| Error::Keygen {
        reason: error.to_string(),
    })? + "\n";
    let csr = match &request.csr_subject {
        Some(subject) => Some(csr_pem(&pair, subject).map_err(failed)?),
        None => None,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(&request.dir)
        .map_err(|source| Error::Write {
            path: request.dir.clone(),
            source,
        })?;
    let mut contents = vec![
        (&files.key, pair.serialize_pem(), KEY_MODE),
        (&files.public_pem, pair.public_key_pem(), PUBLIC_MODE),
        (&files.jwk, jwk_text, PUBLIC_MODE),
    ];
    if let (Some(path), Some(pem)) = (&files.csr, csr) {
        contents.push((path, pem, PUBLIC_MODE));
    }
    let mut written: Vec<&Path> = Vec::new();
    for (path, text, mode) in contents {
        if let Err(error) = create_new(path, text.as_bytes(), mode) {
            // A half set is worse than none: the next run would refuse to
            // complete it.
            for done in written {
                let _ = std::fs::remove_file(done);
            }
            return Err(error);
        }
        written.push(path);
    }
    File::open(&request.dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| Error::Write {
            path: request.dir.clone(),
            source,
        })?;
    Ok(Generated { kid, ..files })
}

/// A PKCS#10 request for a client certificate with this common name,
/// signed by the device key.
fn csr_pem(pair: &KeyPair, subject: &str) -> Result<String, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, subject);
    params.distinguished_name = name;
    params.serialize_request(pair)?.pem()
}

fn check_name(name: &str, dir: &Path) -> Result<(), Error> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') {
        return Err(Error::KeygenDir {
            path: dir.to_path_buf(),
            reason: format!("--name {name:?} must be a plain file name"),
        });
    }
    if dir.exists() && !dir.is_dir() {
        return Err(Error::KeygenDir {
            path: dir.to_path_buf(),
            reason: "not a directory".to_owned(),
        });
    }
    Ok(())
}

/// Writes a file that must not exist yet, with `mode` from its creation
/// (the umask can only narrow it).
fn create_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            ErrorKind::AlreadyExists => Error::KeygenExists {
                path: path.to_path_buf(),
            },
            _ => Error::Write {
                path: path.to_path_buf(),
                source,
            },
        })?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests;
