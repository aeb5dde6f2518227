//! Integration tests for the uplink bridge (issue 11): the real `jwtgate`
//! binary bridged over TLS to a real Mosquitto as the central broker.
//!
//! An outage of the remote is a [`Relay`] between the two that can be
//! switched off: connections through it are cut and new ones refused, while
//! Mosquitto and the test's own subscriber on it stay up, so nothing the
//! bridge delivers after the outage can be missed by the test.
//!
//! The limits on waits only keep a broken test from hanging; none is a
//! speed requirement (the drain rate is printed, and measured properly by
//! the benchmark).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::mosquitto::Mosquitto;
use common::relay::{Pace, Relay};
use common::scrape::{metrics_port, scrape, value};
use common::{DevBinary, QUIET, V4Client};
use rumqttc::{ConnectReturnCode, QoS, SubscribeReasonCode};

/// How long the longest wait (a 10,000-message drain) may take before the
/// test gives up.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);

/// A `[[bridge]]` table for `name` to `remote_port` through TLS, trusting
/// Mosquitto's CA, with `credential` (`password_file = "..."` or
/// `token_file = "..."`) and `rules`.
fn bridge_table(
    mosquitto: &Mosquitto,
    remote_port: u16,
    credential: &str,
    rules: &str,
    extra: &str,
) -> String {
    format!(
        "[[bridge]]\nname = \"cloud\"\nremote = \"mqtts://127.0.0.1:{remote_port}\"\n\
         ca_file = \"{ca}\"\nclient_id = \"site-42\"\nusername = \"site-42\"\n{credential}\n\
         keep_alive_secs = 5\n{rules}\n{extra}\n",
        ca = mosquitto.ca_pem_path().display(),
    )
}

/// The gateway, bridged straight to `mosquitto` (no relay) with a
/// password file in `secrets`, once its bridge is connected.
async fn bridged_to(mosquitto: &Mosquitto, secrets: &Path, rules: &str, extra: &str) -> DevBinary {
    let gw = DevBinary::start(
        "",
        &bridge_table(
            mosquitto,
            mosquitto.tls_port(),
            &password_file(mosquitto, secrets),
            rules,
            extra,
        ),
    )
    .await;
    gw.served.wait_for_log(0, "bridge connected").await;
    gw
}

fn password_file(mosquitto: &Mosquitto, dir: &Path) -> String {
    let path = dir.join("uplink.password");
    mosquitto.write_password_file(&path);
    format!("password_file = \"{}\"", path.display())
}

/// A central Mosquitto, a relay to it (cut unless `up`), and the gateway
/// bridged through the relay with a password file, `rules` and `extra`.
struct Bridged {
    mosquitto: Mosquitto,
    relay: Relay,
    gw: DevBinary,
    _secrets: tempfile::TempDir,
}

async fn bridged(up: bool, rules: &str, extra: &str) -> Bridged {
    bridged_within(up, rules, extra, None).await
}

/// As [`bridged`], the gateway's files limited to `file_size` bytes if
/// given.
async fn bridged_within(up: bool, rules: &str, extra: &str, file_size: Option<u64>) -> Bridged {
    let mosquitto = Mosquitto::start().await;
    let relay = Relay::start(mosquitto.tls_port(), up).await;
    let secrets = tempfile::tempdir().expect("temp dir");
    let credential = password_file(&mosquitto, secrets.path());
    let table = bridge_table(&mosquitto, relay.port, &credential, rules, extra);
    let gw = match file_size {
        None => DevBinary::start("", &table).await,
        Some(limit) => DevBinary::start_with_file_size_limit("", &table, limit).await,
    };
    Bridged {
        mosquitto,
        relay,
        gw,
        _secrets: secrets,
    }
}

/// Collects publishes on `client` until `count` arrived or `limit` passed.
async fn collect(client: &mut V4Client, count: usize, limit: Duration) -> Vec<rumqttc::Publish> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while seen.len() < count && Instant::now() < deadline {
        seen.extend(client.publishes_within(Duration::from_millis(200)).await);
    }
    seen
}

/// `devices` devices publish `each` QoS 1 messages, payload
/// `"{device}:{n}"`, on `sensors/{device}/data`, every one PUBACKed.
async fn publish_from_devices(gw: &DevBinary, devices: usize, each: usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for d in 0..devices {
        let sub = format!("dev{d}");
        let token = gw.token(
            &sub,
            &[&format!("sensors/{sub}/#")],
            Duration::from_secs(3600),
        );
        let mut device = V4Client::start(gw.v4_options(&sub, &token));
        assert_eq!(device.connack().await.code, ConnectReturnCode::Success);
        tasks.spawn(async move {
            for n in 0..each {
                let payload = format!("{d}:{n}");
                device
                    .publish(
                        &format!("sensors/dev{d}/data"),
                        QoS::AtLeastOnce,
                        false,
                        payload.as_bytes(),
                    )
                    .await;
            }
            device.disconnect().await;
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a device task");
    }
}

/// Per device, the message numbers in arrival order.
fn by_device(publishes: &[rumqttc::Publish]) -> HashMap<usize, Vec<usize>> {
    let mut seen: HashMap<usize, Vec<usize>> = HashMap::new();
    for p in publishes {
        let text = String::from_utf8_lossy(&p.payload);
        let (d, n) = text.split_once(':').expect("payload device:n");
        seen.entry(d.parse().expect("device number"))
            .or_default()
            .push(n.parse().expect("message number"));
    }
    seen
}

const FORWARD_SENSORS: &str =
    "forward = [ { local = \"sensors/#\", remote_prefix = \"site-42/\", qos = 1 } ]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_built_while_the_remote_is_down_drains_in_order_without_new_publishes() {
    let Bridged {
        mosquitto,
        relay,
        gw,
        _secrets,
    } = bridged(false, FORWARD_SENSORS, "").await;
    let mut central = mosquitto.subscriber("central", "site-42/#").await;

    let (devices, each) = (10, 1000);
    publish_from_devices(&gw, devices, each).await;
    // The uplink is down: nothing reaches the central broker (and its
    // subscriber is still there to see it).
    central.expect_no_publish().await;

    let up_at = Instant::now();
    relay.set_up(true);
    let arrived = collect(&mut central, devices * each, DRAIN_LIMIT).await;
    let drained_in = up_at.elapsed();
    let seen = by_device(&arrived);
    for d in 0..devices {
        let got = seen.get(&d).map(Vec::as_slice).unwrap_or_default();
        let expected: Vec<usize> = (0..each).collect();
        assert_eq!(
            got,
            expected.as_slice(),
            "device {d}: missing, duplicated or out of order"
        );
    }
    println!(
        "backlog of {} QoS 1 messages drained in {:.2} s from the remote coming back, the reconnect backoff included ({:.0} msgs/s)",
        arrived.len(),
        drained_in.as_secs_f64(),
        arrived.len() as f64 / drained_in.as_secs_f64()
    );
    gw.served.wait_for_log(0, "bridge: backlog drained").await;
    let log = gw.served.log();
    let drained = log
        .lines()
        .find(|line| line.contains("bridge: backlog drained"))
        .unwrap_or_default();
    println!("gateway, from its reconnect: {drained}");
    gw.assert_no_panic();
}

/// Collects publishes on `client` until the connection has been quiet for
/// `quiet` (or `limit` passed).
async fn until_quiet(
    client: &mut V4Client,
    quiet: Duration,
    limit: Duration,
) -> Vec<rumqttc::Publish> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let more = client.publishes_within(quiet).await;
        if more.is_empty() || Instant::now() >= deadline {
            return seen;
        }
        seen.extend(more);
    }
}

