//! Structured logs (issue 13): with `[log] format = "json"` the real
//! binary writes one JSON object per line, and every authentication
//! decision is one line with the same fields (remote address, client id,
//! subject, key id, outcome, reason), never the token.

// Tests panic on purpose when a fixture cannot be set up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{DevBinary, V4Client, now_unix, sign_hs256_kid};
use rumqttc::ConnectReturnCode;
use serde_json::{Value, json};

/// The fields every authentication decision's line carries.
fn assert_decision_shape(line: &Value) {
    for field in [
        "remote",
        "client_id",
        "sub",
        "kid",
        "outcome",
        "reason",
        "code",
    ] {
        assert!(line.get(field).is_some(), "no {field} in {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_auth_decision_is_one_json_line_with_who_and_why_and_no_token() {
    let gw = DevBinary::start("", "[log]\nformat = \"json\"\n").await;
    let good = gw.token("sensor-1", &["s/#"], Duration::from_secs(600));
    let nothing = gw.sign(&json!({ "sub": "sensor-2", "exp": now_unix() + 600, "topics": [] }));
    let unknown_kid = sign_hs256_kid(
        b"another secret of at least 32 bytes!",
        "gone",
        &json!({ "sub": "sensor-3", "exp": now_unix() + 600, "topics": ["s/#"] }),
    );
    // Signed by a key in force, for a known subject, but expired.
    let expired =
        gw.sign(&json!({ "sub": "sensor-4", "exp": now_unix() - 3600, "topics": ["s/#"] }));
    let cases = [
        ("c-good", &good, ConnectReturnCode::Success),
        (
            "c-expired",
            &expired,
            ConnectReturnCode::BadUserNamePassword,
        ),
        ("c-nothing", &nothing, ConnectReturnCode::NotAuthorized),
        (
            "c-kid",
            &unknown_kid,
            ConnectReturnCode::BadUserNamePassword,
        ),
    ];
    for (client_id, token, code) in cases {
        let mut client = V4Client::start(gw.v4_options(client_id, token));
        assert_eq!(client.connack().await.code, code, "{client_id}");
    }
    gw.served.wait_for_log(0, "c-kid").await;

    let log = gw.served.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let decision = |client_id: &str| -> &Value {
        let found: Vec<&Value> = lines
            .iter()
            .filter(|l| l["client_id"] == json!(client_id) && l.get("outcome").is_some())
            .collect();
        assert_eq!(found.len(), 1, "one decision line for {client_id}:\n{log}");
        found[0]
    };

    let accepted = decision("c-good");
    assert_eq!(accepted["outcome"], json!("accepted"));
    assert_eq!(accepted["sub"], json!("sensor-1"));
    assert_eq!(accepted["kid"], json!("dev"));
    assert!(
        accepted["remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );

    let refused = decision("c-nothing");
    assert_eq!(refused["outcome"], json!("refused"));
    assert_eq!(
        refused["sub"],
        json!("sensor-2"),
        "known once the signature held"
    );
    assert_eq!(refused["kid"], json!("dev"));
    assert_eq!(refused["reason"], json!("the token grants no topics"));

    // One shape for every decision: the same fields, filled with what
    // the signature vouched for.
    for client_id in ["c-good", "c-nothing", "c-expired", "c-kid"] {
        assert_decision_shape(decision(client_id));
    }
    let refused = decision("c-expired");
    assert_eq!(refused["outcome"], json!("refused"));
    assert_eq!(refused["sub"], json!("sensor-4"), "its signature held");
    assert_eq!(refused["kid"], json!("dev"));

    let refused = decision("c-kid");
    assert_eq!(refused["outcome"], json!("refused"));
    assert_eq!(refused["sub"], json!(""), "not trusted, not told");
    assert_eq!(refused["kid"], json!("gone"));
    assert!(
        refused["reason"]
            .as_str()
            .unwrap()
            .contains("no key has id"),
        "{refused}"
    );

    for token in [&good, &nothing, &expired, &unknown_kid] {
        assert!(!log.contains(token.as_str()), "a token is in the log");
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a signature is in the log");
    }
    for line in &lines {
        assert!(
            line["level"].is_string() && line["message"].is_string(),
            "{line}"
        );
    }
}

/// A JWK set that arrives by reload needs `[auth] audience` as much as one
/// present at start: the warning is logged when it arrives, once, not
/// again on later reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audience_warning_follows_a_jwk_set_dropped_in_later() {
    let gw = DevBinary::start("", "").await;
    let needle = "[auth] audience is unset";
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("keys/examples/idp-example.json");
    // The development keys are HMAC secrets: nothing to warn about yet.
    assert!(!gw.served.log().contains(needle), "{}", gw.served.log());
    std::fs::copy(&example, gw.keys_dir().join("idp.json")).unwrap();
    gw.served.wait_for_log(0, needle).await;
    // Another reload, with the same keys in force: no second warning.
    let loaded = |log: &str| log.matches("verification keys loaded").count();
    let before = loaded(&gw.served.log());
    std::fs::write(gw.keys_dir().join("unrelated.txt"), "not a key").unwrap();
    let deadline = std::time::Instant::now() + common::WAIT;
    while loaded(&gw.served.log()) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload:\n{}",
            gw.served.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        gw.served.log().matches(needle).count(),
        1,
        "{}",
        gw.served.log()
    );
}

/// A re-authentication, accepted or refused, is one line of the same shape
/// as a CONNECT's decision, filled with what the new token's signature
/// vouched for: the refused one names the other subject its token holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reauthentication_lines_have_the_same_shape() {
    use common::raw5::{Raw5, v5};
    let gw = DevBinary::start("", "[log]\nformat = \"json\"\n").await;
    let token = gw.token("meter-7", &["m/#"], Duration::from_secs(600));
    let (mut conn, ack) =
        Raw5::over(gw.raw().await, v5::Connect::enhanced("c-reauth", &token)).await;
    assert_eq!(ack.reason, 0, "{ack:?}");
    let fresh = gw.token("meter-7", &["m/#"], Duration::from_secs(900));
    assert!(
        matches!(
            conn.reauthenticate(&fresh).await,
            Some(v5::Packet::Auth { reason: 0, .. })
        ),
        "re-authentication accepted"
    );
    let other = gw.token("meter-8", &["m/#"], Duration::from_secs(600));
    assert!(
        matches!(
            conn.reauthenticate(&other).await,
            Some(v5::Packet::Disconnect { reason: 0x87, .. })
        ),
        "a token of another subject ends the session"
    );
    gw.served.wait_for_log(0, "re-authentication refused").await;
    let log = gw.served.log();
    let line = |message: &str| -> Value {
        let found: Vec<Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["message"] == json!(message))
            .collect();
        assert_eq!(found.len(), 1, "one {message:?} line:\n{log}");
        found[0].clone()
    };
    let accepted = line("client re-authenticated");
    let refused = line("re-authentication refused: disconnecting");
    for decision in [&accepted, &refused] {
        assert_decision_shape(decision);
        assert!(
            decision["remote"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:"),
            "{decision}"
        );
        assert_eq!(decision["client_id"], json!("c-reauth"));
        assert_eq!(decision["kid"], json!("dev"));
    }
    assert_eq!(accepted["outcome"], json!("accepted"));
    assert_eq!(accepted["sub"], json!("meter-7"));
    assert_eq!(refused["outcome"], json!("refused"));
    assert_eq!(
        refused["sub"],
        json!("meter-8"),
        "what its signature vouched for"
    );
}

// ---------------------------------------------------------------------------
// Logs that fit where they go, and quiet command-line tools (issue 22)
// ---------------------------------------------------------------------------

use std::path::{Path, PathBuf};

use common::{Ready, sign_hs256, v4_options_for, wait_for_ready_file};
use jwtgate::{firstrun, keys};

/// How the spawned gateway sees journald's socket.
#[derive(Clone, Copy)]
enum Journal<'a> {
    /// As this machine has it.
    AsIs,
    /// Not there: a private mount namespace with an empty `/run`.
    Absent,
    /// The test's own socket, `DIR/socket`, at
    /// `/run/systemd/journal/socket` in a private mount namespace.
    At(&'a Path),
}

/// Whether this process may make a private mount namespace and mount in
/// it (root, or CAP_SYS_ADMIN): what [`Journal::Absent`] and
/// [`Journal::At`] need.
fn can_unshare() -> bool {
    std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs tmpfs /run"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// `jwtgate serve` from this build with its development keys and config in
/// a directory of its own, stderr to `serve.log` there.
struct Gateway {
    child: tokio::process::Child,
    ready: Ready,
    log_path: PathBuf,
    ca: Vec<u8>,
    secret: Vec<u8>,
    /// Removed when the test ends.
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts it with `env` added (`RUST_LOG`, `NO_COLOR` and
    /// `JOURNAL_STREAM` removed first); `journal_stream`: set
    /// `JOURNAL_STREAM` to the log file's device and inode, as systemd
    /// does when stderr is the journal. `before` runs on the directory
    /// before the start.
    async fn start(
        env: &[(&str, &str)],
        journal_stream: bool,
        journal: Journal<'_>,
        before: impl FnOnce(&Path),
    ) -> Gateway {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let material = firstrun::ensure_dev_material(&dir.path().join("keys")).unwrap();
        let ca = std::fs::read(material.ca_cert.unwrap()).unwrap();
        let secret =
            keys::decode_secret(&std::fs::read_to_string(&material.secret).unwrap()).unwrap();
        let config = dir.path().join("jwtgate.toml");
        std::fs::write(
            &config,
            "[tls]\ncert = \"keys/tls/server.crt\"\nkey = \"keys/tls/server.key\"\n\n\
             [auth]\nkeys_dir = \"keys\"\n",
        )
        .unwrap();
        before(dir.path());
        let log_path = dir.path().join("serve.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let stream = {
            let meta = log.metadata().unwrap();
            format!("{}:{}", meta.dev(), meta.ino())
        };
        let ready_path = dir.path().join("serve.ready");
        let binary = env!("CARGO_BIN_EXE_jwtgate");
        let mut command = match journal {
            Journal::AsIs => tokio::process::Command::new(binary),
            Journal::Absent | Journal::At(_) => {
                // unshare execs (no fork): the child's pid is the gateway's.
                let mut command = tokio::process::Command::new("unshare");
                let bind = match journal {
                    Journal::At(socket_dir) => format!(
                        " && mkdir -p /run/systemd/journal && mount --bind '{}' /run/systemd/journal",
                        socket_dir.display()
                    ),
                    _ => String::new(),
                };
                command.args([
                    "-m",
                    "sh",
                    "-c",
                    &format!("mount -t tmpfs tmpfs /run{bind} && exec \"$0\" \"$@\""),
                    binary,
                ]);
                command
            }
        };
        command
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .env_remove("JOURNAL_STREAM")
            .envs(env.iter().copied())
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--listen", "127.0.0.1:0"])
            .arg("--ready-file")
            .arg(&ready_path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        if journal_stream {
            command.env("JOURNAL_STREAM", &stream);
        }
        let mut child = command.spawn().unwrap();
        let ready = wait_for_ready_file(&ready_path, &mut child, || {
            std::fs::read_to_string(&log_path).unwrap_or_default()
        })
        .await;
        Gateway {
            child,
            ready,
            log_path,
            ca,
            secret,
            _dir: dir,
        }
    }

    fn log_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.log_path).unwrap_or_default()
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&self.log_bytes()).into_owned()
    }

    async fn wait_for_log(&self, needle: &str) {
        let deadline = std::time::Instant::now() + common::WAIT;
        while !self.log().contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in the log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A client `client_id` with a token for `sub` granting `topics`,
    /// through CONNACK.
    async fn connect(&self, client_id: &str, sub: &str, topics: &[&str]) -> ConnectReturnCode {
        let token = sign_hs256(
            &self.secret,
            &json!({ "sub": sub, "exp": now_unix() + 600, "topics": topics }),
        );
        let mut client = V4Client::start(v4_options_for(
            self.ready.mqtt.port(),
            &self.ca,
            client_id,
            &token,
        ));
        client.connack().await.code
    }

    /// SIGTERM, and waits for the exit.
    async fn stop(mut self) -> Vec<u8> {
        let pid = self.child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let status = tokio::time::timeout(common::WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit on SIGTERM:\n{}", self.log()))
            .unwrap();
        assert!(status.success(), "{status}:\n{}", self.log());
        self.log_bytes()
    }
}

/// Written to a file, the log has no escape sequence: not by default, not
/// with `NO_COLOR`, not with a `JOURNAL_STREAM` inherited from a parent
/// whose stderr was the journal (it names another file: plain,
/// timestamped lines as for any file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_in_a_file_has_no_escape_bytes() {
    let runs: [&[(&str, &str)]; 3] = [&[], &[("NO_COLOR", "1")], &[("JOURNAL_STREAM", "1:1")]];
    for env in runs {
        let gw = Gateway::start(env, false, Journal::AsIs, |_| {}).await;
        assert_eq!(
            gw.connect("c-file", "thermostat-3", &["t/#"]).await,
            ConnectReturnCode::Success
        );
        gw.wait_for_log("client connected").await;
        let bytes = gw.stop().await;
        let log = String::from_utf8_lossy(&bytes).into_owned();
        assert!(
            !bytes.contains(&0x1b),
            "an escape byte with {env:?}:\n{log:?}"
        );
        assert!(log.contains("thermostat-3"), "{log}");
        for line in log.lines() {
            assert!(
                line.starts_with("20"),
                "a timestamp first, no priority, with {env:?}: {line}"
            );
        }
    }
}

/// One entry of journald's native protocol: `NAME=value` lines, or `NAME`,
/// a little-endian 64-bit length, the value and a newline.
fn journal_fields(mut datagram: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    while let Some(end) = datagram.iter().position(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(&datagram[..end]).into_owned();
        datagram = &datagram[end + 1..];
        if let Some((name, value)) = line.split_once('=') {
            fields.push((name.to_owned(), value.to_owned()));
        } else {
            let len = u64::from_le_bytes(datagram[..8].try_into().unwrap()) as usize;
            let value = String::from_utf8_lossy(&datagram[8..8 + len]).into_owned();
            assert_eq!(datagram[8 + len], b'\n', "a length-encoded field ends");
            datagram = &datagram[8 + len + 1..];
            fields.push((line, value));
        }
    }
    fields
}

fn field<'a>(entry: &'a [(String, String)], name: &str) -> Option<&'a str> {
    entry
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Under systemd with stderr to the journal (`JOURNAL_STREAM` names
/// stderr), the gateway writes native journal entries to journald's
/// socket, here one the test owns mounted at
/// `/run/systemd/journal/socket` in a private mount namespace: the
/// priority per level, `MESSAGE` without a timestamp but with the
/// event's fields, as a line on a terminal reads, and the fields as
/// journal fields without a prefix, so that `journalctl SUB=thermostat-3`
/// finds them. Nothing goes to stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_stderr_the_journal_entries_are_native_with_priority_and_fields() {
    if !can_unshare() {
        eprintln!("skipped: no private mount namespace here (needs root or CAP_SYS_ADMIN)");
        return;
    }
    let journal_dir = tempfile::tempdir().unwrap();
    let socket = tokio::net::UnixDatagram::bind(journal_dir.path().join("socket")).unwrap();
    // A JWK set without [auth] audience: a warning at start.
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("keys/examples/idp-example.json");
    let gw = Gateway::start(&[], true, Journal::At(journal_dir.path()), |dir| {
        std::fs::copy(&example, dir.join("keys/idp.json")).unwrap();
    })
    .await;
    assert_eq!(
        gw.connect("c-thermo", "thermostat-3", &["t/#"]).await,
        ConnectReturnCode::Success
    );
    assert_eq!(
        gw.connect("c-nothing", "thermostat-4", &[]).await,
        ConnectReturnCode::NotAuthorized
    );
    let mut entries: Vec<Vec<(String, String)>> = Vec::new();
    let mut buf = vec![0; 256 * 1024];
    let seen = |entries: &[Vec<(String, String)>], client_id: &str| {
        entries
            .iter()
            .any(|e| field(e, "CLIENT_ID") == Some(client_id) && field(e, "OUTCOME").is_some())
    };
    while !(seen(&entries, "c-thermo") && seen(&entries, "c-nothing")) {
        let n = tokio::time::timeout(common::WAIT, socket.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no more entries; so far {entries:#?}\n{}", gw.log()))
            .unwrap();
        entries.push(journal_fields(&buf[..n]));
    }
    let one = |client_id: &str| {
        let found: Vec<&Vec<(String, String)>> = entries
            .iter()
            .filter(|e| field(e, "CLIENT_ID") == Some(client_id) && field(e, "OUTCOME").is_some())
            .collect();
        assert_eq!(found.len(), 1, "one decision for {client_id}: {entries:#?}");
        found[0].clone()
    };
    let accepted = one("c-thermo");
    assert_eq!(
        field(&accepted, "PRIORITY"),
        Some("6"),
        "info: {accepted:?}"
    );
    // The default `journalctl` view shows MESSAGE alone: it names who.
    let message = field(&accepted, "MESSAGE").unwrap_or_default();
    assert!(
        message.starts_with("client connected remote=127.0.0.1:")
            && message.contains(" client_id=\"c-thermo\" sub=\"thermostat-3\" ")
            && message.contains(" outcome=\"accepted\" "),
        "{message}"
    );
    assert_eq!(field(&accepted, "SUB"), Some("thermostat-3"));
    assert_eq!(field(&accepted, "OUTCOME"), Some("accepted"));
    assert_eq!(field(&accepted, "KID"), Some("dev"));
    assert_eq!(field(&accepted, "TRANSPORT"), Some("tls"));
    assert_eq!(field(&accepted, "SYSLOG_IDENTIFIER"), Some("jwtgate"));
    assert!(
        field(&accepted, "REMOTE").is_some_and(|r| r.starts_with("127.0.0.1:")),
        "{accepted:?}"
    );
    let refused = one("c-nothing");
    assert_eq!(field(&refused, "OUTCOME"), Some("refused"));
    assert_eq!(field(&refused, "SUB"), Some("thermostat-4"));
    assert_eq!(
        field(&refused, "REASON"),
        Some("the token grants no topics")
    );
    let warning = entries
        .iter()
        .find(|e| field(e, "MESSAGE").is_some_and(|m| m.contains("[auth] audience is unset")))
        .unwrap_or_else(|| panic!("no audience warning: {entries:#?}"));
    assert_eq!(field(warning, "PRIORITY"), Some("4"), "warn: {warning:?}");
    for entry in &entries {
        let names: Vec<&str> = entry.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("F_") || *n == "SYSLOG_TIMESTAMP"),
            "no prefix, no timestamp of our own: {entry:?}"
        );
    }
    let stderr = gw.stop().await;
    assert!(
        stderr.is_empty(),
        "nothing on stderr: {}",
        String::from_utf8_lossy(&stderr)
    );
}

/// With stderr the journal but journald's socket out of reach (as in a
/// unit whose file system does not show it), the gateway still starts,
/// says so once, and writes lines for the journal: no colour, no
/// timestamp (journald stamps them), the syslog priority first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_journald_out_of_reach_the_gateway_falls_back_to_lines() {
    let journal = if can_unshare() {
        Journal::Absent
    } else if Path::new("/run/systemd/journal/socket").exists() {
        eprintln!("skipped: journald is here and no private mount namespace can hide it");
        return;
    } else {
        Journal::AsIs
    };
    let gw = Gateway::start(&[], true, journal, |_| {}).await;
    assert_eq!(
        gw.connect("c-lines", "thermostat-3", &["t/#"]).await,
        ConnectReturnCode::Success
    );
    gw.wait_for_log("client connected").await;
    let bytes = gw.stop().await;
    let log = String::from_utf8_lossy(&bytes).into_owned();
    assert!(!bytes.contains(&0x1b), "{log:?}");
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines[0].starts_with("<4>") && lines[0].contains("journald's socket"),
        "said first: {log}"
    );
    assert_eq!(log.matches("journald's socket").count(), 1, "once: {log}");
    for line in &lines {
        let (priority, rest) = line
            .strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .unwrap_or_else(|| panic!("a priority first: {line}"));
        assert!(["3", "4", "6", "7"].contains(&priority), "{line}");
        let level = rest.trim_start();
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"]
                .iter()
                .any(|l| level.starts_with(l)),
            "the level right after the priority, no timestamp: {line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.starts_with("<6>")
            && l.contains("client connected")
            && l.contains("thermostat-3")),
        "{log}"
    );
}

