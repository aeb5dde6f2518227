//! Development material for a first run, so `jwtgate serve` works on a fresh
//! machine with nothing made by hand.
//!
//! [`ensure_dev_material`] fills a keys directory with what is missing:
//!
//! ```text
//! keys/tls/ca.crt      development CA (ECDSA P-256, 10 years)
//! keys/tls/ca.key      its private key                         0600
//! keys/tls/server.crt  server leaf signed by that CA (1 year),
//!                      for localhost, 127.0.0.1 and ::1
//! keys/tls/server.key  its private key                         0600
//! keys/dev.b64         32-byte HMAC secret, standard base64    0600
//! ```
//!
//! It never overwrites a file. Whatever exists is taken as deliberate, and
//! only the gaps are filled: a missing leaf is signed by the existing CA, a
//! hand-made server pair without a CA is left alone, and any `*.b64` secret
//! suppresses `dev.b64`. A certificate whose key is missing cannot be
//! repaired without overwriting, so that is an error naming both files.
//!
//! Every file is written to a hidden temporary name, flushed to disk and
//! renamed into place, so a power cut never leaves a truncated key. Files
//! are written key before certificate, so the only partial state a crash can
//! leave is a key without its certificate, and the next run completes it by
//! issuing a certificate for that key.
//!
//! Nothing is printed here: the caller reports what [`DevMaterial`] says was
//! created, and how to use it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SerialNumber,
};

use crate::tls::{self, TlsError};

/// The TLS directory inside the keys directory, and the files in it.
const TLS_DIR: &str = "tls";
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "server.crt";
const SERVER_KEY: &str = "server.key";
/// The secret created in the keys directory when it has none.
const DEV_SECRET: &str = "dev.b64";
/// Extension that marks an HMAC secret in the keys directory.
const SECRET_EXTENSION: &str = "b64";

/// Secrets and private keys: owner only.
const PRIVATE: u32 = 0o600;
const PUBLIC: u32 = 0o644;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const CA_LIFETIME: Duration = Duration::from_secs(3650 * 24 * 60 * 60);
const SERVER_LIFETIME: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Certificates start a day in the past so a device whose clock lags the
/// gateway's by hours does not see them as not yet valid.
const BACKDATE: Duration = DAY;

/// What [`write_dev_tls`] found or created in a TLS directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevTls {
    /// The development CA certificate, when the directory has one (a
    /// hand-made server pair may come without).
    pub ca_cert: Option<PathBuf>,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Files created by this call, in creation order.
    pub created: Vec<PathBuf>,
}

/// What [`ensure_dev_material`] found or created in a keys directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevMaterial {
    /// Files created by this call, in creation order; empty when everything
    /// was already there.
    pub created: Vec<PathBuf>,
    /// The CA devices should trust, when the TLS directory has one.
    pub ca_cert: Option<PathBuf>,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// An HMAC secret tokens can be minted with: `dev.b64` if it was just
    /// created, otherwise the first existing `*.b64` in name order.
    pub secret: PathBuf,
}

/// Why development material could not be created.
#[derive(Debug, thiserror::Error)]
pub enum FirstRunError {
    #[error("cannot create directory {}: {io}", path.display())]
    CreateDir { path: PathBuf, io: io::Error },
    #[error("cannot list directory {}: {io}", path.display())]
    ListDir { path: PathBuf, io: io::Error },
    #[error("cannot check whether {} exists: {io}", path.display())]
    Stat { path: PathBuf, io: io::Error },
    #[error("cannot write {}: {io}", path.display())]
    Write { path: PathBuf, io: io::Error },
    /// Completing the pair would mean overwriting `present`.
    #[error(
        "{} exists but {} does not; supply the missing file, or remove {} to have a new pair generated",
        present.display(),
        missing.display(),
        present.display()
    )]
    Incomplete { present: PathBuf, missing: PathBuf },
    /// An existing certificate or key could not be loaded.
    #[error(transparent)]
    Existing(#[from] TlsError),
    /// An existing private key loads for TLS but cannot sign certificates.
    #[error("cannot sign certificates with the key in {}: {reason}", path.display())]
    SigningKey { path: PathBuf, reason: rcgen::Error },
    /// The existing CA certificate cannot be parsed as an issuer.
    #[error("cannot issue certificates from CA {}: {reason}", path.display())]
    Issuer { path: PathBuf, reason: rcgen::Error },
    #[error("cannot generate {what}: {reason}")]
    Generate {
        what: &'static str,
        reason: rcgen::Error,
    },
    #[error("the system random number generator failed")]
    Random,
    #[error("the system clock is before 1970, so certificates cannot be dated")]
    Clock,
}

