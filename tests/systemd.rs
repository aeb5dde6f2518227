//! The gateway under systemd (issue 13): the real binary with
//! `NOTIFY_SOCKET` pointing at a datagram socket the test owns and a
//! watchdog asked for with `WATCHDOG_USEC`.

// Tests panic on purpose when a fixture cannot be set up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::{DevBinary, RawClient, WAIT};

/// The watchdog interval asked for: pings are due at half of it (1.5 s),
/// and systemd would kill the service after a whole interval without one.
const WATCHDOG: Duration = Duration::from_secs(3);

/// systemd's end of the notification socket.
struct Systemd {
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
    path: String,
}

impl Systemd {
    fn new() -> Systemd {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        Systemd {
            socket,
            path: path.to_string_lossy().into_owned(),
            _dir: dir,
        }
    }

    /// The next message, or `None` after `within`.
    fn next(&self, within: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(within)).expect("timeout");
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Messages until one starts with `prefix` (which is returned), for up
    /// to [`WAIT`].
    fn until(&self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.next(left) {
                Some(message) if message.starts_with(prefix) => return message,
                Some(_) => {}
                None => break,
            }
        }
        panic!("no {prefix:?} from the gateway within {WAIT:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_watchdog_status_reload_and_stop_reach_systemd() {
    let systemd = Systemd::new();
    let usec = WATCHDOG.as_micros().to_string();
    let mut gw = DevBinary::start_with_env(
        "",
        "",
        &[
            ("NOTIFY_SOCKET", &systemd.path),
            ("WATCHDOG_USEC", &usec),
            ("JWTGATE_TEST_HOOKS", "1"),
        ],
    )
    .await;

    // READY=1, and by then a TLS handshake is served.
    assert_eq!(systemd.until("READY=1"), "READY=1");
    drop(RawClient::connect(gw.addr(), &gw.ca).await);

    // Pings, each with the status line, at about half the interval. Both
    // bounds are generous for a loaded machine and still mean something:
    // never a whole interval apart (systemd would kill the service), and
    // not at a rate several times the one asked for (the gateway's own
    // check of the routing core may delay one ping by up to a quarter of
    // the interval, so the next can come that much sooner).
    let first = systemd.until("WATCHDOG=1");
    assert!(first.contains("STATUS=keys 1, connections 0, "), "{first}");
    let (at_least, below) = (WATCHDOG / 6, WATCHDOG);
    let mut at = Instant::now();
    for _ in 0..3 {
        let ping = systemd.until("WATCHDOG=1");
        let gap = at.elapsed();
        assert!(
            gap >= at_least && gap < below,
            "a ping came {gap:?} after the last; due every {:?}, expected between {at_least:?} and {below:?}: {ping}",
            WATCHDOG / 2
        );
        at = Instant::now();
    }

    // RELOADING=1 with the monotonic time, then READY=1, around SIGHUP.
    gw.served.signal("HUP");
    let reloading = systemd.until("RELOADING=1");
    assert!(reloading.contains("\nMONOTONIC_USEC="), "{reloading}");
    systemd.until("READY=1");

    // A wedged routing core stops the pings.
    gw.served.signal("USR2");
    gw.served
        .wait_for_log(0, "test hook: wedging the routing core")
        .await;
    // One ping may already be on its way.
    let _ = systemd.next(WATCHDOG / 2);
    let silence = Instant::now();
    while silence.elapsed() < WATCHDOG * 2 {
        if let Some(message) = systemd.next(WATCHDOG) {
            assert!(
                !message.starts_with("WATCHDOG=1"),
                "pinged with the routing core wedged"
            );
        }
    }
    gw.served
        .wait_for_log(0, "the routing core does not answer")
        .await;
    gw.served.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_is_said_on_sigterm() {
    let systemd = Systemd::new();
    let mut gw = DevBinary::start_with_env("", "", &[("NOTIFY_SOCKET", &systemd.path)]).await;
    systemd.until("READY=1");
    gw.served.terminate().await;
    assert_eq!(systemd.until("STOPPING=1"), "STOPPING=1");
}

/// The conffile the Debian package installs as /etc/jwtgate/jwtgate.toml
/// is valid and production-shaped: everything under /etc/jwtgate and the
/// unit's state directory, metrics on loopback; and the gateway started
/// with it, as the unit starts it, creates nothing when the keys are not
/// there yet: it refuses to start and names what is missing.
#[test]
fn the_packaged_config_is_valid_and_generates_nothing() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let conffile = root.join("systemd/deb/jwtgate.toml");
    let config = jwtgate::config::Config::load(&conffile).expect("the packaged config parses");
    let etc = std::path::Path::new("/etc/jwtgate");
    assert_eq!(config.auth.keys_dir, etc.join("keys"));
    assert_eq!(config.tls.cert, etc.join("keys/tls/server.crt"));
    assert_eq!(config.tls.key, etc.join("keys/tls/server.key"));
    assert_eq!(
        config.storage.dir,
        std::path::Path::new("/var/lib/jwtgate"),
        "the unit's StateDirectory="
    );
    let metrics = config.metrics.listen.expect("metrics on");
    assert!(metrics.ip().is_loopback(), "{metrics}");
    let unit = std::fs::read_to_string(root.join("systemd/jwtgate.service")).unwrap();
    assert!(
        unit.contains("\nExecStart=/usr/bin/jwtgate serve --config /etc/jwtgate/jwtgate.toml\n"),
        "the unit starts the packaged binary with the packaged config"
    );
    assert!(unit.contains("\nStateDirectory=jwtgate\n"));
    assert_eq!(
        config.admin.socket.as_deref(),
        Some(std::path::Path::new("/run/jwtgate/admin.sock")),
        "the admin socket under the unit's RuntimeDirectory="
    );
    assert!(unit.contains("\nRuntimeDirectory=jwtgate\n"));
    assert_eq!(
        config.log.format,
        jwtgate::config::LogFormat::Auto,
        "native journal entries under the unit"
    );

    // On a machine without the package installed: started as the unit
    // starts it, before keys and certificate exist, it says so and stops.
    if etc.exists() {
        eprintln!("/etc/jwtgate exists here; not starting the packaged config");
        return;
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .args(["serve", "--config"])
        .arg(&conffile)
        .output()
        .expect("run jwtgate serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("/etc/jwtgate/keys"), "{stderr}");
    assert!(!etc.exists(), "the gateway created /etc/jwtgate: {stderr}");
}
