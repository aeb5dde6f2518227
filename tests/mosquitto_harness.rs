//! Checks of the Mosquitto harness ([`common::mosquitto::Mosquitto`]) the
//! uplink bridge tests use as their central broker: a real `mosquitto`
//! with TLS and a password file accepts the harness's credentials and
//! delivers, refuses a wrong password, and comes back on the same ports
//! after a stop, waiting for a port another process took meanwhile.

mod common;

use std::time::Duration;

use common::V4Client;
use common::mosquitto::Mosquitto;
use rumqttc::{ConnectReturnCode, QoS};

#[tokio::test]
async fn delivers_qos1_over_tls_with_the_password() {
    let broker = Mosquitto::start().await;
    let mut subscriber = broker.subscriber("harness-sub", "central/#").await;
    let mut publisher = broker.connected("harness-pub").await;

    publisher
        .publish("central/site-42/temp", QoS::AtLeastOnce, false, b"21.5")
        .await;

    let got = subscriber.expect_publish("central/site-42/temp").await;
    assert_eq!(&got.payload[..], b"21.5");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    publisher.disconnect().await;
    subscriber.disconnect().await;
}

#[tokio::test]
async fn refuses_a_wrong_password() {
    let broker = Mosquitto::start().await;
    let mut opts = broker.v4_options("harness-wrong");
    opts.set_credentials(broker.username(), "not-the-password");
    let mut client = V4Client::start(opts);
    let code = client.connack().await.code;
    assert!(
        matches!(
            code,
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized
        ),
        "expected a refusal, got {code:?}:\n{}",
        broker.log_tail()
    );
}

#[tokio::test]
async fn comes_back_on_the_same_ports_after_a_stop() {
    let mut broker = Mosquitto::start().await;
    let (tls_port, plain_port) = (broker.tls_port(), broker.plain_port());
    let mut client = broker.connected("harness-restart").await;

    broker.stop().await;
    assert!(!broker.is_running());
    client.closed().await;

    broker.start_again().await;
    assert_eq!(
        (broker.tls_port(), broker.plain_port()),
        (tls_port, plain_port)
    );
    broker.connected("harness-restart").await.disconnect().await;
    assert!(broker.log().contains("harness-restart"));
}

/// Mosquitto cannot listen on port 0 and report its port, so a restart
/// uses the ports it had, which another process may hold by then: the
/// start fails to bind, and `start_again` tries again until the port is
/// free (bounded), rather than taking whatever answers on the port for the
/// broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_again_waits_for_a_port_taken_meanwhile() {
    let mut broker = Mosquitto::start().await;
    let (tls_port, plain_port) = (broker.tls_port(), broker.plain_port());
    broker.stop().await;
    let squatter = std::net::TcpListener::bind(("127.0.0.1", tls_port))
        .expect("take the broker's TLS port while it is down");
    let since = broker.log_len();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(squatter);
    });

    broker.start_again().await;
    release.await.expect("the squatter task");
    let log = broker.log();
    assert!(
        log.get(since..)
            .unwrap_or_default()
            .contains("Address already in use"),
        "the first start again met the taken port:\n{log}"
    );
    assert_eq!(
        (broker.tls_port(), broker.plain_port()),
        (tls_port, plain_port)
    );
    // The broker itself answers on its TLS port now (the squatter spoke no
    // MQTT).
    broker
        .connected("harness-squatted")
        .await
        .disconnect()
        .await;
}

#[tokio::test]
async fn plain_listener_added_users_and_password_file() {
    let mut broker = Mosquitto::start().await;
    broker.add_user("site-43", "another-password").await;

    let mut opts = broker.plain_v4_options("harness-plain");
    opts.set_credentials("site-43", "another-password");
    let mut client = V4Client::start(opts);
    assert_eq!(client.connack().await.code, ConnectReturnCode::Success);
    client.disconnect().await;

    let file = broker.dir().join("bridge-password");
    broker.write_password_file(&file);
    let written = std::fs::read_to_string(&file).expect("read the password file back");
    assert_eq!(written, broker.password());
    assert_eq!(
        broker.ca_pem(),
        std::fs::read(broker.ca_pem_path()).expect("read the CA file")
    );
}