/// Whether every device's messages `0..each` are all in `seen`.
fn all_arrived(seen: &HashMap<usize, Vec<usize>>, devices: usize, each: usize) -> bool {
    (0..devices).all(|d| {
        seen.get(&d).is_some_and(|got| {
            let mut unique = got.clone();
            unique.sort_unstable();
            unique.dedup();
            unique.len() == each
        })
    })
}

/// A remote that reads slowly: the gateway-to-remote direction carries at
/// most 512 bytes every 2 ms (about 6,000 bridged messages a second), so
/// that a drain keeps messages on their way, where a power cut loses them.
const SLOW_REMOTE: Pace = Pace {
    chunk: 512,
    pause: Duration::from_millis(2),
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_the_drain_loses_nothing_a_device_had_acknowledged() {
    let mosquitto = Mosquitto::start().await;
    let relay = Relay::start_paced(mosquitto.tls_port(), false, Some(SLOW_REMOTE)).await;
    let secrets = tempfile::tempdir().expect("temp dir");
    let credential = password_file(&mosquitto, secrets.path());
    let mut gw = DevBinary::start(
        "",
        &bridge_table(&mosquitto, relay.port, &credential, FORWARD_SENSORS, ""),
    )
    .await;
    let mut central = mosquitto.subscriber("central", "site-42/#").await;
    let (devices, each) = (4, 1500);
    let total = devices * each;
    publish_from_devices(&gw, devices, each).await;

    // The kill comes once half the backlog has reached the central
    // subscriber: mid-drain, since the slow remote takes about a second
    // for all of it, and long enough after the drain began for what the
    // bridge took off its queue to be on disk. A power cut: the uplink goes
    // with the process, and what was on its way to the remote is lost with
    // it, so only what the remote acknowledged may be taken off the queue.
    relay.set_up(true);
    let mut arrived = collect(&mut central, total / 2, DRAIN_LIMIT).await;
    relay.set_up(false);
    gw.served.kill().await;
    // What had got through still arrives; then nothing more until the
    // restart.
    arrived.extend(until_quiet(&mut central, Duration::from_secs(1), DRAIN_LIMIT).await);
    let before_kill = arrived.len();
    assert!(
        0 < before_kill && before_kill < total,
        "the kill did not come during the drain: {before_kill} of {total} had arrived"
    );

    relay.set_up(true);
    gw.restart().await;
    let deadline = Instant::now() + DRAIN_LIMIT;
    while !all_arrived(&by_device(&arrived), devices, each) && Instant::now() < deadline {
        arrived.extend(central.publishes_within(Duration::from_millis(200)).await);
    }
    // Late duplicates of what was in flight at the kill.
    arrived.extend(central.publishes_within(Duration::from_millis(500)).await);

    // Every acknowledged message arrived at least once, in all.
    let seen = by_device(&arrived);
    let mut duplicates = 0;
    for d in 0..devices {
        let got = seen.get(&d).cloned().unwrap_or_default();
        let mut unique = got.clone();
        unique.sort_unstable();
        unique.dedup();
        duplicates += got.len() - unique.len();
        let missing: Vec<usize> = (0..each)
            .filter(|n| unique.binary_search(n).is_err())
            .collect();
        assert!(
            missing.is_empty(),
            "device {d}: acknowledged messages {missing:?} missing after the kill \
             ({before_kill} of {total} had arrived before it)"
        );
    }
    println!(
        "killed after {before_kill} of {total} arrived; all arrived after the restart, \
         {duplicates} duplicates"
    );
    gw.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_commands_reach_granted_devices_only_and_never_loop_back() {
    let mosquitto = Mosquitto::start().await;
    let secrets = tempfile::tempdir().expect("temp dir");
    // MQTT 3.1.1 has no no-local: what stops the loop here (cmd/# is both
    // forwarded and subscribed) is the bridge itself.
    let rules = "protocol = 4\n\
         forward = [ { local = \"cmd/#\", remote_prefix = \"site-42/\" } ]\n\
         subscribe = [ { remote = \"site-42/cmd/#\", strip_prefix = \"site-42/\", local_prefix = \"\" } ]";
    let gw = bridged_to(&mosquitto, secrets.path(), rules, "").await;

    let granted_token = gw.token("thermostat", &["cmd/#"], Duration::from_secs(3600));
    let mut granted = V4Client::start(gw.v4_options("thermostat", &granted_token));
    assert_eq!(granted.connack().await.code, ConnectReturnCode::Success);
    assert_eq!(
        granted.subscribe("cmd/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let other_token = gw.token("sensor", &["sensors/sensor/#"], Duration::from_secs(3600));
    let mut other = V4Client::start(gw.v4_options("sensor", &other_token));
    assert_eq!(other.connack().await.code, ConnectReturnCode::Success);
    assert_eq!(
        other.subscribe("cmd/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Failure]
    );
    assert_eq!(
        other.subscribe("sensors/sensor/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    let mut watcher = mosquitto.subscriber("watcher", "site-42/#").await;
    let mut operator = mosquitto.connected("operator").await;
    operator
        .publish("site-42/cmd/x", QoS::AtLeastOnce, false, b"setpoint=21")
        .await;

    let got = granted.expect_publish("cmd/x").await;
    assert_eq!(&got.payload[..], b"setpoint=21");
    other.expect_no_publish().await;
    // The command once at the central broker (the operator's own), never
    // again as a forward of the bridged copy, and once at the device.
    let central_copies = watcher.publishes_within(Duration::from_secs(1)).await;
    assert_eq!(central_copies.len(), 1, "looped back: {central_copies:?}");
    granted.expect_no_publish().await;

    // A device's own publish on cmd/ is forwarded (the rule works) once.
    // Over MQTT 3.1.1 Mosquitto hands the forward back to the bridge's
    // own subscription; that copy comes in once and stops there.
    granted
        .publish("cmd/ack", QoS::AtLeastOnce, false, b"done")
        .await;
    let forwarded = watcher.expect_publish("site-42/cmd/ack").await;
    assert_eq!(&forwarded.payload[..], b"done");
    let more = watcher.publishes_within(Duration::from_secs(1)).await;
    assert!(more.is_empty(), "forwarded again: {more:?}");
    let copies = granted.publishes_within(Duration::from_millis(500)).await;
    assert!(
        copies.len() <= 2 && copies.iter().all(|p| p.topic == "cmd/ack"),
        "the device's own message and at most one bridged copy: {copies:?}"
    );
    gw.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_queue_budget_the_oldest_are_dropped_and_counted_and_devices_are_served() {
    let Bridged {
        mosquitto,
        relay,
        gw,
        _secrets,
    } = bridged(false, FORWARD_SENSORS, "max_queue_mb = 1").await;
    let mut central = mosquitto.subscriber("central", "site-42/#").await;

    // 3 MB for a 1 MiB queue.
    let token = gw.token("dev0", &["sensors/dev0/#"], Duration::from_secs(3600));
    let mut device = V4Client::start(gw.v4_options("dev0", &token));
    assert_eq!(device.connack().await.code, ConnectReturnCode::Success);
    let total = 3000;
    for n in 0..total {
        let mut payload = format!("0:{n}:").into_bytes();
        payload.resize(1000, b'x');
        device
            .publish("sensors/dev0/data", QoS::AtLeastOnce, false, &payload)
            .await;
    }
    gw.served
        .wait_for_log(
            0,
            "bridge queue: queue budget reached: the oldest messages were dropped",
        )
        .await;

    // Still serving devices while the queue is full.
    let listener_token = gw.token("dev1", &["sensors/#"], Duration::from_secs(3600));
    let mut listener = V4Client::start(gw.v4_options("dev1", &listener_token));
    assert_eq!(listener.connack().await.code, ConnectReturnCode::Success);
    listener.subscribe("sensors/#", QoS::AtLeastOnce).await;
    device
        .publish("sensors/dev0/live", QoS::AtLeastOnce, false, b"still here")
        .await;
    assert_eq!(
        &listener.expect_publish("sensors/dev0/live").await.payload[..],
        b"still here"
    );

    relay.set_up(true);
    let arrived = collect(&mut central, total, Duration::from_secs(20)).await;
    let numbers: Vec<usize> = arrived
        .iter()
        .filter(|p| p.topic == "site-42/sensors/dev0/data")
        .map(|p| {
            let text = String::from_utf8_lossy(&p.payload);
            text.split(':')
                .nth(1)
                .and_then(|n| n.parse().ok())
                .expect("message number")
        })
        .collect();
    assert!(
        !numbers.is_empty() && numbers.len() < total,
        "kept {} of {total}",
        numbers.len()
    );
    // What is kept is the newest, in order, ending with the last.
    let first = numbers[0];
    assert_eq!(numbers, (first..total).collect::<Vec<_>>());
    assert!(
        (total - numbers.len()) * 1000 > 1024 * 1024,
        "dropped {} of {total}",
        total - numbers.len()
    );
    println!(
        "queue budget 1 MiB: {} of {total} 1 kB messages kept, the oldest {first} dropped",
        numbers.len()
    );
    gw.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_is_used_at_the_next_reconnect() {
    let mut mosquitto = Mosquitto::start().await;
    let relay = Relay::start(mosquitto.tls_port(), true).await;
    mosquitto.add_user("token-user", "first-token").await;
    let secrets = tempfile::tempdir().expect("temp dir");
    let token_file = secrets.path().join("uplink.jwt");
    std::fs::write(&token_file, "first-token\n").expect("write the token");
    let table = bridge_table(
        &mosquitto,
        relay.port,
        &format!("token_file = \"{}\"", token_file.display()),
        FORWARD_SENSORS,
        "",
    )
    .replace("username = \"site-42\"", "username = \"token-user\"");
    let gw = DevBinary::start("", &table).await;
    gw.served.wait_for_log(0, "bridge connected").await;

    // A refresher writes the new token while the bridge is connected; then
    // the central broker stops taking the old one (Mosquitto drops the
    // bridge as it reloads its passwords) and the link is cut as well.
    std::fs::write(&token_file, "second-token\n").expect("rotate the token");
    let since = gw.served.log().len();
    mosquitto.add_user("token-user", "second-token").await;
    relay.set_up(false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.set_up(true);
    gw.served
        .wait_for_log(since, "bridge: connection ended")
        .await;
    // Only the new token is accepted now: connecting proves it was read.
    gw.served.wait_for_log(since, "bridge connected").await;

    let mut central = mosquitto.subscriber("central", "site-42/#").await;
    let token = gw.token("dev0", &["sensors/dev0/#"], Duration::from_secs(3600));
    let mut device = V4Client::start(gw.v4_options("dev0", &token));
    assert_eq!(device.connack().await.code, ConnectReturnCode::Success);
    device
        .publish("sensors/dev0/data", QoS::AtLeastOnce, false, b"0:0")
        .await;
    central.expect_publish("site-42/sensors/dev0/data").await;
    gw.assert_no_panic();
}

/// A tmpfs mounted on a new temporary directory, unmounted when dropped:
/// a small disk that can fill up for real (ENOSPC). `None` where mounting
/// is not allowed.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        mounted.then_some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk with a file, leaving about `leave` bytes free.
    fn fill_leaving(&self, leave: u64) -> std::path::PathBuf {
        let filler = self.path().join("filler");
        let free = fs_free(self.path());
        let chunk = vec![0u8; 64 * 1024];
        let mut file = std::fs::File::create(&filler).expect("create the filler");
        let mut written = 0;
        while written + (chunk.len() as u64) + leave <= free {
            use std::io::Write as _;
            file.write_all(&chunk).expect("write the filler");
            written += chunk.len() as u64;
        }
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Bytes free on the file system holding `path`.
fn fs_free(path: &Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .expect("run df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .expect("df's figure")
}

/// Rows in the bridge's queue table, read from the database beside the
/// running gateway (WAL mode lets a reader in).
fn queue_rows(state_dir: &Path) -> u64 {
    let db = rusqlite::Connection::open_with_flags(
        state_dir.join("jwtgate.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the database read-only");
    db.query_row("SELECT COUNT(*) FROM \"queue:cloud\"", [], |row| row.get(0))
        .expect("count the queue's rows")
}

/// Publishes message `n` (payload `"0:{n}:"`, 1000 bytes) at QoS 1 on
/// `sensors/dev0/data`; `Ok(n)` when its PUBACK said success, else the
/// PUBACK's reason.
async fn publish_numbered(device: &mut common::V5Client, n: usize) -> Result<usize, String> {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
    let mut payload = format!("0:{n}:").into_bytes();
    payload.resize(1000, b'x');
    match device
        .publish("sensors/dev0/data", QoS::AtLeastOnce, false, &payload)
        .await
    {
        Some(Packet::PubAck(ack)) if ack.reason == PubAckReason::Success => Ok(n),
        Some(Packet::PubAck(ack)) => Err(format!("{:?}", ack.reason)),
        other => panic!("expected a PUBACK, got {other:?}"),
    }
}

/// `jwtgate_storage_disk_full` and `jwtgate_storage_failed_commits_total`
/// as the gateway's metrics endpoint serves them.
async fn storage_metrics(gw: &DevBinary) -> (f64, f64) {
    let scraped = scrape(metrics_port(gw).await).await;
    (
        value(&scraped, "jwtgate_storage_disk_full"),
        value(&scraped, "jwtgate_storage_failed_commits_total"),
    )
}

/// How a test's disk fills up, and how space comes back.
enum FullDisk {
    /// A small tmpfs (ENOSPC), filled by a file that is then removed.
    Tmpfs(SmallDisk),
    /// A file size limit on the gateway (EFBIG), then lifted: no root
    /// needed.
    FileSizeLimit,
}

/// Issue 19, item 4, on a real full disk (a tmpfs; root only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_full_disk_only_committed_publishes_are_acknowledged_and_the_queue_recovers() {
    // Run as root (as `.ci/run` is), a failed mount fails the test rather
    // than passing it unchecked. A developer's unprivileged run says it
    // skipped this case: the file size limit case below is the same check
    // without root.
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIPPED: the tmpfs full-disk case needs root (it mounts a tmpfs);              past_a_file_size_limit_... checks the same without it"
        );
        return;
    }
    let disk = SmallDisk::mount("16m")
        .expect("cannot mount a tmpfs here although running as root (CAP_SYS_ADMIN missing?)");
    only_committed_publishes_are_acknowledged(FullDisk::Tmpfs(disk)).await;
}

/// Issue 19, item 4, past a file size limit: the same without root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_a_file_size_limit_only_committed_publishes_are_acknowledged_and_the_queue_recovers() {
    only_committed_publishes_are_acknowledged(FullDisk::FileSizeLimit).await;
}

/// On a full disk a QoS 1 PUBLISH bound for the uplink is acknowledged
/// with success only if its queue row was committed; the others are
/// answered with an error reason (MQTT 5), or the connection is closed
/// without the ack (MQTT 3.1.1). Once space returns, the queue takes
/// messages again without a restart, and everything acknowledged, and
/// nothing else, reaches the central broker.
async fn only_committed_publishes_are_acknowledged(disk: FullDisk) {
    let metrics = "[metrics]\nlisten = \"127.0.0.1:0\"\n";
    let (extra, file_size) = match &disk {
        FullDisk::Tmpfs(disk) => (
            format!(
                "{metrics}[storage]\ndir = \"{}\"\n",
                disk.path().join("state").display()
            ),
            None,
        ),
        FullDisk::FileSizeLimit => (metrics.to_owned(), Some(512 * 1024)),
    };
    let Bridged {
        mosquitto,
        relay,
        gw,
        _secrets,
    } = bridged_within(false, FORWARD_SENSORS, &extra, file_size).await;
    let mut central = mosquitto.subscriber("central", "site-42/#").await;
    let (state, filler) = match &disk {
        FullDisk::Tmpfs(disk) => (
            disk.path().join("state"),
            Some(disk.fill_leaving(512 * 1024)),
        ),
        FullDisk::FileSizeLimit => (gw.dir().join("state"), None),
    };

    let token = gw.token("dev0", &["sensors/dev0/#"], Duration::from_secs(3600));
    let mut device = common::V5Client::start(common::v5_options_for(
        gw.served.port(),
        &gw.ca,
        "dev0",
        &token,
    ));
    device.connack().await;
    let mut acked = Vec::new();
    let mut refused: HashMap<String, usize> = HashMap::new();
    let full_phase = 1000;
    for n in 0..full_phase {
        match publish_numbered(&mut device, n).await {
            Ok(n) => acked.push(n),
            Err(reason) => *refused.entry(reason).or_default() += 1,
        }
    }
    let rows = queue_rows(&state);
    println!(
        "{}: {} of {full_phase} QoS 1 publishes acknowledged with success, {rows} rows committed; refused: {refused:?}",
        match disk {
            FullDisk::Tmpfs(_) => "full tmpfs",
            FullDisk::FileSizeLimit => "file size limit",
        },
        acked.len()
    );
    assert!(
        acked.len() as u64 <= rows,
        "{} PUBACKs said success for {rows} committed rows",
        acked.len()
    );
    assert!(
        acked.len() < full_phase,
        "the disk never filled up: {} rows",
        rows
    );
    assert!(
        refused.keys().all(|reason| reason == "QuotaExceeded"),
        "no room is quota exceeded (0x97): {refused:?}"
    );
    let (disk_full, failed_commits) = storage_metrics(&gw).await;
    assert_eq!(disk_full, 1.0);
    assert!(failed_commits >= 1.0, "{failed_commits}");

    // MQTT 3.1.1 has no way to say it: the device is closed without its
    // PUBACK, and sends the message again once it reconnects.
    let token = gw.token("dev1", &["sensors/dev1/#"], Duration::from_secs(3600));
    let mut old = V4Client::start(gw.v4_options("dev1", &token));
    assert_eq!(old.connack().await.code, ConnectReturnCode::Success);
    let mut payload = b"1:0:".to_vec();
    payload.resize(1000, b'x');
    old.client
        .publish("sensors/dev1/data", QoS::AtLeastOnce, false, payload)
        .await
        .expect("queue PUBLISH");
    loop {
        match old.next_packet().await {
            Ok(rumqttc::Packet::PubAck(ack)) => panic!("PUBACK {ack:?} for a message not kept"),
            Ok(_) => {}
            Err(_) => break,
        }
    }

    // Space comes back: the same process takes messages again.
    let full_log = gw.served.log().len();
    match filler {
        Some(filler) => std::fs::remove_file(&filler).expect("remove the filler"),
        None => gw.served.lift_file_size_limit(),
    }
    let recovered = 200;
    let before = acked.len();
    for n in full_phase..full_phase + recovered {
        match publish_numbered(&mut device, n).await {
            Ok(n) => acked.push(n),
            Err(reason) => *refused.entry(reason).or_default() += 1,
        }
    }
    assert_eq!(
        acked.len() - before,
        recovered,
        "publishes after space returned were refused: {refused:?}"
    );
    assert_eq!(queue_rows(&state), acked.len() as u64);
    assert_eq!(
        storage_metrics(&gw).await.0,
        0.0,
        "the disk-full state cleared"
    );
    let log = gw.served.log();
    let failing = log.matches("storage: commits are failing").count();
    let recovered_lines = log.matches("storage: commits succeed again").count();
    println!(
        "log: {failing} line(s) on commits failing, {recovered_lines} on their recovery, {} per failed commit",
        log.matches("storage: a commit failed").count()
    );
    assert_eq!((failing, recovered_lines), (1, 1), "{log}");
    assert!(
        log[full_log..].contains("storage: commits succeed again"),
        "the recovery was reported before space came back:\n{log}"
    );

    relay.set_up(true);
    let arrived = collect(&mut central, acked.len(), DRAIN_LIMIT).await;
    let numbers: Vec<usize> = arrived
        .iter()
        .map(|p| {
            let text = String::from_utf8_lossy(&p.payload);
            text.split(':')
                .nth(1)
                .and_then(|n| n.parse().ok())
                .expect("message number")
        })
        .collect();
    assert_eq!(
        numbers, acked,
        "the central broker must get exactly what was acknowledged, in order"
    );
    gw.assert_no_panic();
}

/// Issue 19: the bridge's cache of recent messages gives way to the
/// devices. 1,500 messages of 100 KB forwarded into a cut uplink, with a
/// 128 MiB memory budget, once filled the cache past the budget: retained
/// messages were refused and a parked session's messages dropped. Now the
/// cache keeps to its share, and both are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_uplink_with_large_messages_leaves_the_memory_budget_to_sessions() {
    let Bridged {
        mosquitto: _mosquitto,
        relay: _relay,
        gw,
        _secrets,
    } = bridged(false, FORWARD_SENSORS, "[limits]\nmemory_budget_mb = 128\n").await;
    let hour = Duration::from_secs(3600);

    // A persistent subscriber, away while the burst comes.
    let token = gw.token("panel", &["cmd/#", "status/#"], hour);
    let mut options = gw.v4_options("panel", &token);
    options.set_clean_session(false);
    let mut panel = V4Client::start(options.clone());
    assert_eq!(panel.connack().await.code, ConnectReturnCode::Success);
    panel.subscribe("cmd/#", QoS::AtLeastOnce).await;
    panel.disconnect().await;

    let token = gw.token("dev0", &["sensors/dev0/#"], hour);
    let mut device = V4Client::start(gw.v4_options("dev0", &token));
    assert_eq!(device.connack().await.code, ConnectReturnCode::Success);
    let payload = vec![b'x'; 100 * 1024];
    for _ in 0..1500 {
        device
            .publish("sensors/dev0/data", QoS::AtLeastOnce, false, &payload)
            .await;
    }
    let memory = gw.served.memory();

    let token = gw.token("operator", &["cmd/#", "status/#"], hour);
    let mut operator = V4Client::start(gw.v4_options("operator", &token));
    assert_eq!(operator.connack().await.code, ConnectReturnCode::Success);
    operator
        .publish("status/site", QoS::AtLeastOnce, true, b"up")
        .await;
    for n in 0..20 {
        operator
            .publish(
                "cmd/panel",
                QoS::AtLeastOnce,
                false,
                format!("{n}").as_bytes(),
            )
            .await;
    }
    let mut panel = V4Client::start(options);
    assert!(panel.connack().await.session_present);
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while got.len() < 20 && std::time::Instant::now() < deadline {
        got.extend(panel.publishes_within(Duration::from_millis(200)).await);
    }
    panel.subscribe("status/#", QoS::AtLeastOnce).await;
    let retained = panel.publishes_within(Duration::from_millis(500)).await;
    println!(
        "1,500 x 100 KB into a cut uplink, 128 MiB budget: RSS {} MiB (peak {} MiB); the parked session got {} of 20; retained kept: {}",
        memory.rss >> 20,
        memory.peak >> 20,
        got.len(),
        retained.iter().any(|p| p.topic == "status/site"),
    );
    assert_eq!(got.len(), 20, "a parked session's messages were dropped");
    assert!(
        retained.iter().any(|p| p.topic == "status/site"),
        "the retained message was refused"
    );
    assert!(
        !gw.served.log().contains("memory budget used up"),
        "{}",
        gw.served.log()
    );
    gw.assert_no_panic();
}

/// How the edge goes down in [`commands_sent_while_the_edge_is_down_arrive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EdgeDown {
    /// SIGTERM: a clean stop, the parked sessions saved with their queues.
    Terminated,
    /// SIGKILL: a crash or a power cut, as far as the process can tell.
    Killed,
}

/// Publishes commands `range` on `site-42/cmd/y` at the central broker,
/// QoS 1, payload the number.
async fn send_commands(operator: &mut V4Client, range: std::ops::Range<usize>) {
    for n in range {
        operator
            .publish(
                "site-42/cmd/y",
                QoS::AtLeastOnce,
                false,
                n.to_string().as_bytes(),
            )
            .await;
    }
}

/// The command numbers `client` received, in arrival order, once `count`
/// arrived (or a limit passed).
async fn command_numbers(client: &mut V4Client, count: usize) -> Vec<usize> {
    collect(client, count, Duration::from_secs(20))
        .await
        .iter()
        .map(|p| {
            assert_eq!(p.topic, "cmd/y");
            String::from_utf8_lossy(&p.payload)
                .parse()
                .expect("a command number")
        })
        .collect()
}

/// Issue 26, item 1: commands published centrally while the edge gateway
/// is down (stopped, or killed) arrive at a persistent local subscriber
/// once it is back, in order: the bridge keeps its session at the remote,
/// which queues them meanwhile.
async fn commands_sent_while_the_edge_is_down_arrive(down: EdgeDown, protocol: u8) {
    let mosquitto = Mosquitto::start().await;
    let secrets = tempfile::tempdir().expect("temp dir");
    let rules = format!(
        "protocol = {protocol}\n\
         subscribe = [ {{ remote = \"site-42/cmd/#\", strip_prefix = \"site-42/\", qos = 1 }} ]"
    );
    let mut gw = bridged_to(&mosquitto, secrets.path(), &rules, "").await;
    assert!(
        gw.served.log().contains("session_present=false"),
        "the first connection finds no session:\n{}",
        gw.served.log()
    );

    // A persistent local subscriber, as a site's controller would be.
    let hour = Duration::from_secs(3600);
    let token = gw.token("panel", &["cmd/#"], hour);
    let mut options = gw.v4_options("panel", &token);
    options.set_clean_session(false);
    let mut panel = V4Client::start(options);
    assert_eq!(panel.connack().await.code, ConnectReturnCode::Success);
    panel.subscribe("cmd/#", QoS::AtLeastOnce).await;
    let mut operator = mosquitto.connected("operator").await;

    // Up: commands arrive at once.
    send_commands(&mut operator, 0..10).await;
    assert_eq!(
        command_numbers(&mut panel, 10).await,
        (0..10).collect::<Vec<_>>()
    );
    // The panel goes away; its session is parked (and written down).
    panel.disconnect().await;
    // Routed into the parked session while the gateway runs: written down
    // before the bridge acknowledges them to the remote, so that a kill
    // loses them no more than a clean stop does.
    send_commands(&mut operator, 10..20).await;
    let mut expected: Vec<usize> = (10..20).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    match down {
        EdgeDown::Terminated => gw.served.terminate().await,
        EdgeDown::Killed => gw.served.kill().await,
    }

    // The edge is down: the central broker holds these for the bridge.
    send_commands(&mut operator, 20..120).await;
    expected.extend(20..120);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let restarted_at = Instant::now();
    gw.restart().await;
    gw.served.wait_for_log(0, "bridge connected").await;
    let log = gw.served.log();
    let connected = log
        .lines()
        .find(|line| line.contains("bridge connected"))
        .unwrap_or_default();
    assert!(
        connected.contains("session_present=true"),
        "the remote kept the bridge's session: {connected}"
    );
    // Back up: more commands, while the panel is still away.
    send_commands(&mut operator, 120..130).await;
    expected.extend(120..130);

    // The restarted gateway listens on a new port: options made now.
    let mut options = gw.v4_options("panel", &token);
    options.set_clean_session(false);
    let mut panel = V4Client::start(options);
    assert!(panel.connack().await.session_present);
    let got = command_numbers(&mut panel, expected.len()).await;
    let late = panel.publishes_within(Duration::from_millis(500)).await;
    println!(
        "{down:?}, MQTT {protocol} remote: {} of {} commands sent while the edge was down or its subscriber away arrived, in order, {:.2} s after the restart began; {} late duplicates",
        got.len(),
        expected.len(),
        restarted_at.elapsed().as_secs_f64(),
        late.len()
    );
    assert_eq!(got, expected, "missing, duplicated or out of order");
    assert!(late.is_empty(), "duplicates: {late:?}");
    gw.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_sent_while_the_edge_is_stopped_arrive_after_the_restart() {
    commands_sent_while_the_edge_is_down_arrive(EdgeDown::Terminated, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_sent_while_the_edge_is_killed_arrive_after_the_restart() {
    commands_sent_while_the_edge_is_down_arrive(EdgeDown::Killed, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_sent_while_the_edge_is_killed_arrive_over_mqtt_3_1_1() {
    commands_sent_while_the_edge_is_down_arrive(EdgeDown::Killed, 4).await;
}

/// The bridge's `jwtgate_bridge_refused_total` by reason, from one scrape.
async fn bridge_refusals(gw: &DevBinary) -> HashMap<String, f64> {
    let port = common::scrape::metrics_port(gw).await;
    let scraped = common::scrape::scrape(port).await;
    ["topic_levels", "topic_bytes", "invalid_topic", "unmapped"]
        .iter()
        .map(|reason| {
            let series =
                format!("jwtgate_bridge_refused_total{{bridge=\"cloud\",reason=\"{reason}\"}}");
            assert!(
                scraped.contains_key(&series),
                "{series} is not exposed at zero"
            );
            (
                (*reason).to_owned(),
                common::scrape::value(&scraped, &series),
            )
        })
        .collect()
}

const METRICS: &str = "[metrics]\nlisten = \"127.0.0.1:0\"\n";

/// A device granted `cmd/#`, connected and subscribed to it.
async fn command_device(gw: &DevBinary) -> V4Client {
    let token = gw.token("thermostat", &["cmd/#"], Duration::from_secs(3600));
    let mut device = V4Client::start(gw.v4_options("thermostat", &token));
    assert_eq!(device.connack().await.code, ConnectReturnCode::Success);
    assert_eq!(
        device.subscribe("cmd/#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    device
}

/// After the refusals, the device still publishes and receives, and the
/// gateway logged them once, not per message.
async fn still_serving(gw: &DevBinary, device: &mut V4Client) {
    device
        .publish("cmd/local", QoS::AtLeastOnce, false, b"still here")
        .await;
    assert_eq!(
        &device.expect_publish("cmd/local").await.payload[..],
        b"still here"
    );
    let log = gw.served.log();
    assert_eq!(
        log.matches("bridge: messages from the remote were not routed")
            .count(),
        1,
        "{log}"
    );
    assert!(
        log.lines().all(|line| line.len() < 2048),
        "a refused topic was logged whole"
    );
    gw.assert_no_panic();
}

/// Issue 19: a central broker publishes retained messages too deep (200
/// levels, Mosquitto's own maximum) and too long (60,000 bytes) for the
/// gateway's `[limits]` on a bridged subscription: neither is routed, the
/// gateway and its devices carry on, and both are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_central_broker_cannot_push_topics_past_the_gateway_limits() {
    let mosquitto = Mosquitto::start().await;
    let secrets = tempfile::tempdir().expect("temp dir");
    let rules = "subscribe = [ { remote = \"site-42/cmd/#\", strip_prefix = \"site-42/\" } ]";
    let gw = bridged_to(&mosquitto, secrets.path(), rules, METRICS).await;
    let mut device = command_device(&gw).await;

    let mut hostile = V4Client::start(mosquitto.plain_v4_options("hostile"));
    assert_eq!(hostile.connack().await.code, ConnectReturnCode::Success);
    let deep = format!("site-42/cmd/{}l", "l/".repeat(197));
    assert_eq!(deep.split('/').count(), 200);
    let long = format!("site-42/cmd/{}", "x".repeat(60_000));
    for topic in [&deep, &long] {
        hostile
            .publish(topic, QoS::AtLeastOnce, true, b"boom")
            .await;
    }
    hostile
        .publish("site-42/cmd/ok", QoS::AtLeastOnce, true, b"fine")
        .await;

    // Only the message within the limits comes through (and after the
    // two refused, so they were handled by then).
    let got = device.expect_publish("cmd/ok").await;
    assert_eq!(&got.payload[..], b"fine");
    let others = device.take_other_publishes();
    assert!(
        others.is_empty(),
        "{} refused messages came through",
        others.len()
    );
    still_serving(&gw, &mut device).await;
    let refused = bridge_refusals(&gw).await;
    println!("refused by a Mosquitto remote: {refused:?}");
    assert_eq!(refused["topic_levels"], 1.0, "{refused:?}");
    assert_eq!(refused["topic_bytes"], 1.0, "{refused:?}");
    assert_eq!(refused.values().sum::<f64>(), 2.0, "{refused:?}");
}

/// Reads one whole MQTT packet from `stream`, keeping the rest in `buf`.
async fn read_frame(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(len) = common::mqtt::frame_len(buf) {
            if buf.len() >= len {
                return buf.drain(..len).collect();
            }
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(common::WAIT, stream.read(&mut chunk))
            .await
            .expect("the gateway's bridge answers in time")
            .expect("read from the bridge");
        assert!(n > 0, "the bridge closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Issue 19: a hostile central broker (no real broker sends a topic this
/// deep: Mosquitto stops at 200 levels) sends a retained message with
/// 30,000 levels and one with 200 on a bridged subscription. The bridge
/// refuses both without routing them, acknowledges them (so they are not
/// sent again for ever), counts them, and the gateway serves its devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_remote_sending_30000_levels_is_refused_acknowledged_and_counted() {
    use common::mqtt;
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the hostile broker");
    let port = listener.local_addr().expect("its address").port();
    // Plain MQTT 3.1.1 to a loopback remote: the hostile broker is this
    // test, speaking bytes.
    let table = format!(
        "[[bridge]]\nname = \"cloud\"\nremote = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"site-42\"\n\
         protocol = 4\nkeep_alive_secs = 30\n\
         subscribe = [ {{ remote = \"site-42/cmd/#\", strip_prefix = \"site-42/\" }} ]\n{METRICS}"
    );
    let gw = DevBinary::start("", &table).await;
    let (mut remote, _) = tokio::time::timeout(common::WAIT, listener.accept())
        .await
        .expect("the bridge connects in time")
        .expect("accept the bridge");
    let mut buf = Vec::new();
    let connect = read_frame(&mut remote, &mut buf).await;
    assert_eq!(connect[0], 0x10, "CONNECT first");
    remote
        .write_all(&mqtt::CONNACK_OK_V4)
        .await
        .expect("send CONNACK");
    let subscribe = read_frame(&mut remote, &mut buf).await;
    assert_eq!(subscribe[0], 0x82, "then SUBSCRIBE: {subscribe:?}");
    // Its packet id follows the remaining length (one byte here).
    let pkid = [subscribe[2], subscribe[3]];
    remote
        .write_all(&mqtt::frame(0x90, &[pkid[0], pkid[1], 0x01]))
        .await
        .expect("send SUBACK");
    let mut device = command_device(&gw).await;

    let deep = format!("site-42/cmd/{}a", "a/".repeat(29_997));
    assert_eq!(deep.split('/').count(), 30_000);
    let two_hundred = format!("site-42/cmd/{}a", "a/".repeat(197));
    assert_eq!(two_hundred.split('/').count(), 200);
    for (pkid, topic, payload) in [
        (10u16, deep.as_str(), &b"boom"[..]),
        (11, two_hundred.as_str(), b"boom"),
        (12, "site-42/cmd/ok", b"fine"),
    ] {
        let mut publish = mqtt::publish(4, topic, payload, 1, pkid);
        publish[0] |= 0x01; // retained
        remote.write_all(&publish).await.expect("send PUBLISH");
    }
    let mut acked = Vec::new();
    while acked.len() < 3 {
        let packet = read_frame(&mut remote, &mut buf).await;
        match packet[0] {
            0x40 => acked.push(u16::from_be_bytes([packet[2], packet[3]])),
            0xC0 => remote
                .write_all(&mqtt::PINGRESP)
                .await
                .expect("send PINGRESP"),
            other => panic!("unexpected packet {other:#x} from the bridge"),
        }
    }
    assert_eq!(acked, vec![10, 11, 12], "each acknowledged, in order");

    let got = device.expect_publish("cmd/ok").await;
    assert_eq!(&got.payload[..], b"fine");
    let others = device.take_other_publishes();
    assert!(
        others.is_empty(),
        "{} refused messages came through",
        others.len()
    );
    still_serving(&gw, &mut device).await;
    // Nothing of them was kept as retained either.
    let token = gw.token("late", &["cmd/#"], Duration::from_secs(3600));
    let mut late = V4Client::start(gw.v4_options("late", &token));
    assert_eq!(late.connack().await.code, ConnectReturnCode::Success);
    late.subscribe("cmd/#", QoS::AtLeastOnce).await;
    late.expect_publish("cmd/ok").await;
    let more = late.publishes_while_alive(QUIET).await;
    let topics: Vec<&str> = more.iter().map(|p| p.topic.as_str()).collect();
    assert!(topics.is_empty(), "only cmd/ok is retained: {topics:?}");
    let refused = bridge_refusals(&gw).await;
    println!("refused by a hostile remote: {refused:?}");
    assert_eq!(refused["topic_bytes"], 1.0, "30,000 levels: {refused:?}");
    assert_eq!(refused["topic_levels"], 1.0, "200 levels: {refused:?}");
    assert_eq!(refused.values().sum::<f64>(), 2.0, "{refused:?}");
}

/// Rows of the retained table for `topic`, read beside the running
/// gateway.
fn retained_rows(state_dir: &Path, topic: &str) -> u64 {
    let db = rusqlite::Connection::open_with_flags(
        state_dir.join("jwtgate.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the database read-only");
    db.query_row(
        "SELECT COUNT(*) FROM retained WHERE topic = ?1",
        [topic],
        |row| row.get(0),
    )
    .expect("count the retained rows")
}

/// Issue 26, item 1: a message from the remote is acknowledged only once
/// its commit is done. A retained command that comes in while the disk is
/// full (a file size limit) cannot be kept: it is not acknowledged, the
/// link starts over, and once space returns the remote's redelivery is
/// kept, with nobody publishing it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_command_that_cannot_be_kept_is_left_to_the_remote_until_it_can() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
    let rules = "subscribe = [ { remote = \"site-42/cmd/#\", strip_prefix = \"site-42/\" } ]";
    let Bridged {
        mosquitto,
        relay: _relay,
        gw,
        _secrets,
    } = bridged_within(true, rules, METRICS, Some(512 * 1024)).await;
    gw.served.wait_for_log(0, "bridge connected").await;
    let state = gw.dir().join("state");

    // A device's retained messages fill the file up to its limit.
    let token = gw.token("dev0", &["status/dev0/#"], Duration::from_secs(3600));
    let mut device = common::V5Client::start(common::v5_options_for(
        gw.served.port(),
        &gw.ca,
        "dev0",
        &token,
    ));
    device.connack().await;
    let payload = vec![b'x'; 1000];
    let mut full = false;
    for n in 0..2000 {
        match device
            .publish(
                &format!("status/dev0/{n}"),
                QoS5::AtLeastOnce,
                true,
                &payload,
            )
            .await
        {
            Some(Packet::PubAck(ack)) if ack.reason == PubAckReason::Success => {}
            Some(Packet::PubAck(_)) => {
                full = true;
                break;
            }
            other => panic!("expected a PUBACK, got {other:?}"),
        }
    }
    assert!(full, "the file size limit was never reached");

    let since = gw.served.log().len();
    let mut operator = mosquitto.connected("operator").await;
    operator
        .publish("site-42/cmd/setpoint", QoS::AtLeastOnce, true, b"21")
        .await;
    gw.served.wait_for_log(since, "could not be kept").await;
    assert_eq!(retained_rows(&state, "cmd/setpoint"), 0);

    // Space comes back: the remote sends the command again on the next
    // connection, and this time it is kept.
    let lifted_at = Instant::now();
    gw.served.lift_file_size_limit();
    let deadline = Instant::now() + Duration::from_secs(90);
    while retained_rows(&state, "cmd/setpoint") == 0 {
        assert!(
            Instant::now() < deadline,
            "the command was never kept:\n{}",
            gw.served.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = gw.served.log();
    println!(
        "kept {:.1} s after space returned (the reconnect backoff), {} connection(s) ended on it meanwhile",
        lifted_at.elapsed().as_secs_f64(),
        log[since..].matches("could not be kept").count()
    );
    gw.assert_no_panic();
}

/// The bridge's session at the remote keeps its subscriptions: a restart
/// with the same rules subscribes to nothing, and one with changed rules
/// subscribes to the new and unsubscribes from the removed, so nothing is
/// missed for want of a subscription, nor received for a rule gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_is_subscribed_again_only_when_the_rules_changed() {
    let mosquitto = Mosquitto::start().await;
    let secrets = tempfile::tempdir().expect("temp dir");
    let rules = "subscribe = [ { remote = \"site-42/cmd/#\", strip_prefix = \"site-42/\" } ]";
    let mut gw = bridged_to(&mosquitto, secrets.path(), rules, METRICS).await;

    gw.served.terminate().await;
    gw.restart().await;
    gw.served.wait_for_log(0, "bridge connected").await;
    let log = gw.served.log();
    assert!(log.contains("session_present=true"), "{log}");
    assert!(!log.contains("subscribing again"), "{log}");

    gw.served.terminate().await;
    let config = gw.dir().join("jwtgate.toml");
    let text = std::fs::read_to_string(&config).expect("read the config");
    std::fs::write(&config, text.replace("site-42/cmd/#", "site-42/cfg/#")).expect("change a rule");
    gw.restart().await;
    gw.served.wait_for_log(0, "bridge connected").await;
    gw.served.wait_for_log(0, "subscribing again").await;

    let token = gw.token("thermostat", &["cmd/#", "cfg/#"], Duration::from_secs(3600));
    let mut device = V4Client::start(gw.v4_options("thermostat", &token));
    assert_eq!(device.connack().await.code, ConnectReturnCode::Success);
    device
        .subscribe_many(&[("cmd/#", QoS::AtLeastOnce), ("cfg/#", QoS::AtLeastOnce)])
        .await;
    let mut operator = mosquitto.connected("operator").await;
    operator
        .publish("site-42/cmd/y", QoS::AtLeastOnce, false, b"old rule")
        .await;
    operator
        .publish("site-42/cfg/x", QoS::AtLeastOnce, false, b"new rule")
        .await;
    let got = device.expect_publish("cfg/x").await;
    assert_eq!(&got.payload[..], b"new rule");
    assert!(device.take_other_publishes().is_empty());
    let refused = bridge_refusals(&gw).await;
    assert_eq!(
        refused["unmapped"], 0.0,
        "the remote still sent the removed rule's messages"
    );
    gw.assert_no_panic();
}

/// Scrapes `gw` until `done` holds for a scrape (which it returns), or
/// panics after `limit` with the last one.
async fn scrape_until(
    gw: &DevBinary,
    limit: Duration,
    done: impl Fn(&std::collections::BTreeMap<String, f64>) -> bool,
) -> std::collections::BTreeMap<String, f64> {
    let port = metrics_port(gw).await;
    let deadline = Instant::now() + limit;
    loop {
        let scraped = scrape(port).await;
        if done(&scraped) {
            return scraped;
        }
        assert!(
            Instant::now() < deadline,
            "not within {limit:?}; the last scrape: {scraped:?}\n{}",
            gw.served.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 22: while the remote is away the bridge reads as not connected
/// and the oldest queued message's wait grows; once it is back the bridge
/// reads as connected, and the wait is 0 when the queue has drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_show_a_link_down_and_its_oldest_message_waiting_until_it_drains() {
    let Bridged {
        mosquitto,
        relay,
        gw,
        _secrets,
    } = bridged(false, FORWARD_SENSORS, METRICS).await;
    let mut central = mosquitto.subscriber("central", "site-42/#").await;
    let connected = "jwtgate_bridge_connected{bridge=\"cloud\"}";
    let oldest = "jwtgate_bridge_queue_oldest_seconds{bridge=\"cloud\"}";
    let queued = "jwtgate_bridge_queue_messages{bridge=\"cloud\"}";
    // Tried and failed: down, not merely not yet tried.
    gw.served.wait_for_log(0, "bridge: cannot connect").await;
    let port = metrics_port(&gw).await;
    let empty = scrape(port).await;
    assert_eq!(value(&empty, connected), 0.0);
    assert_eq!(value(&empty, oldest), 0.0);

    // Each PUBACKed, so committed to the queue.
    publish_from_devices(&gw, 1, 3).await;
    let first = scrape(port).await;
    assert_eq!(value(&first, queued), 3.0);
    assert_eq!(value(&first, connected), 0.0);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let later = scrape(port).await;
    assert_eq!(value(&later, connected), 0.0);
    let (waited, waited_later) = (value(&first, oldest), value(&later, oldest));
    assert!(
        waited_later >= waited + 1.0,
        "the oldest waited {waited} s, then {waited_later} s"
    );

    let up_at = Instant::now();
    relay.set_up(true);
    assert_eq!(collect(&mut central, 3, DRAIN_LIMIT).await.len(), 3);
    let drained = scrape_until(&gw, WAIT_DRAINED, |s| {
        value(s, connected) == 1.0 && value(s, queued) == 0.0
    })
    .await;
    assert_eq!(value(&drained, oldest), 0.0);
    println!(
        "oldest waited {waited_later:.2} s with the remote away; connected and drained {:.2} s after it came back (the reconnect backoff included)",
        up_at.elapsed().as_secs_f64()
    );
    gw.assert_no_panic();
}

/// How long a drained queue of a few messages may take to read as empty
/// in the metrics after they arrived: the bridge deletes acknowledged
/// rows within milliseconds; this only keeps a broken test from hanging.
const WAIT_DRAINED: Duration = Duration::from_secs(10);
