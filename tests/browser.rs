//! mqtt.js in a real browser against the real binary (issue 21): headless
//! Chromium (Debian's `chromium`, driven by puppeteer-core from
//! `tests/web/browser.mjs`) loads mqtt.js's browser bundle into a page,
//! which connects over WSS with username `JWT` and a token granting
//! `browser/#`, at MQTT 5 and 3.1.1 side by side. Each browser client is
//! granted its filter, refused `other/#` in the SUBACK (0x87 / 0x80),
//! receives its own message and a device's retained one, and a device on
//! TLS (rumqttc) receives the browsers' messages: one routing core for
//! both transports.
//!
//! Chromium trusts the development CA through an NSS database in a
//! throw-away HOME (`certutil`, Debian's `libnss3-tools`), so its own
//! certificate verification accepts the gateway; a second profile without
//! the CA must be refused with `ERR_CERT_AUTHORITY_INVALID`, which shows
//! the first was verified and not waved through. `tests/web/browser.mjs`
//! says why the NSS database and not a pinned key.
//!
//! Needs Node.js and npm (`tests/web`'s packages are installed on first
//! use); `chromium` and `libnss3-tools` are installed here when missing,
//! as `.ci/run` does.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::web::{self, ca_file};
use common::{DevBinary, V4Client};
use rumqttc::{ConnectReturnCode, QoS, SubscribeReasonCode};
use serde::Deserialize;
use serde_json::json;
use tokio::process::Command;

const HOUR: Duration = Duration::from_secs(3600);
const CHROMIUM: &str = "/usr/bin/chromium";
/// How long the page waits for each answer it expects. Only there to fail
/// instead of hanging: the exchange itself takes milliseconds, but
/// Chromium's renderer shares two loaded cores with the build.
const PAGE_WAIT: Duration = Duration::from_secs(20);
/// The whole of `browser.mjs`, two Chromium starts included.
const SCRIPT_WAIT: Duration = Duration::from_secs(120);

/// What `browser.mjs` reports.
#[derive(Debug, Deserialize)]
struct Report {
    browser: String,
    clients: Vec<ClientReport>,
    /// The page's console: Chromium's own words on a failed WebSocket.
    console: Vec<String>,
    untrusted: Untrusted,
}

/// One in-page client, its codes as read off the packets.
#[derive(Debug, Deserialize)]
struct ClientReport {
    id: String,
    version: u8,
    connack: Option<u8>,
    /// Filter to the SUBACK's return / reason codes.
    suback: std::collections::BTreeMap<String, Vec<u8>>,
    puback: Option<u8>,
    received: Vec<Received>,
    error: Option<String>,
}

/// A PUBLISH the page received.
#[derive(Debug, Deserialize, PartialEq, Eq)]
struct Received {
    topic: String,
    payload: String,
    qos: u8,
    retain: bool,
}

/// The profile that does not trust the development CA.
#[derive(Debug, Deserialize)]
struct Untrusted {
    connected: bool,
    /// Why its page stopped, as mqtt.js saw it.
    error: Option<String>,
    net_error: Option<String>,
    console: Vec<String>,
}

/// Chromium, and `certutil` for its profile's trust store, installed
/// from Debian's packages when missing, as `.ci/run` installs them (with
/// `sudo` when not root).
fn chromium() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let mut missing = Vec::new();
        if !Path::new(CHROMIUM).is_file() {
            missing.push("chromium");
        }
        if !on_path("certutil") {
            missing.push("libnss3-tools");
        }
        if !missing.is_empty() {
            apt_install(&missing);
        }
        assert!(
            Path::new(CHROMIUM).is_file(),
            "{CHROMIUM} is missing after installing the Debian package `chromium`"
        );
        PathBuf::from(CHROMIUM)
    })
}

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
}

/// `apt-get install`, through `sudo` when not root: a failure panics, so
/// a missing tool is reported as such and not as a failed exchange.
fn apt_install(packages: &[&str]) {
    eprintln!("installing {}", packages.join(" "));
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0");
    let run = |args: &[&str]| {
        let mut command = if root {
            std::process::Command::new(args[0])
        } else {
            let mut sudo = std::process::Command::new("sudo");
            sudo.arg(args[0]);
            sudo
        };
        let status = command
            .args(&args[1..])
            .stdin(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
        assert!(status.success(), "{}: {status}", args.join(" "));
    };
    run(&["apt-get", "update", "-qq"]);
    // Through env: sudo's env_reset would drop a plain VAR=value prefix.
    let mut install = vec![
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "install",
        "-y",
        "-qq",
    ];
    install.extend_from_slice(packages);
    run(&install);
}

/// Runs `browser.mjs` with `spec` and parses its one line; panics with its
/// stderr when it could not run the exchange.
async fn run_browser(spec: serde_json::Value) -> Report {
    let dir = web::packages();
    let child = Command::new("node")
        .arg(dir.join("browser.mjs"))
        .arg(spec.to_string())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn node (install the Debian packages `nodejs` and `npm`)");
    let out = tokio::time::timeout(SCRIPT_WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("browser.mjs gave no result within {SCRIPT_WAIT:?}"))
        .expect("wait for browser.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "browser.mjs failed ({}):\n{stderr}\nstdout:\n{stdout}",
        out.status
    );
    let line = stdout
        .lines()
        .last()
        .unwrap_or_else(|| panic!("browser.mjs printed nothing; stderr:\n{stderr}"));
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("browser.mjs's report {line:?}: {e}; stderr:\n{stderr}"))
}

