//! README, "First run": "Mint a token and connect with any MQTT client,
//! for example Mosquitto's". Every other device client in `tests/` is
//! rumqttc, which comes from the same project as the gateway's codec
//! (rumqttd), so a misreading they share would go unseen. Here two client
//! libraries that share nothing with it, Mosquitto's command line clients
//! (`mosquitto_pub`, `mosquitto_sub`: libmosquitto, C) and Eclipse
//! paho-mqtt for Python (`tests/data/paho_client.py`), run against the real
//! binary over TLS, with `--cafile` / `tls_set`, username `JWT` and the
//! token as password, at MQTT 3.1.1 and 5: publish and subscribe at each
//! QoS, retained messages, the will on an unclean end (and none on a clean
//! one), and the CONNACK code of a refused token.
//!
//! Needs Debian's `mosquitto-clients` and `python3-paho-mqtt` (`.ci/run`
//! installs them), and `stdbuf` (coreutils) to have `mosquitto_sub` write
//! its lines as they come. A missing tool fails the test, naming the
//! package.

mod common;

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::watch::{handed_back, until_own_marker};
use common::web::{self, ca_file};
use common::{DevBinary, V4Client, WAIT, now_unix, sign_hs256};
use rumqttc::{ConnectReturnCode, QoS, SubscribeReasonCode};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V311,
    V5,
}

const VERSIONS: [Version; 2] = [Version::V311, Version::V5];

