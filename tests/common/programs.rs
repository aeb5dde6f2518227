//! Client programs that share no code with the gateway, driven from a
//! test: Mosquitto's command line clients (`mosquitto_pub`,
//! `mosquitto_sub`), Eclipse paho-mqtt for Python
//! (`tests/data/paho_client.py`) and mqtt.js in Node
//! (`tests/web/client.mjs`), each a [`Program`] whose output lines the
//! test reads as they come.
//!
//! Needs Debian's `mosquitto-clients` and `python3-paho-mqtt` (`.ci/run`
//! installs them), and `stdbuf` (coreutils) to have `mosquitto_sub` write
//! its lines as they come. A missing tool fails the test, naming the
//! package.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use super::web::{self, ca_file};
use super::{DevBinary, WAIT};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

pub const VERSIONS: [Version; 2] = [Version::V311, Version::V5];

impl Version {
    /// In topics and client ids.
    pub fn tag(self) -> &'static str {
        match self {
            Version::V311 => "311",
            Version::V5 => "5",
        }
    }

    /// `mosquitto_pub -V`.
    pub fn mosquitto(self) -> &'static str {
        match self {
            Version::V311 => "mqttv311",
            Version::V5 => "mqttv5",
        }
    }
}

// ---------------------------------------------------------------------------
// The client programs
// ---------------------------------------------------------------------------

/// `name` on `PATH`, or a failure naming the Debian package to install.
pub fn tool(name: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| panic!("{name} is not on PATH: install the Debian package `{package}`"))
}

/// A Python that imports paho-mqtt: `python3` on `PATH`, else the
/// system's (where Debian's `python3-paho-mqtt` goes, when `PATH` leads to
/// another Python first).
pub fn python_with_paho() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        ["python3", "/usr/bin/python3"]
            .into_iter()
            .map(PathBuf::from)
            .find(|python| {
                std::process::Command::new(python)
                    .args(["-c", "import paho.mqtt.client"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success())
            })
            .unwrap_or_else(|| {
                panic!(
                    "no python3 imports paho.mqtt.client: install the Debian package \
                     `python3-paho-mqtt` (.ci/run does)"
                )
            })
    })
}

/// A message as a client program reported it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Msg {
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub payload: String,
}

impl Msg {
    pub fn new(topic: &str, qos: u8, retain: bool, payload: &str) -> Msg {
        Msg {
            topic: topic.to_owned(),
            qos,
            retain,
            payload: payload.to_owned(),
        }
    }

    /// `MSG <qos> <retain> <topic> <payload>`, as both programs print it.
    pub fn parse(line: &str) -> Option<Msg> {
        let rest = line.strip_prefix("MSG ")?;
        let mut words = rest.splitn(4, ' ');
        let qos = words.next()?.parse().ok()?;
        let retain = words.next()? == "1";
        let topic = words.next()?.to_owned();
        let payload = words.next().unwrap_or("").to_owned();
        Some(Msg {
            topic,
            qos,
            retain,
            payload,
        })
    }
}

/// A client program running beside the test: its output lines as they
/// come, its input when it takes commands. Killed when dropped.
pub struct Program {
    pub name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    /// Everything it printed so far, for failure messages.
    seen: Vec<String>,
    /// Messages it reported and no one has taken yet.
    messages: Vec<Msg>,
}

pub fn forward_lines<R: AsyncRead + Unpin + Send + 'static>(
    reader: R,
    prefix: &'static str,
    tx: mpsc::UnboundedSender<String>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(format!("{prefix}{line}")).is_err() {
                return;
            }
        }
    });
}

