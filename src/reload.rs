//! Hot reload of the key set and the TLS certificate.
//!
//! Operators rotate keys on an edge box by dropping files, with no restart.
//! A [`Reloader`] re-reads both kinds of material and swaps them in:
//!
//! - the key set through [`KeyStore::reload`], which keeps a broken file's
//!   previous keys and drops a removed file's keys;
//! - the server certificate through [`CertResolver::reload`], which keeps
//!   the old pair when the new one is broken or half-rotated. New handshakes
//!   see the new certificate; established connections keep theirs.
//!
//! After every reload the reloader bumps a generation number that live
//! connections watch: each re-checks its token against the new key set and
//! deny list, so removing a key or revoking a token closes the connections
//! that depended on it.
//!
//! Reloads are triggered by [`watch_files`] (a `notify` watcher on the keys
//! directory and the certificate's directories, debounced so that a file
//! written in several steps is read once it is complete, and following the
//! kubelet's `..data` swap of a mounted secret) and by the binary on
//! SIGHUP.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::config::TlsPaths;
use crate::keys::KeyStore;
use crate::metrics::Metrics;
use crate::tls::{CertResolver, ClientVerifier};
use crate::token::{Policy, PolicyWarning};

/// How long the files must be quiet before a reload: editors, `cp` and
/// `tar` write a file in several steps.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Re-reads keys and certificate and tells live connections.
pub struct Reloader {
    keys: Arc<KeyStore>,
    certs: Arc<CertResolver>,
    tls: TlsPaths,
    generation: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    /// The gateway's policy, to say what is unsafe about it with the keys
    /// in force (a JWK set dropped in without `[auth] audience`).
    policy: Policy,
    /// The warnings last logged, so a reload logs only what is new.
    warned: Mutex<Vec<PolicyWarning>>,
    /// The last reload's outcome, for `jwtgate status`.
    last: Mutex<Option<LastReload>>,
    /// With `[tls] client_ca`: the client certificates' CAs, reloaded
    /// with the server certificate.
    clients: Option<Arc<ClientVerifier>>,
}

/// How the last reload went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastReload {
    pub at: SystemTime,
    /// Every file read and put in force.
    pub ok: bool,
    /// The first thing that went wrong, when something did: what was
    /// left out (and kept from before), or why nothing was loaded.
    pub problem: Option<String>,
}

impl Reloader {
    pub fn new(
        keys: Arc<KeyStore>,
        certs: Arc<CertResolver>,
        tls: TlsPaths,
        metrics: Arc<Metrics>,
        policy: Policy,
    ) -> Reloader {
        Reloader {
            policy,
            warned: Mutex::default(),
            last: Mutex::default(),
            clients: None,
            keys,
            certs,
            tls,
            generation: watch::channel(0).0,
            metrics,
        }
    }

    /// Reloads `clients`' CA file (`[tls] client_ca`) too.
    pub fn with_client_verifier(mut self, clients: Option<Arc<ClientVerifier>>) -> Reloader {
        self.clients = clients;
        self
    }

    /// Reloads keys and certificate, logs what happened, and wakes every
    /// connection to re-check its token. A failure leaves the material in
    /// force untouched.
    pub fn reload(&self) {
        let mut problem = match self.keys.reload() {
            Ok(report) => {
                report.log();
                self.metrics.key_reload(report.issues.is_empty());
                self.warn_about_policy();
                report.issues.first().map(ToString::to_string)
            }
            Err(e) => {
                error!(error = %e, "key reload failed; the keys in force are kept");
                self.metrics.key_reload(false);
                Some(e.to_string())
            }
        };
        match self.certs.reload(&self.tls.cert, &self.tls.key) {
            Ok(()) => debug!(cert = %self.tls.cert.display(), "server certificate loaded"),
            Err(e) => {
                error!(error = %e, "TLS reload failed; the certificate in force is kept");
                problem.get_or_insert_with(|| e.to_string());
            }
        }
        if let (Some(clients), Some(ca)) = (&self.clients, &self.tls.client_ca) {
            if let Err(e) = clients.reload(ca) {
                error!(error = %e, "client CA reload failed; the client CAs in force are kept");
                problem.get_or_insert_with(|| e.to_string());
            }
        }
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(LastReload {
            at: SystemTime::now(),
            ok: problem.is_none(),
            problem,
        });
        self.generation.send_modify(|g| *g += 1);
    }