impl Version {
    /// In topics and client ids.
    fn tag(self) -> &'static str {
        match self {
            Version::V311 => "311",
            Version::V5 => "5",
        }
    }

    /// `mosquitto_pub -V`.
    fn mosquitto(self) -> &'static str {
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
fn tool(name: &str, package: &str) -> PathBuf {
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
fn python_with_paho() -> &'static Path {
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
struct Msg {
    topic: String,
    qos: u8,
    retain: bool,
    payload: String,
}

impl Msg {
    fn new(topic: &str, qos: u8, retain: bool, payload: &str) -> Msg {
        Msg {
            topic: topic.to_owned(),
            qos,
            retain,
            payload: payload.to_owned(),
        }
    }

    /// `MSG <qos> <retain> <topic> <payload>`, as both programs print it.
    fn parse(line: &str) -> Option<Msg> {
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
struct Program {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
    /// Everything it printed so far, for failure messages.
    seen: Vec<String>,
    /// Messages it reported and no one has taken yet.
    messages: Vec<Msg>,
}

fn forward_lines<R: AsyncRead + Unpin + Send + 'static>(
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
    fn spawn(name: String, mut command: Command, with_stdin: bool) -> Program {
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
    async fn line(&mut self, what: &str, matches: impl Fn(&str) -> bool) -> String {
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

    /// The next `count` messages it reports, sorted.
    async fn messages(&mut self, count: usize) -> Vec<Msg> {
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

    async fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("a program that takes commands");
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{}: write {command:?}: {e}", self.name));
        stdin.flush().await.expect("flush the program's input");
    }

    /// SIGKILL, and waits for it to be gone: its socket closes without a
    /// DISCONNECT.
    async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL the client program");
        let _ = self.child.wait().await;
    }

    /// Waits (up to [`WAIT`]) for it to exit by itself.
    async fn exit(&mut self) -> ExitStatus {
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
fn mosquitto_connection(
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
fn mosquitto_sub(
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
async fn subscribed(sub: &mut Program) -> String {
    let line = sub
        .line("SUBACK", |line| line.starts_with("Subscribed (mid:"))
        .await;
    line.rsplit(": ").next().unwrap_or_default().to_owned()
}

/// `mosquitto_pub -d` with `args`, run to its end: its exit status and
/// everything it printed.
async fn mosquitto_pub(
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
enum Driven {
    /// paho-mqtt (Python) over TLS.
    Paho,
    /// paho-mqtt over secure WebSockets (`[websocket]`, path `/mqtt`).
    PahoWss,
    /// mqtt.js in Node over secure WebSockets (`tests/web/client.mjs`).
    MqttJs,
}

/// `tests/data/paho_client.py` over TLS for `client_id`, with a will if
/// given (topic, payload, QoS); not yet known to be connected.
fn paho(
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
fn program(
    gw: &DevBinary,
    driven: Driven,
    version: Version,
    client_id: &str,
    token: &str,
    will: Option<(&str, &str, u8)>,
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
    command.env_remove("NODE_OPTIONS");
    Program::spawn(format!("{driven:?} {client_id}"), command, true)
}

/// The CONNACK code the program reported.
async fn connack(client: &mut Program) -> u8 {
    let line = client
        .line("CONNACK", |line| line.starts_with("CONNACK "))
        .await;
    line["CONNACK ".len()..]
        .parse()
        .unwrap_or_else(|_| panic!("{line:?}"))
}

async fn paho_connected(
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
async fn subscribe_on(client: &mut Program, filter: &str) -> String {
    client.send(&format!("sub {filter} 2")).await;
    let line = client.line("SUBACK", |l| l.starts_with("SUBACK ")).await;
    line.rsplit(' ').next().unwrap_or_default().to_owned()
}

/// Publishes and waits until the program reports it done (QoS 0 sent, 1
/// PUBACKed, 2 PUBCOMPed).
async fn publish_on(client: &mut Program, topic: &str, qos: u8, retain: bool, payload: &str) {
    client
        .send(&format!("pub {topic} {qos} {} {payload}", u8::from(retain)))
        .await;
    client
        .line("PUBLISHED", |l| l.starts_with("PUBLISHED "))
        .await;
}

/// Publishes with `mosquitto_pub` and checks its exchange completed.
async fn mosquitto_publish(
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

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

/// Both libraries subscribe at QoS 2 and both publish at QoS 0, 1 and 2;
/// each subscriber receives all six messages at the QoS they were
/// published with, over MQTT 3.1.1 and over MQTT 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_and_paho_publish_and_subscribe_at_each_qos() {
    let gw = DevBinary::start("", "").await;
    for version in VERSIONS {
        let v = version.tag();
        let filter = format!("cc/{v}/#");
        let token = |sub: &str| gw.token(sub, &[&filter], HOUR);
        let id = |who: &str| format!("{who}-{v}");

        let mut msub = mosquitto_sub(&gw, version, &id("msub"), &token(&id("msub")), &filter, &[]);
        assert_eq!(subscribed(&mut msub).await, "2", "mosquitto_sub {v}");
        let mut psub = paho_connected(&gw, version, &id("psub"), &token(&id("psub")), None).await;
        assert_eq!(subscribe_on(&mut psub, &filter).await, "2", "paho {v}");
        let mut ppub = paho_connected(&gw, version, &id("ppub"), &token(&id("ppub")), None).await;

        let mut sent = Vec::new();
        for qos in 0..=2 {
            let msg = Msg::new(
                &format!("cc/{v}/mosquitto/q{qos}"),
                qos,
                false,
                &format!("from mosquitto at qos {qos}"),
            );
            mosquitto_publish(&gw, version, &id("mpub"), &token(&id("mpub")), &msg).await;
            sent.push(msg);
            let msg = Msg::new(
                &format!("cc/{v}/paho/q{qos}"),
                qos,
                false,
                &format!("from paho at qos {qos}"),
            );
            publish_on(&mut ppub, &msg.topic, qos, false, &msg.payload).await;
            sent.push(msg);
        }
        sent.sort();
        assert_eq!(msub.messages(6).await, sent, "mosquitto_sub, MQTT {v}");
        assert_eq!(psub.messages(6).await, sent, "paho, MQTT {v}");
    }
    gw.assert_no_panic();
}

/// A retained message published by either library reaches a later
/// subscriber of either library, flagged retained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_from_either_client_reach_later_subscribers() {
    let gw = DevBinary::start("", "").await;
    for version in VERSIONS {
        let v = version.tag();
        let filter = format!("kept/{v}/#");
        let token = |sub: &str| gw.token(sub, &[&filter], HOUR);
        let id = |who: &str| format!("{who}-{v}");

        let by_mosquitto = Msg::new(&format!("kept/{v}/mosquitto"), 1, true, "set by mosquitto");
        mosquitto_publish(
            &gw,
            version,
            &id("mpub"),
            &token(&id("mpub")),
            &by_mosquitto,
        )
        .await;
        let by_paho = Msg::new(&format!("kept/{v}/paho"), 1, true, "set by paho");
        let mut ppub = paho_connected(&gw, version, &id("ppub"), &token(&id("ppub")), None).await;
        publish_on(&mut ppub, &by_paho.topic, 1, true, &by_paho.payload).await;
        ppub.send("disconnect").await;
        assert!(ppub.exit().await.success(), "paho publisher {v}");

        let both = vec![by_mosquitto.clone(), by_paho.clone()];
        let mut msub = mosquitto_sub(&gw, version, &id("msub"), &token(&id("msub")), &filter, &[]);
        assert_eq!(subscribed(&mut msub).await, "2");
        assert_eq!(msub.messages(2).await, both, "mosquitto_sub, MQTT {v}");
        let mut psub = paho_connected(&gw, version, &id("psub"), &token(&id("psub")), None).await;
        assert_eq!(subscribe_on(&mut psub, &filter).await, "2");
        assert_eq!(psub.messages(2).await, both, "paho, MQTT {v}");
    }
    gw.assert_no_panic();
}

/// A will set by either library is published when the client's process
/// is killed (its socket closes without DISCONNECT), and not when it
/// disconnects cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_clients_will_is_published_on_an_unclean_end_only() {
    let gw = DevBinary::start("", "").await;
    let mut watcher =
        V4Client::start(gw.v4_options("will-watch", &gw.token("will-watch", &["will/#"], HOUR)));
    assert_eq!(watcher.connack().await.code, ConnectReturnCode::Success);
    assert_eq!(
        watcher.subscribe("will/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    for version in VERSIONS {
        let v = version.tag();
        let token = |sub: &str| gw.token(sub, &["will/#", "cc/#"], HOUR);
        let id = |who: &str| format!("{who}-{v}");

        // Killed: the will is published.
        let topic = format!("will/{v}/mosquitto");
        let mut msub = mosquitto_sub(
            &gw,
            version,
            &id("mwill"),
            &token(&id("mwill")),
            "cc/none",
            &[
                "--will-topic",
                topic.as_str(),
                "--will-payload",
                "mosquitto gone",
                "--will-qos",
                "1",
            ],
        );
        subscribed(&mut msub).await;
        msub.kill().await;
        let will = watcher.expect_publish(&topic).await;
        assert_eq!(&will.payload[..], b"mosquitto gone", "MQTT {v}");

        let topic = format!("will/{v}/paho");
        let will = Some((topic.as_str(), "paho gone", 1));
        let mut pwill =
            paho_connected(&gw, version, &id("pwill"), &token(&id("pwill")), will).await;
        pwill.kill().await;
        let will = watcher.expect_publish(&topic).await;
        assert_eq!(&will.payload[..], b"paho gone", "MQTT {v}");

        // Ended with DISCONNECT: no will.
        let since = gw.served.log().len();
        let clean_topic = format!("will/{v}/mosquitto-clean");
        let (status, out) = mosquitto_pub(
            &gw,
            version,
            &id("mclean"),
            &token(&id("mclean")),
            &[
                "--will-topic",
                clean_topic.as_str(),
                "--will-payload",
                "not gone",
                "-t",
                "cc/x",
                "-m",
                "hello",
            ],
        )
        .await;
        assert!(status.success(), "{out}");
        handed_back(&gw, since, &id("mclean"), &id("mclean")).await;

        let since = gw.served.log().len();
        let clean_topic = format!("will/{v}/paho-clean");
        let will = Some((clean_topic.as_str(), "not gone", 1));
        let mut pclean =
            paho_connected(&gw, version, &id("pclean"), &token(&id("pclean")), will).await;
        pclean.send("disconnect").await;
        assert!(pclean.exit().await.success(), "paho {v}");
        handed_back(&gw, since, &id("pclean"), &id("pclean")).await;

        let seen = until_own_marker(&mut watcher, &format!("will/{v}/marker")).await;
        assert!(
            seen.is_empty(),
            "MQTT {v}: a will published after a clean DISCONNECT: {seen:?}"
        );
    }
    gw.assert_no_panic();
}

/// README, "Authentication and authorization": "Refusals: MQTT 3.1/3.1.1
/// CONNACK 4 (bad username or password: wrong username, no/invalid/expired
/// token) or 5 (not authorized: valid token without a subject or a usable
/// grant claim, ...); MQTT 5 reason 0x86 / 0x87." Each library hears the
/// code for a token signed with another key and for a valid token that
/// grants nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn either_client_hears_the_documented_refusal_codes() {
    let gw = DevBinary::start("", "").await;
    let forged = sign_hs256(
        b"not the gateway's secret, 32 bytes+",
        &json!({ "sub": "intruder", "exp": now_unix() + 3600, "topics": ["#"] }),
    );
    let grants_nothing = gw.sign(&json!({ "sub": "idle", "exp": now_unix() + 3600, "topics": [] }));
    for (version, bad_credentials, not_authorized) in
        [(Version::V311, 4u8, 5u8), (Version::V5, 0x86, 0x87)]
    {
        let v = version.tag();
        for (what, token, code) in [
            ("a token signed with another key", &forged, bad_credentials),
            ("a token granting nothing", &grants_nothing, not_authorized),
        ] {
            let (status, out) = mosquitto_pub(
                &gw,
                version,
                &format!("refused-m-{v}"),
                token,
                &["-t", "cc/x", "-m", "x"],
            )
            .await;
            assert!(
                out.contains(&format!("received CONNACK ({code})")),
                "mosquitto_pub, MQTT {v}, {what}: expected CONNACK {code:#04x}:\n{out}"
            );
            assert!(!status.success(), "mosquitto_pub, MQTT {v}, {what}");

            let mut client = paho(&gw, version, &format!("refused-p-{v}"), token, None);
            assert_eq!(connack(&mut client).await, code, "paho, MQTT {v}, {what}");
        }
    }
    gw.assert_no_panic();
}

// ---------------------------------------------------------------------------
// Over secure WebSockets
// ---------------------------------------------------------------------------

/// README, "Browsers and web clients": "after the upgrade a WebSocket
/// connection is a client like any other". mqtt.js (Node) and paho-mqtt,
/// both over WSS, and rumqttc over TLS subscribe to the same filter; each
/// publishes at QoS 1 and 2 and every one of them receives every message,
/// over MQTT 3.1.1 and 5: the same routing core behind both transports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_clients_over_wss_and_devices_over_tls_exchange_messages() {
    let gw = DevBinary::start("", web::WEBSOCKET).await;
    for version in VERSIONS {
        let v = version.tag();
        let filter = format!("web/{v}/#");
        let token = |id: &str| gw.token(id, &[&filter], HOUR);
        let mut web_clients = Vec::new();
        for driven in [Driven::MqttJs, Driven::PahoWss] {
            let id = format!("{driven:?}-{v}");
            let mut client = program(&gw, driven, version, &id, &token(&id), None);
            assert_eq!(connack(&mut client).await, 0, "{id}");
            assert_eq!(subscribe_on(&mut client, &filter).await, "2", "{id}");
            web_clients.push(client);
        }
        let device_id = format!("tls-{v}");
        let mut device = V4Client::start(gw.v4_options(&device_id, &token(&device_id)));
        assert_eq!(device.connack().await.code, ConnectReturnCode::Success);
        device.subscribe(&filter, QoS::AtLeastOnce).await;

        let mut expected = Vec::new();
        for (i, qos) in [(0, 1u8), (1, 2u8)] {
            let topic = format!("web/{v}/from-web-{i}");
            publish_on(&mut web_clients[i], &topic, qos, false, "over wss").await;
            expected.push(Msg::new(&topic, qos, false, "over wss"));
        }
        let tls_topic = format!("web/{v}/from-tls");
        device
            .publish(&tls_topic, QoS::ExactlyOnce, false, b"over tls")
            .await;
        expected.push(Msg::new(&tls_topic, 2, false, "over tls"));
        expected.sort();
        for client in &mut web_clients {
            assert_eq!(client.messages(3).await, expected, "{}", client.name);
        }
        let mut got: Vec<String> = device
            .publishes_expecting(3)
            .await
            .iter()
            .map(|p| p.topic.clone())
            .collect();
        got.sort();
        let mut want: Vec<String> = expected.iter().map(|m| m.topic.clone()).collect();
        want.sort();
        assert_eq!(got, want, "the TLS device, MQTT {v}");
    }
    gw.assert_no_panic();
}

/// Over WSS a web client is held to its token as a device over TLS is: a
/// filter outside its grant is refused in the SUBACK (0x80 / 0x87), an
/// MQTT 5 PUBLISH outside it is answered 0x87 and delivered to nobody, and
/// a token signed with another key gets CONNACK 4 / 0x86.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_clients_over_wss_are_held_to_their_grants() {
    let gw = DevBinary::start("", web::WEBSOCKET).await;
    let forged = sign_hs256(
        b"not the gateway's secret, 32 bytes+",
        &json!({ "sub": "intruder", "exp": now_unix() + 3600, "topics": ["#"] }),
    );
    let mut watcher = V4Client::start(gw.v4_options("watcher", &gw.token("watcher", &["#"], HOUR)));
    assert_eq!(watcher.connack().await.code, ConnectReturnCode::Success);
    watcher.subscribe("#", QoS::AtLeastOnce).await;
    for (version, refused_filter, bad_token) in
        [(Version::V311, "128", 4u8), (Version::V5, "135", 0x86)]
    {
        let v = version.tag();
        for driven in [Driven::MqttJs, Driven::PahoWss] {
            let id = format!("{driven:?}-{v}");
            let token = gw.token(&id, &[&format!("mine/{v}/#")], HOUR);
            let mut client = program(&gw, driven, version, &id, &token, None);
            assert_eq!(connack(&mut client).await, 0, "{id}");
            assert_eq!(
                subscribe_on(&mut client, "theirs/#").await,
                refused_filter,
                "{id}"
            );
            if driven == Driven::MqttJs && version == Version::V5 {
                client.send("pub theirs/x 1 0 not mine").await;
                let line = client
                    .line("PUBREFUSED", |l| l.starts_with("PUBREFUSED "))
                    .await;
                assert_eq!(line, "PUBREFUSED 135", "{id}");
            }
            let mut forged_client =
                program(&gw, driven, version, &format!("{id}-forged"), &forged, None);
            assert_eq!(
                connack(&mut forged_client).await,
                bad_token,
                "{id} with a forged token"
            );
        }
    }
    // Nothing outside a grant was delivered, and the watcher is still
    // served.
    let stray = watcher.publishes_while_alive(common::QUIET).await;
    assert!(stray.is_empty(), "{stray:?}");
    gw.assert_no_panic();
}