/// Creates whatever is missing of the development CA, server pair and HMAC
/// secret under `keys_dir` (see the module documentation for the layout).
pub fn ensure_dev_material(keys_dir: &Path) -> Result<DevMaterial, FirstRunError> {
    let tls = write_dev_tls(&keys_dir.join(TLS_DIR))?;
    let mut created = tls.created;
    let secret = ensure_secret(keys_dir, &mut created)?;
    Ok(DevMaterial {
        created,
        ca_cert: tls.ca_cert,
        server_cert: tls.server_cert,
        server_key: tls.server_key,
        secret,
    })
}

/// Creates whatever is missing of a development CA (`ca.crt`, `ca.key`) and
/// a server pair signed by it (`server.crt`, `server.key`) in `dir`. On an
/// empty or absent directory that is all four files, which makes this the
/// way tests and benches get a working pair.
pub fn write_dev_tls(dir: &Path) -> Result<DevTls, FirstRunError> {
    let ca_cert = dir.join(CA_CERT);
    let ca_key = dir.join(CA_KEY);
    let server_cert = dir.join(SERVER_CERT);
    let server_key = dir.join(SERVER_KEY);
    create_private_dir(dir)?;

    let mut created = Vec::new();
    if !exists(&server_cert)? {
        let issuer = ca_issuer(&ca_cert, &ca_key, &mut created)?;
        let key = existing_or_new_key(&server_key, &mut created)?;
        let cert = server_params()?
            .signed_by(&key, &issuer)
            .map_err(|reason| FirstRunError::Generate {
                what: "the server certificate",
                reason,
            })?;
        write_new(&server_cert, cert.pem().as_bytes(), PUBLIC, &mut created)?;
    } else if !exists(&server_key)? {
        return Err(FirstRunError::Incomplete {
            present: server_cert,
            missing: server_key,
        });
    }

    Ok(DevTls {
        ca_cert: exists(&ca_cert)?.then_some(ca_cert),
        server_cert,
        server_key,
        created,
    })
}

/// The CA that signs a new leaf: the existing one, or a new one.
fn ca_issuer(
    cert: &Path,
    key: &Path,
    created: &mut Vec<PathBuf>,
) -> Result<Issuer<'static, KeyPair>, FirstRunError> {
    if !exists(cert)? {
        let key = existing_or_new_key(key, created)?;
        let params = ca_params()?;
        let ca = params
            .self_signed(&key)
            .map_err(|reason| FirstRunError::Generate {
                what: "the CA certificate",
                reason,
            })?;
        write_new(cert, ca.pem().as_bytes(), PUBLIC, created)?;
        return Ok(Issuer::new(params, key));
    }
    if !exists(key)? {
        return Err(FirstRunError::Incomplete {
            present: cert.to_path_buf(),
            missing: key.to_path_buf(),
        });
    }
    // Signing with a key that is not the CA certificate's would give a leaf
    // that no client can verify, so check the pair the way the server does.
    let ca = tls::load_certified_key(cert, key)?;
    let ca_der = ca.cert.first().ok_or_else(|| TlsError::NoCertificate {
        path: cert.to_path_buf(),
    })?;
    Issuer::from_ca_cert_der(ca_der, signing_key(key)?).map_err(|reason| FirstRunError::Issuer {
        path: cert.to_path_buf(),
        reason,
    })
}

/// Loads the key at `path`, or generates and writes a P-256 key there.
fn existing_or_new_key(path: &Path, created: &mut Vec<PathBuf>) -> Result<KeyPair, FirstRunError> {
    if exists(path)? {
        return signing_key(path);
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|reason| {
        FirstRunError::Generate {
            what: "a P-256 key",
            reason,
        }
    })?;
    write_new(path, key.serialize_pem().as_bytes(), PRIVATE, created)?;
    Ok(key)
}

fn signing_key(path: &Path) -> Result<KeyPair, FirstRunError> {
    let der = tls::read_private_key(path)?;
    KeyPair::try_from(&der).map_err(|reason| FirstRunError::SigningKey {
        path: path.to_path_buf(),
        reason,
    })
}