impl Program {
    pub fn spawn(name: String, mut command: Command, with_stdin: bool) -> Program {
        command
            .stdin(if with_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let (tx, lines) = mpsc::unbounded_channel();
        forward_lines(child.stdout.take().expect("piped stdout"), "", tx.clone());
        forward_lines(child.stderr.take().expect("piped stderr"), "stderr: ", tx);
        let stdin = child.stdin.take();
        Program {
            name,
            child,
            stdin,
            lines,
            seen: Vec::new(),
            messages: Vec::new(),
        }
    }

    /// The next line that `matches` (earlier ones are kept in `seen`, and
    /// messages among them for [`Program::messages`]). Panics, with what
    /// the program printed, after [`WAIT`] or when its output ends.
    pub async fn line(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if let Some(msg) = Msg::parse(&line) {
                        self.messages.push(msg);
                    }
                    if matches(&line) {
                        return line;
                    }
                }
                Ok(None) => panic!(
                    "{}: output ended before {what}:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
                Err(_) => panic!(
                    "{}: no {what} within {WAIT:?}:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Every line it printed that a [`Program::line`] has read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// The next `count` messages it reports, sorted.
    pub async fn messages(&mut self, count: usize) -> Vec<Msg> {
        while self.messages.len() < count {
            self.line(&format!("{count} messages"), |line| {
                line.starts_with("MSG ")
            })
            .await;
        }
        let mut got: Vec<Msg> = self.messages.drain(..count).collect();
        got.sort();
        got
    }

    pub async fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("a program that takes commands");
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{}: write {command:?}: {e}", self.name));
        stdin.flush().await.expect("flush the program's input");
    }

    /// SIGKILL, and waits for it to be gone: its socket closes without a
    /// DISCONNECT.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL the client program");
        let _ = self.child.wait().await;
    }

    /// Waits (up to [`WAIT`]) for it to exit by itself.
    pub async fn exit(&mut self) -> ExitStatus {
        match tokio::time::timeout(WAIT, self.child.wait()).await {
            Ok(status) => status.expect("wait for the client program"),
            Err(_) => panic!(
                "{}: still running after {WAIT:?}:\n{}",
                self.name,
                self.seen.join("\n")
            ),
        }
    }
}

/// The connection options every Mosquitto client gets: the README's
/// `-h localhost -p PORT --cafile CA -u JWT -P TOKEN`, plus the protocol
/// version and a client id.
pub fn mosquitto_connection(
    gw: &DevBinary,
    version: Version,
    client_id: &str,
    token: &str,
) -> Vec<String> {
    [
        "-h",
        "localhost",
        "-p",
        gw.addr().port().to_string().as_str(),
        "--cafile",
        ca_file(gw).display().to_string().as_str(),
        "-u",
        "JWT",
        "-P",
        token,
        "-V",
        version.mosquitto(),
        "-i",
        client_id,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// `mosquitto_sub -d` on `filter` at QoS 2, printing `MSG <qos> <retain>
/// <topic> <payload>` per message, line-buffered through `stdbuf`.
pub fn mosquitto_sub(
    gw: &DevBinary,
    version: Version,
    client_id: &str,
    token: &str,
    filter: &str,
    extra: &[&str],
) -> Program {
    let mut command = Command::new(tool("stdbuf", "coreutils"));
    command
        .arg("-oL")
        .arg(tool("mosquitto_sub", "mosquitto-clients"))
        .args(mosquitto_connection(gw, version, client_id, token))
        .args(["-d", "-t", filter, "-q", "2", "-F", "MSG %q %r %t %p"])
        .args(extra);
    Program::spawn(format!("mosquitto_sub {client_id}"), command, false)
}

/// Waits for `mosquitto_sub`'s SUBACK; returns what it granted.
pub async fn subscribed(sub: &mut Program) -> String {
    let line = sub
        .line("SUBACK", |line| line.starts_with("Subscribed (mid:"))
        .await;
    line.rsplit(": ").next().unwrap_or_default().to_owned()
}

/// `mosquitto_pub -d` with `args`, run to its end: its exit status and
/// everything it printed.
pub async fn mosquitto_pub(
    gw: &DevBinary,
    version: Version,
    client_id: &str,
    token: &str,
    args: &[&str],
) -> (ExitStatus, String) {
    let output = tokio::time::timeout(
        WAIT,
        Command::new(tool("mosquitto_pub", "mosquitto-clients"))
            .args(mosquitto_connection(gw, version, client_id, token))
            .arg("-d")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("mosquitto_pub {client_id} still running after {WAIT:?}"))
    .expect("run mosquitto_pub");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status, text)
}

/// A client program that speaks `tests/data/paho_client.py`'s line
/// protocol, and the way it reaches the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driven {
    /// paho-mqtt (Python) over TLS.
    Paho,
    /// paho-mqtt over secure WebSockets (`[websocket]`, path `/mqtt`).
    PahoWss,
    /// mqtt.js in Node over secure WebSockets (`tests/web/client.mjs`).
    MqttJs,
}

/// `tests/data/paho_client.py` over TLS for `client_id`, with a will if
/// given (topic, payload, QoS); not yet known to be connected.
pub fn paho(
    gw: &DevBinary,
    version: Version,
    client_id: &str,
    token: &str,
    will: Option<(&str, &str, u8)>,
) -> Program {
    program(gw, Driven::Paho, version, client_id, token, will)
}

/// `driven` for `client_id` (a will only for paho); not yet known to be
/// connected.
pub fn program(
    gw: &DevBinary,
    driven: Driven,
    version: Version,
    client_id: &str,
    token: &str,
    will: Option<(&str, &str, u8)>,
) -> Program {
    program_with_cert(gw, driven, version, client_id, token, will, None)
}

/// As [`program`], presenting `client_cert` (certificate and key PEM
/// files) in the TLS handshake, paho only.
pub fn program_with_cert(
    gw: &DevBinary,
    driven: Driven,
    version: Version,
    client_id: &str,
    token: &str,
    will: Option<(&str, &str, u8)>,
    client_cert: Option<(&Path, &Path)>,
) -> Program {
    let mut command = match driven {
        Driven::Paho | Driven::PahoWss => {
            let port = match driven {
                Driven::PahoWss => {
                    let addr = gw.served.ready().websocket.expect("[websocket] listen");
                    addr.port()
                }
                _ => gw.addr().port(),
            };
            let mut command = Command::new(python_with_paho());
            command
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/data/paho_client.py"
                ))
                .arg("localhost")
                .arg(port.to_string())
                .arg(ca_file(gw))
                .args([client_id, token, version.tag()]);
            if driven == Driven::PahoWss {
                command.env("PAHO_WS_PATH", "/mqtt");
            }
            if let Some((topic, payload, qos)) = will {
                command.args([topic, payload, qos.to_string().as_str()]);
            }
            command
        }
        Driven::MqttJs => {
            let mut command = Command::new("node");
            command
                .arg(web::packages().join("client.mjs"))
                .arg(web::url(gw))
                .arg(ca_file(gw))
                .args([client_id, token, version.tag()]);
            command
        }
    };
    if let Some((cert, key)) = client_cert {
        assert_ne!(
            driven,
            Driven::MqttJs,
            "client certificates are paho's here"
        );
        command.env("PAHO_CERTFILE", cert).env("PAHO_KEYFILE", key);
    }
    command.env_remove("NODE_OPTIONS");
    Program::spawn(format!("{driven:?} {client_id}"), command, true)
}

