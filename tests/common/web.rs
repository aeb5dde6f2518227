//! The web clients' side of the tests: the npm packages in `tests/web`
//! (mqtt.js, puppeteer-core), installed on first use from its lock file,
//! and where the WebSocket listener of a gateway started with
//! [`WEBSOCKET`] is.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use super::DevBinary;

/// The config table that turns the WebSocket listener on, on port 0.
pub const WEBSOCKET: &str = "[websocket]\nlisten = \"127.0.0.1:0\"\n";

/// `tests/web`, its npm packages installed (`npm ci`, from
/// `package-lock.json`) if they are not yet. Panics naming what to install
/// when Node.js or npm is missing.
pub fn packages() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/web"));
        let installed = ["mqtt", "puppeteer-core"].iter().all(|package| {
            dir.join("node_modules")
                .join(package)
                .join("package.json")
                .is_file()
        });
        if !installed {
            let status = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir)
                .stdin(Stdio::null())
                .status()
                .unwrap_or_else(|e| {
                    panic!("npm: {e}: install the Debian packages `nodejs` and `npm`")
                });
            assert!(
                status.success(),
                "npm ci in {} failed: {status}",
                dir.display()
            );
        }
        dir
    })
}

/// `wss://localhost:PORT/mqtt` of `gw`'s WebSocket listener.
pub fn url(gw: &DevBinary) -> String {
    let addr = gw
        .served
        .ready()
        .websocket
        .expect("the gateway was started with [websocket] listen");
    format!("wss://localhost:{}/mqtt", addr.port())
}

/// The development CA the gateway's certificate is issued by.
pub fn ca_file(gw: &DevBinary) -> PathBuf {
    let ca = gw.keys_dir().join("tls").join("ca.crt");
    assert!(ca.is_file(), "no development CA at {}", ca.display());
    ca
}