fn ca_params() -> Result<CertificateParams, FirstRunError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name("jwtgate development CA");
    // Path length 0: this CA signs leaves only, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    stamp(&mut params, CA_LIFETIME)?;
    Ok(params)
}

fn server_params() -> Result<CertificateParams, FirstRunError> {
    let names = ["localhost", "127.0.0.1", "::1"].map(String::from);
    let mut params = CertificateParams::new(names).map_err(|reason| FirstRunError::Generate {
        what: "the server certificate names",
        reason,
    })?;
    params.distinguished_name = common_name("jwtgate development server");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    stamp(&mut params, SERVER_LIFETIME)?;
    Ok(params)
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// Sets validity and a random serial. rcgen would otherwise derive the
/// serial from the public key, and a certificate reissued for an existing
/// key would then repeat its predecessor's issuer and serial, which some
/// clients reject.
fn stamp(params: &mut CertificateParams, lifetime: Duration) -> Result<(), FirstRunError> {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| FirstRunError::Clock)?;
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + since_epoch.saturating_sub(BACKDATE);
    params.not_after = epoch + since_epoch + lifetime;
    let mut serial = random::<16>()?;
    // Keep the DER integer positive without a padding byte.
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(())
}

/// The secret to report: an existing `*.b64`, or a new `dev.b64`.
fn ensure_secret(keys_dir: &Path, created: &mut Vec<PathBuf>) -> Result<PathBuf, FirstRunError> {
    if let Some(existing) = existing_secret(keys_dir)? {
        return Ok(existing);
    }
    let path = keys_dir.join(DEV_SECRET);
    let text = format!("{}\n", STANDARD.encode(random::<32>()?));
    write_new(&path, text.as_bytes(), PRIVATE, created)?;
    Ok(path)
}

fn existing_secret(keys_dir: &Path) -> Result<Option<PathBuf>, FirstRunError> {
    let list_error = |io| FirstRunError::ListDir {
        path: keys_dir.to_path_buf(),
        io,
    };
    let mut first: Option<PathBuf> = None;
    for entry in fs::read_dir(keys_dir).map_err(list_error)? {
        let path = entry.map_err(list_error)?.path();
        let is_secret = path.extension().is_some_and(|ext| ext == SECRET_EXTENSION);
        if is_secret && path.is_file() && first.as_ref().is_none_or(|best| path < *best) {
            first = Some(path);
        }
    }
    Ok(first)
}

fn random<const N: usize>() -> Result<[u8; N], FirstRunError> {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| FirstRunError::Random)?;
    Ok(bytes)
}

fn exists(path: &Path) -> Result<bool, FirstRunError> {
    path.try_exists().map_err(|io| FirstRunError::Stat {
        path: path.to_path_buf(),
        io,
    })
}

fn create_private_dir(dir: &Path) -> Result<(), FirstRunError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|io| FirstRunError::CreateDir {
        path: dir.to_path_buf(),
        io,
    })
}

/// Writes `contents` to `path`, which the caller has found absent, via a
/// hidden temporary file and a rename, and records it in `created`.
fn write_new(
    path: &Path,
    contents: &[u8],
    mode: u32,
    created: &mut Vec<PathBuf>,
) -> Result<(), FirstRunError> {
    let tmp = temporary_name(path);
    write_then_rename(&tmp, path, contents, mode).map_err(|io| {
        // Best effort: a leftover is harmless, it is replaced next time.
        let _ = fs::remove_file(&tmp);
        FirstRunError::Write {
            path: path.to_path_buf(),
            io,
        }
    })?;
    created.push(path.to_path_buf());
    Ok(())
}

fn write_then_rename(tmp: &Path, path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    // A leftover from an interrupted run may carry other permissions, and
    // the mode below only applies to a file this call creates.
    match fs::remove_file(tmp) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
        _ => {}
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(tmp)?;
    file.write_all(contents)?;
    // Without this, a power cut soon after the rename can leave an empty
    // file under the final name on common Linux file systems.
    file.sync_all()?;
    fs::rename(tmp, path)?;
    sync_parent(path)
}

/// Makes the rename itself durable.
#[cfg(unix)]
fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

/// Directories cannot be opened for syncing here; the rename is as durable
/// as the platform makes it.
#[cfg(not(unix))]
fn sync_parent(_path: &Path) -> io::Result<()> {
    Ok(())
}

fn temporary_name(path: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(".tmp");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests;
