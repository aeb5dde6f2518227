//! A real Mosquitto as the central broker for jwtgate's uplink bridge tests.
//!
//! [`Mosquitto::start`] runs the system's `mosquitto` (the Debian package,
//! 2.0.x; `.ci/run` installs it when missing) as a child process in a
//! temporary directory, configured the way a central broker would be:
//!
//! - a TLS listener on `127.0.0.1` with a server certificate for
//!   `localhost`/`127.0.0.1` signed by a CA generated here with rcgen
//!   ([`Mosquitto::ca_pem_path`] is what the bridge must trust);
//! - a plain (non-TLS) listener on `127.0.0.1` as well, for tests that do
//!   not care about the transport;
//! - no anonymous access: a password file made with `mosquitto_passwd`
//!   holding user `site-42` and a random password (the same settings on
//!   both listeners, `per_listener_settings false`);
//! - no persistence; connections, errors and warnings logged to
//!   `mosquitto.log` in its directory ([`Mosquitto::log`]), which failing
//!   starts print the tail of. Not every packet: a line per message would
//!   make the log the bottleneck of `benches/bridge.rs`.
//!
//! Mosquitto cannot listen on port 0 and say which port it got, so the
//! ports are picked here ([`free_port`]); the broker is ready once its log
//! says it is running (not when a connect succeeds, which another process
//! holding the port would answer too), and a start whose bind fails
//! because another process took a port meanwhile is retried (bounded).
//!
//! [`Mosquitto::stop`] and [`Mosquitto::start_again`] take the broker down
//! and bring it back on the same ports with the same files ("the remote is
//! down, then comes back"); [`Mosquitto::add_user`] adds credentials and
//! reloads with SIGHUP. Assertions go through the shared [`V4Client`]:
//! [`Mosquitto::subscriber`] is a client connected to the TLS listener and
//! subscribed to a filter, [`Mosquitto::v4_options`] the options for any
//! other client (to publish into the central broker, say). Dropping the
//! [`Mosquitto`] kills the process.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use super::{START, V4Client, WAIT, v4_options_for};

/// The user the password file is created with.
pub const USERNAME: &str = "site-42";
/// Where the Debian package puts the broker, if it is not on `PATH`.
const MOSQUITTO_FALLBACK: &str = "/usr/sbin/mosquitto";
/// How many times [`Mosquitto::start`] tries fresh ports when another
/// process took one between [`free_port`] and the broker's bind.
const START_ATTEMPTS: usize = 3;
/// How many times [`Mosquitto::start_again`] tries its ports again when
/// another process holds one (a client's ephemeral port, say), and how
/// long it waits between tries: up to about ten seconds in all.
const START_AGAIN_ATTEMPTS: usize = 20;
const START_AGAIN_PAUSE: Duration = Duration::from_millis(500);
/// What mosquitto logs when a listener's port is taken.
const PORT_TAKEN: &str = "Address already in use";
/// How much of the log a failure shows.
const LOG_TAIL_LINES: usize = 40;

const CONF: &str = "mosquitto.conf";
const LOG: &str = "mosquitto.log";
/// The broker's stdout and stderr: what it says before its log is open.
const OUTPUT: &str = "mosquitto.out";
const PASSWORDS: &str = "passwords";
const CA_CERT: &str = "ca.crt";
const SERVER_CERT: &str = "server.crt";
const SERVER_KEY: &str = "server.key";

/// A running (or stopped, see [`Mosquitto::stop`]) Mosquitto broker.
pub struct Mosquitto {
    dir: tempfile::TempDir,
    child: Option<Child>,
    tls_port: u16,
    plain_port: u16,
    ca_pem_path: PathBuf,
    username: String,
    password: String,
    /// Configuration appended to the generated file.
    extra_conf: String,
}

impl Mosquitto {
    /// Generates the certificates, the password file and the configuration
    /// in a new temporary directory, starts `mosquitto` on two free ports
    /// (fresh ones again if another process takes one first) and waits
    /// until it says it is running, both listeners bound. Panics (with the
    /// log's tail) if the broker does not come up within [`START`].
    pub async fn start() -> Mosquitto {
        Mosquitto::start_with("").await
    }

