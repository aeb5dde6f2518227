//! `jwtgate status`, `sessions` and `disconnect` (README, "Day-to-day
//! operation") against the real binary, with real clients connected:
//! paho-mqtt (Python) for MQTT 5, where an operator's disconnect must
//! arrive as DISCONNECT 0x98 (administrative action), and rumqttc for
//! MQTT 3.1.1 with a persistent session. The tables and `--json`, the
//! socket's mode, a caller the socket refuses, a gateway that is not
//! running, and requests a hostile local caller might send.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, UNIX_EPOCH};

use common::programs::{Version, connack, paho, subscribe_on};
use common::{DevBinary, V4Client, now_unix};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

const HOUR: u64 = 3600;

/// `jwtgate ARGS`, run to its end.
async fn jwtgate(args: &[&str]) -> Output {
    jwtgate_as(args, Path::new(env!("CARGO_BIN_EXE_jwtgate")), None).await
}

/// As [`jwtgate`], run from `binary`, as user and group `id` when given
/// (needs root).
async fn jwtgate_as(args: &[&str], binary: &Path, id: Option<u32>) -> Output {
    let mut command = Command::new(binary);
    command.args(args).env_remove("RUST_LOG");
    if let Some(id) = id {
        command.uid(id).gid(id);
    }
    command.output().await.expect("run jwtgate")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs an admin command against `gw` and returns its stdout, which must
/// be a success.
async fn ask(gw: &DevBinary, args: &[&str]) -> String {
    let socket = socket_of(gw);
    let mut all = args.to_vec();
    all.extend(["--socket", socket.to_str().expect("a UTF-8 path")]);
    let out = jwtgate(&all).await;
    assert!(
        out.status.success(),
        "jwtgate {args:?}: {}\n{}",
        out.status,
        stderr(&out)
    );
    stdout(&out)
}

async fn ask_json(gw: &DevBinary, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let text = ask(gw, &all).await;
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?} --json: {e}\n{text}"))
}