/// `jwtgate ARGS` in `dir`, without `RUST_LOG`, `NO_COLOR` or
/// `JOURNAL_STREAM` from the test's environment: (success, stdout,
/// stderr).
fn run_jwtgate(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jwtgate"))
        .current_dir(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .env_remove("JOURNAL_STREAM")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `jwtgate mint` and `jwtgate check` print their answer on stdout and
/// nothing on stderr; `-v` brings the log back (keys loaded), still
/// without colour off a terminal.
#[test]
fn mint_and_check_print_their_answer_only() {
    let dir = tempfile::tempdir().unwrap();
    firstrun::ensure_dev_material(&dir.path().join("keys")).unwrap();
    let mint = [
        "mint",
        "--keys-dir",
        "keys",
        "--sub",
        "thermostat-3",
        "--topics",
        "t/#",
    ];
    let (ok, token, stderr) = run_jwtgate(dir.path(), &mint);
    assert!(ok, "{stderr}");
    assert_eq!(stderr, "", "mint: nothing on stderr");
    let token = token.trim_end().to_owned();
    assert_eq!(token.matches('.').count(), 2, "one token: {token:?}");

    for json in [false, true] {
        let mut check = vec!["check", "--keys-dir", "keys"];
        if json {
            check.push("--json");
        }
        check.push(&token);
        let (ok, answer, stderr) = run_jwtgate(dir.path(), &check);
        assert!(ok, "{answer}{stderr}");
        assert_eq!(stderr, "", "check: nothing on stderr");
        if json {
            let report: Value = serde_json::from_str(&answer).unwrap();
            assert_eq!(report["accepted"], json!(true), "{answer}");
        } else {
            assert!(answer.contains("thermostat-3"), "{answer}");
        }
    }

    let verbose: [Vec<&str>; 2] = [
        [&mint[..], &["-v"]].concat(),
        vec!["check", "--verbose", "--keys-dir", "keys", &token],
    ];
    for args in verbose {
        let (ok, answer, stderr) = run_jwtgate(dir.path(), &args);
        assert!(ok, "{args:?}: {stderr}");
        assert!(!answer.is_empty(), "{args:?}");
        assert!(
            stderr.contains("INFO") && stderr.contains("verification keys loaded"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains('\x1b'), "{args:?}: {stderr:?}");
    }
}
