//! TLS: the certificate devices see and the rustls configuration that
//! serves it, and the client configuration an uplink reaches its central
//! broker with ([`client_config`]).
//!
//! The model is one certificate chain and private key, held as a rustls
//! [`CertifiedKey`] behind an [`ArcSwap`] in a [`CertResolver`]. Every new
//! handshake takes whatever pair is current at that instant; a handshake
//! already under way (and every established connection) keeps the pair it
//! started with. [`CertResolver::reload`] validates a new pair completely
//! before swapping it in, so a failed rotation leaves the gateway serving the
//! old certificate rather than no certificate.
//!
//! A pair is only accepted when the private key belongs to the leaf
//! certificate: during a rotation the certificate and key files are replaced
//! one after the other, and serving a half-rotated pair would fail every
//! handshake with an error the devices cannot explain.
//!
//! With `[tls] client_ca`, the listeners ask for client certificates
//! ([`ClientVerifier`], swappable like the server certificate), whose
//! [`thumbprint`] a certificate-bound token is checked against.
//!
//! Devices' connections are [`stream::TlsStream`]s, which hold no buffer
//! while a device is quiet.
//!
//! All cryptography goes through the aws-lc-rs provider, named explicitly so
//! that the configuration does not depend on a process-wide default.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::{CryptoProvider, aws_lc_rs};
use tokio_rustls::rustls::pki_types::UnixTime;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, WebPkiClientVerifier,
};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, Error, InconsistentKeys, RootCertStore,
    ServerConfig, SignatureScheme,
};

/// Sessions remembered for TLS 1.2 clients that resume by session ID rather
/// than by ticket (common in embedded TLS stacks). An entry costs a few
/// hundred bytes, so this is about 2 MiB at worst: small enough for an edge
/// box, large enough that a fleet of thousands reconnecting after a power cut
/// mostly resumes instead of doing full handshakes.
const SESSION_CACHE_ENTRIES: usize = 8192;

/// Why a certificate, key or TLS configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read at all.
    #[error("cannot read {}: {io}", path.display())]
    Read { path: PathBuf, io: io::Error },
    /// The file has a PEM section that does not decode.
    #[error("{} is not valid PEM: {io}", path.display())]
    Pem { path: PathBuf, io: io::Error },
    /// The certificate file holds no `CERTIFICATE` section.
    #[error("{} contains no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    /// The key file holds no PKCS#8, PKCS#1 or SEC1 private key.
    #[error(
        "{} contains no PEM private key (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
        path.display()
    )]
    NoPrivateKey { path: PathBuf },
    /// The private key decodes but the provider cannot sign with it.
    #[error("private key in {} cannot be used: {reason}", path.display())]
    UnsupportedKey {
        path: PathBuf,
        reason: rustls::Error,
    },
    /// The leaf certificate is not a well-formed X.509 certificate.
    #[error("certificate in {} cannot be used: {reason}", path.display())]
    InvalidCertificate {
        path: PathBuf,
        reason: rustls::Error,
    },
    /// The key does not belong to the leaf certificate.
    #[error(
        "private key {} does not belong to certificate {} (half-finished rotation?)",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// rustls refused the server configuration.
    #[error("cannot build the TLS server configuration: {0}")]
    Config(rustls::Error),
    /// A CA certificate cannot be used as a trust anchor.
    #[error("CA certificate in {} cannot be used: {reason}", path.display())]
    InvalidCa {
        path: PathBuf,
        reason: rustls::Error,
    },
    /// Without a CA file, the system's trust store was needed and is empty.
    #[error(
        "the system has no trusted CA certificates (install ca-certificates) and no ca_file was given"
    )]
    NoSystemRoots,
    /// rustls refused the client configuration (a client certificate that
    /// does not fit its key, say).
    #[error("cannot build the TLS client configuration: {0}")]
    ClientConfig(rustls::Error),
    /// `[tls] client_ca` gives no CA to check client certificates with.
    #[error("[tls] client_ca {} cannot be used: {reason}", path.display())]
    ClientCa { path: PathBuf, reason: String },
}

/// Hands every new handshake the current certificate, which can be replaced
/// at run time without touching established connections.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    /// Loads the initial pair; see [`load_certified_key`] for what is checked.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            current: ArcSwap::from_pointee(load_certified_key(cert, key)?),
        })
    }

    /// Replaces the pair used for new handshakes. The new pair is fully
    /// loaded and checked first; on error the old pair stays in force.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        let fresh = load_certified_key(cert, key)?;
        self.current.store(Arc::new(fresh));
        Ok(())
    }

    /// The pair new handshakes get right now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for CertResolver {
    // One certificate for every name: devices reach the gateway by host name
    // or by bare IP address (no SNI at all), and both must succeed.
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Loads a PEM certificate chain (leaf first) and its PEM private key, and
/// checks that the key belongs to the leaf.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = read_certificates(cert)?;
    let key_der = read_private_key(key)?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|reason| TlsError::UnsupportedKey {
            path: key.to_path_buf(),
            reason,
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
        }
        // aws-lc-rs keys always expose their public half; a key that does
        // not cannot be checked, and an unchecked pair is what we refuse.
        Err(reason @ rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {
            Err(TlsError::UnsupportedKey {
                path: key.to_path_buf(),
                reason,
            })
        }
        Err(reason) => Err(TlsError::InvalidCertificate {
            path: cert.to_path_buf(),
            reason,
        }),
    }
}