/// Headless Chromium running mqtt.js's browser bundle connects over WSS
/// at MQTT 5 and 3.1.1, trusting the development CA, and is served by the
/// same routing core and the same grants as a device on TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_js_in_headless_chromium_over_wss() {
    let chromium = chromium();
    let gw = DevBinary::start("", web::WEBSOCKET).await;

    // The device's retained messages are there before the browsers
    // subscribe: the one in their grant reaches them from the store, the
    // other direction of the exchange without timing two processes against
    // each other; the one outside it would reach them if `other/#` were
    // granted in fact whatever its SUBACK said.
    let retained = ("browser/from-device", "retained from tls");
    let forbidden = ("other/from-device", "not for browsers");
    let device_token = gw.token("device", &["browser/#", "other/#"], HOUR);
    let mut device = V4Client::start(gw.v4_options("device", &device_token));
    assert_eq!(device.connack().await.code, ConnectReturnCode::Success);
    for (topic, payload) in [retained, forbidden] {
        device
            .publish(topic, QoS::AtLeastOnce, true, payload.as_bytes())
            .await;
    }
    assert_eq!(
        device.subscribe("browser/+/hello", QoS::AtLeastOnce).await,
        [SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    let versions = [(5u8, 0x87u8), (4, 0x80)];
    let clients: Vec<_> = versions
        .iter()
        .map(|&(version, _)| {
            let id = format!("browser-v{version}");
            let own = format!("browser/{version}/hello");
            json!({
                "id": id,
                "version": version,
                "token": gw.token(&id, &["browser/#"], HOUR),
                "subscribe": "browser/#",
                "refused": "other/#",
                "publish": own,
                "payload": format!("from chromium, mqtt v{version}"),
                "await": [own, retained.0],
            })
        })
        .collect();
    let started = Instant::now();
    let report = run_browser(json!({
        "chromium": chromium,
        "url": web::url(&gw),
        "ca": ca_file(&gw),
        "wait_ms": PAGE_WAIT.as_secs() * 1000,
        "untrusted_control": true,
        "clients": clients,
    }))
    .await;
    eprintln!(
        "{} ran the exchange in {:?}",
        report.browser,
        started.elapsed()
    );

    assert_eq!(report.clients.len(), versions.len());
    for (client, &(version, refused)) in report.clients.iter().zip(&versions) {
        let who = format!(
            "{} (MQTT v{version}): {client:?}; the page's console: {:?}",
            client.id, report.console
        );
        assert_eq!(client.version, version, "{who}");
        assert_eq!(client.error, None, "{who}");
        assert_eq!(client.connack, Some(0), "{who}");
        assert_eq!(
            client.suback.get("browser/#"),
            Some(&vec![1]),
            "granted at QoS 1: {who}"
        );
        assert_eq!(
            client.suback.get("other/#"),
            Some(&vec![refused]),
            "outside the grant: {who}"
        );
        assert_eq!(client.puback, Some(0), "{who}");
        let own = Received {
            topic: format!("browser/{version}/hello"),
            payload: format!("from chromium, mqtt v{version}"),
            qos: 1,
            retain: false,
        };
        assert!(client.received.contains(&own), "its own message: {who}");
        let from_device = Received {
            topic: retained.0.into(),
            payload: retained.1.into(),
            qos: 1,
            retain: true,
        };
        assert!(
            client.received.contains(&from_device),
            "the device's retained message: {who}"
        );
        assert!(
            client.received.iter().all(|m| m.topic != forbidden.0),
            "nothing outside its grant: {who}"
        );
    }

    // The refusal is behaviour (no CONNACK); its reason, the certificate,
    // Chromium gives only in the page's console.
    let untrusted = &report.untrusted;
    assert!(
        !untrusted.connected,
        "a profile without the CA connected; its console: {:?}",
        untrusted.console
    );
    let why = format!(
        "{:?}; its console: {:?}",
        untrusted.error, untrusted.console
    );
    assert_eq!(
        untrusted.net_error.as_deref(),
        Some("ERR_CERT_AUTHORITY_INVALID"),
        "a profile without the CA is refused on the certificate: {why}"
    );
    let mut got: Vec<(String, String)> = device
        .publishes_expecting(versions.len())
        .await
        .into_iter()
        .map(|p| {
            let payload = String::from_utf8_lossy(&p.payload).into_owned();
            (p.topic, payload)
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = versions
        .iter()
        .map(|&(version, _)| {
            (
                format!("browser/{version}/hello"),
                format!("from chromium, mqtt v{version}"),
            )
        })
        .collect();
    want.sort();
    assert_eq!(
        got, want,
        "the device on TLS receives the browsers' messages"
    );

    gw.assert_no_panic();
}