/// The CONNACK code the program reported.
pub async fn connack(client: &mut Program) -> u8 {
    let line = client
        .line("CONNACK", |line| line.starts_with("CONNACK "))
        .await;
    line["CONNACK ".len()..]
        .parse()
        .unwrap_or_else(|_| panic!("{line:?}"))
}

pub async fn paho_connected(
    gw: &DevBinary,
    version: Version,
    client_id: &str,
    token: &str,
    will: Option<(&str, &str, u8)>,
) -> Program {
    let mut client = paho(gw, version, client_id, token, will);
    assert_eq!(connack(&mut client).await, 0, "paho {client_id}");
    client
}

/// Subscribes at QoS 2; returns the SUBACK's code (what the program
/// printed: the granted QoS, or the failure code in decimal).
pub async fn subscribe_on(client: &mut Program, filter: &str) -> String {
    client.send(&format!("sub {filter} 2")).await;
    let line = client.line("SUBACK", |l| l.starts_with("SUBACK ")).await;
    line.rsplit(' ').next().unwrap_or_default().to_owned()
}

/// Publishes and waits until the program reports it done (QoS 0 sent, 1
/// PUBACKed, 2 PUBCOMPed).
pub async fn publish_on(client: &mut Program, topic: &str, qos: u8, retain: bool, payload: &str) {
    client
        .send(&format!("pub {topic} {qos} {} {payload}", u8::from(retain)))
        .await;
    client
        .line("PUBLISHED", |l| l.starts_with("PUBLISHED "))
        .await;
}

/// Publishes with `mosquitto_pub` and checks its exchange completed.
pub async fn mosquitto_publish(
    gw: &DevBinary,
    version: Version,
    client_id: &str,
    token: &str,
    msg: &Msg,
) {
    let qos = msg.qos.to_string();
    let mut args = vec![
        "-q",
        qos.as_str(),
        "-t",
        msg.topic.as_str(),
        "-m",
        msg.payload.as_str(),
    ];
    if msg.retain {
        args.push("-r");
    }
    let (status, out) = mosquitto_pub(gw, version, client_id, token, &args).await;
    assert!(status.success(), "mosquitto_pub {msg:?}: {status}\n{out}");
    let done = match msg.qos {
        0 => "sending PUBLISH",
        1 => "received PUBACK",
        _ => "received PUBCOMP",
    };
    assert!(
        out.contains(done),
        "mosquitto_pub {msg:?}: no {done:?}\n{out}"
    );
}
