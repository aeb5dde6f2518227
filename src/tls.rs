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
//! All cryptography goes through the aws-lc-rs provider, named explicitly so
//! that the configuration does not depend on a process-wide default.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_rustls::rustls;
use tokio_rustls::rustls::crypto::{CryptoProvider, aws_lc_rs};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{ClientConfig, InconsistentKeys, RootCertStore, ServerConfig};

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

/// The server configuration: TLS 1.3 and 1.2, no client certificates (the
/// device proves itself with its JWT), and session resumption by stateless
/// ticket and by session ID.
///
/// No ALPN protocol is configured, so rustls neither requires nor rejects
/// one: devices may offer "mqtt" or nothing at all.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use ::aws_lc_rs::encoding::AsDer;
    use ::aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::client::{Resumption, Tls12Resumption};
    use tokio_rustls::rustls::pki_types::ServerName;
    use tokio_rustls::rustls::{
        ClientConfig, DEFAULT_VERSIONS, HandshakeKind, RootCertStore, SupportedProtocolVersion,
    };
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::firstrun::{DevTls, write_dev_tls};

    fn dev_tls() -> (tempfile::TempDir, DevTls) {
        let dir = tempfile::tempdir().expect("temp dir");
        let tls = write_dev_tls(dir.path()).expect("dev TLS material");
        (dir, tls)
    }

    fn ca_path(tls: &DevTls) -> &Path {
        tls.ca_cert.as_deref().expect("fresh directory has a CA")
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let body = STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|line| std::str::from_utf8(line).expect("base64 is ASCII"))
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    fn leaf(resolver: &CertResolver) -> CertificateDer<'static> {
        resolver.current().cert[0].clone()
    }

    /// A client that trusts only the development CA at `ca`.
    fn client_config(ca: &Path, versions: &[&'static SupportedProtocolVersion]) -> ClientConfig {
        let mut roots = RootCertStore::empty();
        for cert in read_certificates(ca).expect("CA certificate") {
            roots.add(cert).expect("CA certificate is valid");
        }
        ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(versions)
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth()
    }

    struct Handshake {
        served_leaf: CertificateDer<'static>,
        kind: Option<HandshakeKind>,
    }

    /// Runs a full handshake over an in-memory pipe, exchanges one byte each
    /// way (which also delivers TLS 1.3 tickets to the client), and reports
    /// what the client saw.
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Handshake {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let serve = tokio::spawn(async move {
            let mut tls = TlsAcceptor::from(server)
                .accept(server_io)
                .await
                .expect("server handshake");
            let mut byte = [0u8; 1];
            tls.read_exact(&mut byte).await.expect("server read");
            tls.write_all(&byte).await.expect("server write");
            tls.flush().await.expect("server flush");
        });
        let mut tls = TlsConnector::from(client)
            .connect(name, client_io)
            .await
            .expect("client handshake");
        tls.write_all(b"x").await.expect("client write");
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.expect("client read");
        serve.await.expect("server task");
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.alpn_protocol(), None, "server must not negotiate ALPN");
        Handshake {
            served_leaf: conn.peer_certificates().expect("server certificate")[0].clone(),
            kind: conn.handshake_kind(),
        }
    }

    #[test]
    fn loads_generated_pkcs8_pair() {
        let (_dir, tls) = dev_tls();
        let key = load_certified_key(&tls.server_cert, &tls.server_key).expect("pair loads");
        assert_eq!(key.cert.len(), 1);
    }

    #[test]
    fn loads_sec1_key() {
        let (dir, tls) = dev_tls();
        let PrivateKeyDer::Pkcs8(pkcs8) = read_private_key(&tls.server_key).expect("key") else {
            panic!("generated key is PKCS#8");
        };
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.secret_pkcs8_der())
                .expect("P-256 key");
        let der = pair.private_key().as_der().expect("SEC1 encoding");
        let sec1 = dir.path().join("sec1.key");
        fs::write(&sec1, pem("EC PRIVATE KEY", der.as_ref())).expect("write SEC1 key");
        assert!(matches!(
            read_private_key(&sec1).expect("SEC1 key"),
            PrivateKeyDer::Sec1(_)
        ));
        load_certified_key(&tls.server_cert, &sec1).expect("SEC1 pair loads");
    }

    #[test]
    fn mismatched_pair_is_refused() {
        let (_one, first) = dev_tls();
        let (_two, second) = dev_tls();
        let err = load_certified_key(&first.server_cert, &second.server_key)
            .expect_err("mismatched pair");
        assert!(
            matches!(&err, TlsError::KeyMismatch { cert, key }
                if *cert == first.server_cert && *key == second.server_key),
            "{err}"
        );
    }

    /// The variant's name and the file it blames.
    fn blamed(err: &TlsError) -> (&'static str, &Path) {
        match err {
            TlsError::Read { path, .. } => ("Read", path),
            TlsError::Pem { path, .. } => ("Pem", path),
            TlsError::NoCertificate { path } => ("NoCertificate", path),
            TlsError::NoPrivateKey { path } => ("NoPrivateKey", path),
            TlsError::UnsupportedKey { path, .. } => ("UnsupportedKey", path),
            TlsError::InvalidCertificate { path, .. } => ("InvalidCertificate", path),
            TlsError::KeyMismatch { key, .. } => ("KeyMismatch", key),
            TlsError::Config(_) => ("Config", Path::new("")),
            TlsError::InvalidCa { path, .. } => ("InvalidCa", path),
            TlsError::NoSystemRoots => ("NoSystemRoots", Path::new("")),
            TlsError::ClientConfig(_) => ("ClientConfig", Path::new("")),
        }
    }

    #[test]
    fn bad_files_are_refused_by_name() {
        let (dir, tls) = dev_tls();
        let (cert, key) = (tls.server_cert.as_path(), tls.server_key.as_path());
        let file = |name: &str, contents: &[u8]| {
            let path = dir.path().join(name);
            fs::write(&path, contents).expect("write test file");
            path
        };
        let empty = file("empty.pem", b"");
        let garbage = file("garbage.pem", b"this is not PEM\n");
        let broken = file(
            "broken.pem",
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let not_der = file("not-der.pem", pem("CERTIFICATE", b"not DER").as_bytes());
        let not_key = file("not-key.pem", pem("PRIVATE KEY", b"not a key").as_bytes());
        let missing = dir.path().join("missing.pem");

        let cases: [(&Path, &Path, &str, &Path); 9] = [
            (&empty, key, "NoCertificate", &empty),
            (&garbage, key, "NoCertificate", &garbage),
            (&broken, key, "Pem", &broken),
            (&not_der, key, "InvalidCertificate", &not_der),
            (&missing, key, "Read", &missing),
            (cert, &empty, "NoPrivateKey", &empty),
            (cert, &garbage, "NoPrivateKey", &garbage),
            // A certificate where the key belongs: swapped arguments.
            (cert, cert, "NoPrivateKey", cert),
            (cert, &not_key, "UnsupportedKey", &not_key),
        ];
        for (cert, key, variant, path) in cases {
            let err = load_certified_key(cert, key).expect_err("bad input refused");
            assert_eq!(blamed(&err), (variant, path), "{err}");
            assert!(
                err.to_string().contains(&path.display().to_string()),
                "{err}"
            );
        }
    }

    #[test]
    fn failed_reload_keeps_old_pair() {
        let (_one, first) = dev_tls();
        let (_two, second) = dev_tls();
        let resolver = CertResolver::load(&first.server_cert, &first.server_key).expect("load");
        let before = leaf(&resolver);
        let err = resolver
            .reload(&second.server_cert, &first.server_key)
            .expect_err("half-rotated pair");
        assert!(matches!(err, TlsError::KeyMismatch { .. }));
        let err = resolver
            .reload(&first.server_cert.with_extension("gone"), &first.server_key)
            .expect_err("missing file");
        assert!(matches!(err, TlsError::Read { .. }));
        assert_eq!(leaf(&resolver), before);
    }

    #[tokio::test]
    async fn reload_swaps_served_certificate() {
        let (_one, first) = dev_tls();
        let (_two, second) = dev_tls();
        let resolver =
            Arc::new(CertResolver::load(&first.server_cert, &first.server_key).expect("load"));
        let server = server_config(resolver.clone()).expect("config");
        let name = ServerName::try_from("localhost").expect("name");

        let old_client = Arc::new(client_config(ca_path(&first), DEFAULT_VERSIONS));
        let old = handshake(server.clone(), old_client, name.clone()).await;
        assert_eq!(old.served_leaf, leaf(&resolver));

        resolver
            .reload(&second.server_cert, &second.server_key)
            .expect("good pair");
        let new_client = Arc::new(client_config(ca_path(&second), DEFAULT_VERSIONS));
        let new = handshake(server, new_client, name).await;
        assert_ne!(new.served_leaf, old.served_leaf);
        assert_eq!(new.served_leaf, leaf(&resolver));
    }

    #[tokio::test]
    async fn handshakes_by_name_and_by_ip() {
        let (_dir, tls) = dev_tls();
        let resolver =
            Arc::new(CertResolver::load(&tls.server_cert, &tls.server_key).expect("load"));
        let server = server_config(resolver).expect("config");
        let plain = client_config(ca_path(&tls), DEFAULT_VERSIONS);
        // Built afresh: a clone would share the session store, and resume.
        let mut mqtt = client_config(ca_path(&tls), DEFAULT_VERSIONS);
        mqtt.alpn_protocols = vec![b"mqtt".to_vec()];
        let names = [
            ServerName::try_from("localhost").expect("name"),
            // rustls sends no SNI for an IP address.
            ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into()),
            ServerName::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST).into()),
        ];
        // Devices may offer ALPN "mqtt" or no ALPN at all; neither is refused.
        for client in [Arc::new(plain), Arc::new(mqtt)] {
            for name in names.clone() {
                let done = handshake(server.clone(), client.clone(), name).await;
                assert_eq!(done.kind, Some(HandshakeKind::Full));
            }
        }
    }

    #[tokio::test]
    async fn sessions_resume_on_tls12_and_tls13() {
        let (_dir, tls) = dev_tls();
        let resolver =
            Arc::new(CertResolver::load(&tls.server_cert, &tls.server_key).expect("load"));
        let server = server_config(resolver).expect("config");
        let cases = [
            (&rustls::version::TLS13, Tls12Resumption::SessionIdOrTickets),
            (&rustls::version::TLS12, Tls12Resumption::SessionIdOrTickets),
            // Many embedded TLS stacks resume by session ID only, which
            // exercises the server's session cache rather than its tickets.
            (&rustls::version::TLS12, Tls12Resumption::SessionIdOnly),
        ];
        for (version, tls12) in cases {
            // A fresh client per case, so the second connection can only
            // resume a session from the first.
            let mut client = client_config(ca_path(&tls), &[version]);
            client.resumption = Resumption::in_memory_sessions(8).tls12_resumption(tls12);
            let client = Arc::new(client);
            let name = ServerName::try_from("localhost").expect("name");
            let first = handshake(server.clone(), client.clone(), name.clone()).await;
            assert_eq!(
                first.kind,
                Some(HandshakeKind::Full),
                "{version:?} {tls12:?}"
            );
            let again = handshake(server.clone(), client, name).await;
            assert_eq!(
                again.kind,
                Some(HandshakeKind::Resumed),
                "{version:?} {tls12:?}"
            );
        }
    }
}