fn socket_of(gw: &DevBinary) -> PathBuf {
    gw.served
        .ready()
        .admin
        .expect("the ready file names the admin socket")
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// A token for `sub` on `adm/#`, expiring at the returned time.
fn token(gw: &DevBinary, sub: &str) -> (String, u64) {
    let exp = now_unix() + HOUR;
    let token = gw.sign(&json!({ "sub": sub, "topics": ["adm/#"], "exp": exp }));
    (token, exp)
}

/// An MQTT 3.1.1 client with a persistent session (clean session off).
async fn persistent_v4(gw: &DevBinary, client_id: &str, token: &str) -> V4Client {
    let mut options = gw.v4_options(client_id, token);
    options.set_clean_session(false);
    let mut client = V4Client::start(options);
    client.connack().await;
    client
}

fn row<'a>(rows: &'a Value, client_id: &str) -> &'a Value {
    rows.as_array()
        .expect("a list of sessions")
        .iter()
        .find(|r| r["client_id"] == client_id)
        .unwrap_or_else(|| panic!("no session of {client_id} in {rows:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_sessions_show_the_clients_connected() {
    let gw = DevBinary::start("", "").await;
    let (p5_token, p5_exp) = token(&gw, "dev-p5");
    let mut p5 = paho(&gw, Version::V5, "p5", &p5_token, None);
    assert_eq!(connack(&mut p5).await, 0);
    assert_eq!(subscribe_on(&mut p5, "adm/#").await, "2");
    let (r4_token, _) = token(&gw, "dev-r4");
    let _r4 = persistent_v4(&gw, "r4", &r4_token).await;

    let text = ask(&gw, &["status"]).await;
    assert!(text.starts_with("jwtgate "), "{text}");
    for line in [
        "connections  2 (MQTT 3.1.1: 1, 5: 1; tls: 2)",
        "sessions     2 live, 0 parked",
        "storage      ok (0 failed commits)",
        "keys         1 in force",
        "last reload  none since start",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    assert!(
        text.contains(&format!("listeners    mqtt {}", gw.addr())),
        "{text}"
    );

    let status = ask_json(&gw, &["status"]).await;
    assert_eq!(status["connections"]["total"], 2, "{status:#}");
    assert_eq!(status["connections"]["by_protocol"]["5"], 1);
    assert_eq!(status["connections"]["by_transport"]["tls"], 2);
    assert_eq!(status["sessions"], json!({ "live": 2, "parked": 0 }));
    assert_eq!(status["listeners"]["mqtt"], gw.addr().to_string());
    assert_eq!(status["keys"].as_array().map(Vec::len), Some(1));
    assert!(status["memory"]["used_bytes"].as_u64() > Some(0));
    assert_eq!(status["storage"]["state"], "ok");

    let sessions = ask_json(&gw, &["sessions"]).await;
    let p5_row = row(&sessions, "p5");
    assert_eq!(p5_row["subject"], "dev-p5");
    assert_eq!(p5_row["state"], "live");
    assert_eq!(p5_row["protocol"], "5");
    assert_eq!(p5_row["transport"], "tls");
    assert_eq!(p5_row["subscriptions"], 1);
    assert_eq!(p5_row["token_expires"], rfc3339(p5_exp));
    assert!(
        p5_row["remote"]
            .as_str()
            .is_some_and(|r| r.starts_with("127.0.0.1:"))
    );
    assert_eq!(row(&sessions, "r4")["protocol"], "3.1.1");

    let only = ask_json(&gw, &["sessions", "--subject", "dev-r4"]).await;
    assert_eq!(only.as_array().map(Vec::len), Some(1), "{only:#}");
    let table = ask(&gw, &["sessions", "--client-id", "p5"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2, "{table}");
    assert!(lines[0].starts_with("SUBJECT  CLIENT ID"), "{table}");
    assert!(
        lines[1].starts_with("dev-p5   p5         live") && lines[1].contains(" 5/tls "),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_ends_connections_with_0x98_and_parks_or_discards_sessions() {
    let gw = DevBinary::start("", "").await;

    // MQTT 5: told why.
    let (p5_token, _) = token(&gw, "dev-p5");
    let mut p5 = paho(&gw, Version::V5, "p5", &p5_token, None);
    assert_eq!(connack(&mut p5).await, 0);
    let said = ask(&gw, &["disconnect", "--client-id", "p5"]).await;
    assert_eq!(said, "disconnected 1 connection; discarded 0 sessions\n");
    let told = p5
        .line("DISCONNECTED", |l| l.starts_with("DISCONNECTED "))
        .await;
    assert_eq!(told, "DISCONNECTED 152", "paho was not told 0x98");

    // A persistent session is parked, then discarded on request.
    let (r4_token, _) = token(&gw, "dev-r4");
    let mut r4 = persistent_v4(&gw, "r4", &r4_token).await;
    r4.subscribe("adm/r4", rumqttc::QoS::AtLeastOnce).await;
    let said = ask(&gw, &["disconnect", "--subject", "dev-r4"]).await;
    assert_eq!(said, "disconnected 1 connection; discarded 0 sessions\n");
    r4.closed().await;
    let sessions = ask_json(&gw, &["sessions"]).await;
    let parked = row(&sessions, "r4");
    assert_eq!(parked["state"], "parked", "{sessions:#}");
    assert!(parked["session_expires"].is_string(), "{parked:#}");
    assert_eq!(parked["subscriptions"], 1);
    assert!(parked["remote"].is_null());
    let done = ask_json(
        &gw,
        &["disconnect", "--subject", "dev-r4", "--discard-session"],
    )
    .await;
    assert_eq!(done, json!({ "connections": 0, "sessions_discarded": 1 }));
    assert_eq!(ask_json(&gw, &["sessions"]).await, json!([]));

    // A live one discarded: it comes back to no session.
    let mut r4 = persistent_v4(&gw, "r4", &r4_token).await;
    r4.subscribe("adm/r4", rumqttc::QoS::AtLeastOnce).await;
    let done = ask_json(
        &gw,
        &["disconnect", "--client-id", "r4", "--discard-session"],
    )
    .await;
    assert_eq!(done, json!({ "connections": 1, "sessions_discarded": 1 }));
    r4.closed().await;
    let mut options = gw.v4_options("r4", &r4_token);
    options.set_clean_session(false);
    let mut again = V4Client::start(options);
    assert!(!again.connack().await.session_present);

    let none = ask(&gw, &["disconnect", "--client-id", "nobody"]).await;
    assert_eq!(none, "no live connection or session matched\n");
    let log = gw.served.log();
    assert!(
        log.contains("administrative disconnect") && log.contains("discard_session=true"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_for_its_owner_and_group_only() {
    let gw = DevBinary::start("", "").await;
    let socket = socket_of(&gw);
    let meta = std::fs::symlink_metadata(&socket).expect("the admin socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    // A caller outside owner and group: as root, run as nobody with the
    // directories open to all, so that the socket's own mode decides; as
    // anyone else, the owner takes its own permission away.
    // The binary is copied there too: the checkout it was built in may be
    // closed to others (a clone in a 0700 `mktemp -d`).
    let root = unsafe { libc::geteuid() } == 0;
    let binary = gw.dir().join("jwtgate");
    let nobody = if root {
        for dir in [gw.dir(), &gw.dir().join("state")] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                .expect("open the directory");
        }
        std::fs::copy(env!("CARGO_BIN_EXE_jwtgate"), &binary).expect("copy the binary");
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755))
            .expect("make the copy runnable by all");
        Some(65534)
    } else {
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o000))
            .expect("chmod the socket");
        None
    };
    let path = socket.to_str().expect("a UTF-8 path");
    let binary = if nobody.is_some() {
        binary
    } else {
        PathBuf::from(env!("CARGO_BIN_EXE_jwtgate"))
    };
    let out = jwtgate_as(&["status", "--socket", path], &binary, nobody).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let said = stderr(&out);
    assert_eq!(said.lines().count(), 1, "{said}");
    assert!(said.starts_with("jwtgate: permission denied on "), "{said}");
    assert!(stdout(&out).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_is_not_running_is_one_line_and_exit_status_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("admin.sock");
    // What a gateway killed with SIGKILL leaves: the file, nobody behind it.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    for socket in [&missing, &stale] {
        for command in [
            vec!["status"],
            vec!["sessions"],
            vec!["disconnect", "--client-id", "x"],
        ] {
            let mut args = command.clone();
            args.extend(["--socket", socket.to_str().expect("a UTF-8 path")]);
            let out = jwtgate(&args).await;
            assert_eq!(out.status.code(), Some(2), "{args:?}");
            let said = stderr(&out);
            assert_eq!(said.lines().count(), 1, "{args:?}: {said}");
            assert!(
                said.starts_with("jwtgate: the gateway is not running"),
                "{args:?}: {said}"
            );
        }
    }
    // disconnect needs to be told whom.
    let out = jwtgate(&["disconnect", "--socket", missing.to_str().unwrap_or("")]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// What a local caller may send that is not a request: each gets an
/// error answer, and the gateway goes on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_are_not_requests_are_answered_and_change_nothing() {
    let gw = DevBinary::start("", "").await;
    let socket = socket_of(&gw);
    let long = format!(
        "{{\"command\":\"status\",\"x\":\"{}\"}}\n",
        "a".repeat(1 << 20)
    );
    for (what, request) in [
        ("garbage", b"\x00\xffnot json\n".to_vec()),
        ("unknown command", b"{\"command\":\"shutdown\"}\n".to_vec()),
        (
            "disconnect everyone",
            b"{\"command\":\"disconnect\",\"filter\":{}}\n".to_vec(),
        ),
        ("a megabyte", long.into_bytes()),
    ] {
        let answer = raw_request(&socket, &request).await;
        assert!(
            answer.starts_with("{\"error\":"),
            "{what}: answered {answer:?}"
        );
    }
    // Silence: answered when its time is up, not held forever.
    let started = std::time::Instant::now();
    let answer = raw_request(&socket, b"").await;
    assert!(answer.contains("no request within"), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(15));
    let status = ask_json(&gw, &["status"]).await;
    assert_eq!(status["connections"]["total"], 0);
}

/// Writes `request` (leaving the socket open for writing) and reads the
/// whole answer.
async fn raw_request(socket: &Path, request: &[u8]) -> String {
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect to the admin socket");
    // The gateway may answer (and close) before taking a long request whole.
    let _ = stream.write_all(request).await;
    let mut answer = String::new();
    let read =
        tokio::time::timeout(Duration::from_secs(15), stream.read_to_string(&mut answer)).await;
    assert!(read.is_ok(), "no answer to {} bytes", request.len());
    answer
}