/// Reads every PEM `CERTIFICATE` in `path`, in file order; at least one.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let chain = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|io| TlsError::Pem {
            path: path.to_path_buf(),
            io,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(chain)
}

/// Reads the first PEM private key in `path`: PKCS#8, PKCS#1 (RSA) or SEC1
/// (EC).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|io| TlsError::Pem {
            path: path.to_path_buf(),
            io,
        })?
        .ok_or_else(|| TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        })
}

/// The server configuration: TLS 1.3 and 1.2, client certificates only
/// with `clients` (`[tls] client_ca`: the device proves itself with its
/// JWT, a certificate only binds a token to it), and session resumption by
/// stateless ticket and by session ID.
///
/// No ALPN protocol is configured, so rustls neither requires nor rejects
/// one: devices may offer "mqtt" or nothing at all.
pub fn server_config(
    resolver: Arc<CertResolver>,
    clients: Option<Arc<ClientVerifier>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?;
    let builder = match clients {
        Some(clients) => builder.with_client_cert_verifier(clients),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(resolver);
    // Resumption skips the certificate and its signature (and in TLS 1.2
    // the key exchange too), which roughly doubles the connect rate when a
    // whole fleet reconnects at once.
    config.ticketer = aws_lc_rs::Ticketer::new().map_err(TlsError::Config)?;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES);
    Ok(Arc::new(config))
}

/// The uplink's client configuration, TLS 1.3 and 1.2: the remote's
/// certificate is verified against the certificates of `ca_file`, or the
/// system's trust store without one (never not at all); `client_cert`
/// (certificate chain, key) authenticates the bridge to brokers that ask.
pub fn client_config(
    ca_file: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_certificates(path)? {
                roots.add(cert).map_err(|reason| TlsError::InvalidCa {
                    path: path.to_path_buf(),
                    reason,
                })?;
            }
        }
        None => {
            // Unreadable entries of the store are skipped: one bad file in
            // /etc/ssl/certs must not cut the uplink off.
            let (added, _skipped) =
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if added == 0 {
                return Err(TlsError::NoSystemRoots);
            }
        }
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::ClientConfig)?
        .with_root_certificates(roots);
    let config = match client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(read_certificates(cert)?, read_private_key(key)?)
            .map_err(TlsError::ClientConfig)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn provider() -> CryptoProvider {
    aws_lc_rs::default_provider()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|io| TlsError::Read {
        path: path.to_path_buf(),
        io,
    })
}

// Client certificates. A certificate admits no one on its own: the token
// stays the credential. What a verified certificate gives is a thumbprint
// a certificate-bound token (RFC 8705, `cnf.x5t#S256`) is checked against,
// so that a token copied off a device is useless without the device's
// private key. rustls fixes a server's client verifier when its
// configuration is built, so `ClientVerifier` is one that stays and
// delegates every check to the webpki verifier of the CA file in force,
// swapped by `reload` (a broken file keeps the CAs in force). It hints no
// CA names in its certificate request: the hints are fixed per
// configuration, and clients (OpenSSL, rustls, the Python and Node
// stacks) send the certificate they were given without them.

/// The client verifier of the gateway's listeners.
#[derive(Debug)]
pub struct ClientVerifier {
    current: ArcSwap<Current>,
    required: bool,
}

#[derive(Debug)]
struct Current(Arc<dyn ClientCertVerifier>);

impl ClientVerifier {
    /// Reads the CA certificates of `ca`; with `required`, a handshake
    /// without a client certificate fails.
    pub fn load(ca: &Path, required: bool) -> Result<ClientVerifier, TlsError> {
        Ok(ClientVerifier {
            current: ArcSwap::from_pointee(Current(build(ca, required)?)),
            required,
        })
    }

    /// Reads `ca` again and puts its CAs in force for new handshakes; on
    /// error, the CAs in force stay.
    pub fn reload(&self, ca: &Path) -> Result<(), TlsError> {
        let verifier = build(ca, self.required)?;
        self.current.store(Arc::new(Current(verifier)));
        Ok(())
    }
}

fn build(ca: &Path, required: bool) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(ca)? {
        roots.add(cert).map_err(|reason| TlsError::InvalidCa {
            path: ca.to_path_buf(),
            reason,
        })?;
    }
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider()));
    let builder = if required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder.build().map_err(|e| TlsError::ClientCa {
        path: ca.to_path_buf(),
        reason: e.to_string(),
    })
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.required
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.current
            .load()
            .0
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.current
            .load()
            .0
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.current
            .load()
            .0
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().0.supported_verify_schemes()
    }
}

/// The RFC 8705 thumbprint of a certificate: the SHA-256 of its DER, shown
/// as base64url without padding, as a bound token's `cnf.x5t#S256` holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thumbprint([u8; 32]);

impl Thumbprint {
    pub fn of(cert: &CertificateDer<'_>) -> Thumbprint {
        let digest = ::aws_lc_rs::digest::digest(&::aws_lc_rs::digest::SHA256, cert.as_ref());
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Thumbprint(bytes)
    }
}

impl std::fmt::Display for Thumbprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use base64::Engine as _;
        f.write_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0))
    }
}

pub mod stream;

#[cfg(test)]
mod tests;