    /// As [`Mosquitto::start`], with `extra_conf` appended to the
    /// generated configuration (a bridge section, say: it comes after the
    /// listeners).
    pub async fn start_with(extra_conf: &str) -> Mosquitto {
        let dir = tempfile::Builder::new()
            .prefix("jwtgate-mosquitto-")
            .tempdir()
            .expect("create a temporary directory for mosquitto");
        let ca_pem_path = write_tls_material(dir.path());
        let password = random_password();
        run_mosquitto_passwd(&[
            "-c",
            "-b",
            path_str(&dir.path().join(PASSWORDS)),
            USERNAME,
            &password,
        ]);
        let mut broker = Mosquitto {
            dir,
            child: None,
            tls_port: 0,
            plain_port: 0,
            ca_pem_path,
            username: USERNAME.to_owned(),
            password,
            extra_conf: extra_conf.to_owned(),
        };
        for attempt in 1..=START_ATTEMPTS {
            broker.tls_port = free_port();
            broker.plain_port = free_port();
            while broker.plain_port == broker.tls_port {
                broker.plain_port = free_port();
            }
            broker.write_conf();
            match broker.launch().await {
                Ok(()) => return broker,
                Err(Launch::PortTaken(_)) if attempt < START_ATTEMPTS => {}
                Err(Launch::PortTaken(why) | Launch::Failed(why)) => {
                    panic!("mosquitto start, attempt {attempt} of {START_ATTEMPTS}: {why}")
                }
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Starts the broker again after [`Mosquitto::stop`], on the same ports
    /// with the same files (certificates, users, configuration), and waits
    /// until it runs. If another process took one of its ports meanwhile,
    /// tries again every [`START_AGAIN_PAUSE`], up to
    /// [`START_AGAIN_ATTEMPTS`] times, then panics with the log. Panics if
    /// it is still running.
    pub async fn start_again(&mut self) {
        assert!(
            !self.is_running(),
            "start_again: mosquitto is still running"
        );
        for attempt in 1..=START_AGAIN_ATTEMPTS {
            match self.launch().await {
                Ok(()) => return,
                Err(Launch::PortTaken(_)) if attempt < START_AGAIN_ATTEMPTS => {
                    tokio::time::sleep(START_AGAIN_PAUSE).await;
                }
                Err(Launch::PortTaken(why) | Launch::Failed(why)) => panic!(
                    "mosquitto start_again, attempt {attempt} of {START_AGAIN_ATTEMPTS}: {why}"
                ),
            }
        }
    }

    /// Stops the broker with SIGTERM and waits for it to exit (SIGKILL if
    /// it takes longer than [`WAIT`]). Connected clients see their
    /// connections close. Does nothing if it is not running.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + WAIT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(None) | Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "mosquitto did not exit within {WAIT:?} of SIGTERM:\n{}",
                        self.log_tail()
                    );
                }
            }
        }
    }

    /// True while the process is alive.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The TLS listener's port on `127.0.0.1` (certificate for `localhost`
    /// and `127.0.0.1`).
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// The plain TCP listener's port on `127.0.0.1`.
    pub fn plain_port(&self) -> u16 {
        self.plain_port
    }

    /// The CA certificate (PEM) that issued the broker's certificate.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_pem_path
    }

    /// The contents of [`Mosquitto::ca_pem_path`].
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.ca_pem_path).expect("read mosquitto's CA certificate")
    }

    /// The user in the password file.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// That user's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The broker's directory: configuration, certificates, password file,
    /// log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the broker logged so far (across restarts), followed by
    /// anything it wrote to stdout/stderr.
    pub fn log(&self) -> String {
        let mut log = std::fs::read_to_string(self.dir().join(LOG)).unwrap_or_default();
        let output = std::fs::read_to_string(self.dir().join(OUTPUT)).unwrap_or_default();
        if !output.trim().is_empty() {
            log.push_str("--- stdout/stderr ---\n");
            log.push_str(&output);
        }
        log
    }

    /// The last lines of [`Mosquitto::log`], for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir().join(LOG)).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let mut tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        let output = std::fs::read_to_string(self.dir().join(OUTPUT)).unwrap_or_default();
        if !output.trim().is_empty() {
            tail.push_str("\n--- stdout/stderr ---\n");
            tail.push_str(&output);
        }
        format!("--- tail of {} ---\n{tail}", self.dir().join(LOG).display())
    }

    /// Waits until the log, after its first `since` bytes, contains
    /// `needle` (e.g. a client connecting under some id). Panics after
    /// [`WAIT`].
    pub async fn wait_for_log(&self, since: usize, needle: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let log = std::fs::read_to_string(self.dir().join(LOG)).unwrap_or_default();
            if log.get(since..).unwrap_or("").contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in mosquitto's log within {WAIT:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The length of mosquitto's log now, the `since` of
    /// [`Mosquitto::wait_for_log`].
    pub fn log_len(&self) -> usize {
        std::fs::metadata(self.dir().join(LOG)).map_or(0, |m| m.len() as usize)
    }

    /// Writes the password, without a trailing newline, to `path` (mode
    /// 0600), for a bridge configuration to point at.
    pub fn write_password_file(&self, path: &Path) {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .unwrap_or_else(|e| panic!("create the password file {}: {e}", path.display()));
        file.write_all(self.password.as_bytes())
            .unwrap_or_else(|e| panic!("write the password file {}: {e}", path.display()));
    }

    /// Adds `user` with `password` to the password file (or changes its
    /// password), makes the running broker reload it (SIGHUP) and waits
    /// until a connection with those credentials is accepted.
    pub async fn add_user(&mut self, user: &str, password: &str) {
        let file = self.dir().join(PASSWORDS);
        run_mosquitto_passwd(&["-b", path_str(&file), user, password]);
        if !self.is_running() {
            return;
        }
        let child = self.child.as_ref().expect("checked running");
        signal(child, libc::SIGHUP);
        let deadline = Instant::now() + WAIT;
        loop {
            let mut opts = self.v4_options("mosquitto-harness-add-user");
            opts.set_credentials(user, password);
            let mut probe = V4Client::start(opts);
            let code = probe.connack().await.code;
            if code == rumqttc::ConnectReturnCode::Success {
                probe.disconnect().await;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto still refuses {user:?} ({code:?}) after SIGHUP:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// rumqttc (MQTT 3.1.1) options for the TLS listener: `localhost`,
    /// trusting [`Mosquitto::ca_pem`], this broker's username and password,
    /// clean session. Adjust with rumqttc's setters before
    /// [`V4Client::start`].
    pub fn v4_options(&self, client_id: &str) -> rumqttc::MqttOptions {
        let mut opts = v4_options_for(self.tls_port, &self.ca_pem(), client_id, "");
        opts.set_credentials(self.username.as_str(), self.password.as_str());
        opts
    }

    /// Like [`Mosquitto::v4_options`], for the plain TCP listener.
    pub fn plain_v4_options(&self, client_id: &str) -> rumqttc::MqttOptions {
        let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", self.plain_port);
        opts.set_credentials(self.username.as_str(), self.password.as_str());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(256 * 1024, 256 * 1024);
        opts
    }

    /// A client connected to the TLS listener with [`Mosquitto::v4_options`];
    /// panics (with the log's tail) unless the CONNACK accepts it.
    pub async fn connected(&self, client_id: &str) -> V4Client {
        let mut client = V4Client::start(self.v4_options(client_id));
        let ack = client.connack().await;
        assert_eq!(
            ack.code,
            rumqttc::ConnectReturnCode::Success,
            "mosquitto refused {client_id:?}:\n{}",
            self.log_tail()
        );
        client
    }

    /// A client connected to the TLS listener and subscribed to `filter`
    /// at QoS 1, for asserting what reaches the central broker.
    pub async fn subscriber(&self, client_id: &str, filter: &str) -> V4Client {
        let mut client = self.connected(client_id).await;
        let codes = client.subscribe(filter, rumqttc::QoS::AtLeastOnce).await;
        assert!(
            matches!(codes.as_slice(), [rumqttc::SubscribeReasonCode::Success(_)]),
            "mosquitto refused the subscription to {filter:?}: {codes:?}\n{}",
            self.log_tail()
        );
        client
    }

    fn write_conf(&self) {
        let dir = self.dir();
        let conf = format!(
            "\
# Written by tests/common/mosquitto.rs.
# Running as root (CI containers), mosquitto would switch to the
# `mosquitto` user, which cannot read this directory; `root` means stay.
user root
per_listener_settings false
allow_anonymous false
password_file {passwords}
persistence false
log_dest file {log}
log_type error
log_type warning
log_type notice
log_type information
log_timestamp true
set_tcp_nodelay true
# Unbounded queues per client: a subscriber that reads slower than a
# bridge drains must see every message late, never lose some, or a test
# or benchmark would blame the bridge for the central broker's drops.
max_queued_messages 0

listener {tls_port} 127.0.0.1
cafile {ca}
certfile {cert}
keyfile {key}

listener {plain_port} 127.0.0.1

{extra}
",
            passwords = path_str(&dir.join(PASSWORDS)),
            log = path_str(&dir.join(LOG)),
            tls_port = self.tls_port,
            plain_port = self.plain_port,
            ca = path_str(&self.ca_pem_path),
            cert = path_str(&dir.join(SERVER_CERT)),
            key = path_str(&dir.join(SERVER_KEY)),
            extra = self.extra_conf,
        );
        std::fs::write(dir.join(CONF), conf).expect("write mosquitto.conf");
    }

    /// Spawns the broker and waits until its log (from this start on) says
    /// it is running, which it says once every listener is bound.
    /// [`Launch::PortTaken`] if it exits because a port is taken, other
    /// failures (an exit, no "running" within [`START`]) as
    /// [`Launch::Failed`], each with the log's tail.
    async fn launch(&mut self) -> Result<(), Launch> {
        let since = self.log_len();
        let output = std::fs::File::create(self.dir().join(OUTPUT))
            .expect("create mosquitto's stdout/stderr file");
        let stderr = output
            .try_clone()
            .expect("duplicate mosquitto's stdout/stderr file");
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(self.dir().join(CONF))
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "spawn {} (install the Debian package `mosquitto`): {e}",
                    mosquitto_binary().display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + START;
        loop {
            let log = std::fs::read_to_string(self.dir().join(LOG)).unwrap_or_default();
            let this_start = log.get(since..).unwrap_or("");
            let exited = match &mut self.child {
                Some(child) => child.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                self.child = None;
                let why = format!(
                    "mosquitto exited at start ({status}; ports {} and {}):\n{}",
                    self.tls_port,
                    self.plain_port,
                    self.log_tail()
                );
                let output = std::fs::read_to_string(self.dir().join(OUTPUT)).unwrap_or_default();
                return Err(
                    if this_start.contains(PORT_TAKEN) || output.contains(PORT_TAKEN) {
                        Launch::PortTaken(why)
                    } else {
                        Launch::Failed(why)
                    },
                );
            }
            if this_start
                .lines()
                .any(|line| line.contains("mosquitto version") && line.ends_with(" running"))
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                if let Some(mut child) = self.child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(Launch::Failed(format!(
                    "mosquitto did not say it was running within {START:?} (ports {} and {}):\n{}",
                    self.tls_port,
                    self.plain_port,
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Why [`Mosquitto::launch`] failed, with the log's tail.
enum Launch {
    /// A listener's port was taken by another process.
    PortTaken(String),
    /// Anything else.
    Failed(String),
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP port that was free a moment ago, for mosquitto to listen on (it
/// cannot take port 0 and report the one it got).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// `mosquitto` from `PATH`, or where the Debian package installs it
/// (`/usr/sbin` is not on every user's `PATH`).
fn mosquitto_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("mosquitto"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| PathBuf::from(MOSQUITTO_FALLBACK))
}

fn run_mosquitto_passwd(args: &[&str]) {
    let out = Command::new("mosquitto_passwd")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("run mosquitto_passwd (install the Debian package `mosquitto`): {e}")
        });
    assert!(
        out.status.success(),
        "mosquitto_passwd {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: kill(2) with the pid of our own, not yet reaped, child.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

/// 24 hex digits from the system's random generator.
fn random_password() -> String {
    let mut bytes = [0u8; 12];
    aws_lc_rs::rand::fill(&mut bytes).expect("random bytes for mosquitto's password");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a CA (`ca.crt`) and a server certificate for `localhost` and
/// `127.0.0.1` signed by it (`server.crt`, `server.key`) into `dir`;
/// returns the CA certificate's path.
fn write_tls_material(dir: &Path) -> PathBuf {
    let ca_key = KeyPair::generate().expect("generate the CA key");
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = common_name("jwtgate test central broker CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .expect("self-sign the CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("generate the server key");
    let mut server_params = CertificateParams::new(["localhost", "127.0.0.1"].map(String::from))
        .expect("server certificate names");
    server_params.distinguished_name = common_name("jwtgate test central broker");
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.use_authority_key_identifier_extension = true;
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .expect("sign the server certificate");

    let ca_path = dir.join(CA_CERT);
    std::fs::write(&ca_path, ca_cert.pem()).expect("write the CA certificate");
    std::fs::write(dir.join(SERVER_CERT), server_cert.pem()).expect("write the server certificate");
    std::fs::write(dir.join(SERVER_KEY), server_key.serialize_pem()).expect("write the server key");
    ca_path
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}