    /// How the last reload since start went; `None` before the first.
    pub fn last_reload(&self) -> Option<LastReload> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Logs what is unsafe about the policy with the keys now in force, once
    /// per warning: at start, and after a reload that brought it (a JWK set
    /// arriving by reload needs `[auth] audience` as much as one present at
    /// start).
    pub fn warn_about_policy(&self) {
        let warnings = self.policy.warnings(&self.keys.snapshot());
        let mut warned = self.warned.lock().unwrap_or_else(PoisonError::into_inner);
        for warning in warnings.iter().filter(|w| !warned.contains(w)) {
            warn!("{warning}");
        }
        *warned = warnings;
    }

    /// Resolves each time a reload has happened.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// The directories whose changes call for a reload.
    fn watched_dirs(&self) -> BTreeSet<PathBuf> {
        let mut dirs = BTreeSet::new();
        dirs.insert(self.keys.dir().to_path_buf());
        for file in [&self.tls.cert, &self.tls.key]
            .into_iter()
            .chain(self.tls.client_ca.as_ref())
        {
            if let Some(parent) = file.parent() {
                dirs.insert(parent.to_path_buf());
            }
        }
        dirs
    }
}

/// True for the files a change to which means nothing: the dotfiles and
/// `*.tmp` files of an atomic drop, before their rename.
///
/// Names starting with `..` are the kubelet's, never scratch: a mounted
/// Kubernetes secret or config map holds its files in a timestamped
/// `..2026_12_01_14_00_00.123456789/` directory, reached through the
/// `..data` link, and each key file is a link through `..data`. An update
/// writes a new timestamped directory and renames `..data_tmp` over
/// `..data`; the key files' own links never change, so these are the only
/// events an update makes. (Kubernetes refuses keys starting with `..`, so
/// no key file is named like this; the loader skips them as dotfiles.)
fn is_scratch(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !name.starts_with("..") && (name.starts_with('.') || name.ends_with(".tmp"))
}

/// True for an event that may change what a reload reads. Reading the
/// files must not count: a reload opens every one (and may update access
/// times), and so does `jwtgate mint` or `check`; each would trigger the
/// next reload.
fn is_change(event: &notify::Event) -> bool {
    use notify::EventKind;
    use notify::event::ModifyKind;
    let relevant = match event.kind {
        EventKind::Modify(ModifyKind::Metadata(_)) | EventKind::Access(_) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any => true,
        EventKind::Other => false,
    };
    relevant && !event.paths.iter().all(|p| is_scratch(p))
}

/// Watches the keys directory and the certificate's directories and
/// reloads after each burst of changes, until the returned task is dropped
/// or aborted.
pub fn watch_files(reloader: Arc<Reloader>) -> Result<tokio::task::JoinHandle<()>, notify::Error> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher: RecommendedWatcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            Ok(event) if is_change(&event) => {
                let _ = tx.send(());
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "file watcher error"),
        })?;
    for dir in reloader.watched_dirs() {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        info!(dir = %dir.display(), "watching for key and certificate changes");
    }
    Ok(tokio::spawn(async move {
        // The watcher stops when dropped; it lives as long as this task.
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            // Wait for a quiet moment, then read everything once.
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            let reloader = Arc::clone(&reloader);
            if let Err(e) = tokio::task::spawn_blocking(move || reloader.reload()).await {
                error!(error = %e, "reload task failed");
            }
        }
    }))
}

#[cfg(test)]
mod tests;
