use super::*;

fn policy(origins: &[&str]) -> Policy {
    Policy::new(
        &WebSocketConfig {
            listen: None,
            path: "/mqtt".into(),
            allowed_origins: origins.iter().map(|o| o.to_string()).collect(),
        },
        1 << 20,
    )
}

fn upgrade_request(path: &str, extra: &[(&str, &str)]) -> Request<()> {
    let mut builder = Request::get(path)
        .header("Host", "gw")
        .header("Connection", "keep-alive, Upgrade")
        .header("Upgrade", "websocket")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap()
}

#[test]
fn an_mqtt_upgrade_is_accepted_with_the_clients_subprotocol() {
    let accepted = policy(&[])
        .check(&upgrade_request(
            "/mqtt",
            &[("Sec-WebSocket-Protocol", "chat, mqttv3.1, mqtt")],
        ))
        .unwrap();
    // RFC 6455's own example key and answer.
    assert_eq!(accepted.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_eq!(
        accepted.protocol, "mqttv3.1",
        "the client's first MQTT offer"
    );
    for offer in ["mqtt", "MQTT", "mqttv3.1.1", "mqttv5"] {
        let accepted = policy(&[])
            .check(&upgrade_request(
                "/mqtt",
                &[("Sec-WebSocket-Protocol", offer)],
            ))
            .unwrap();
        assert_eq!(accepted.protocol, offer);
    }
}

#[test]
fn each_bad_request_gets_its_refusal() {
    let mqtt = ("Sec-WebSocket-Protocol", "mqtt");
    let cases: Vec<(Request<()>, Refused)> = vec![
        (upgrade_request("/other", &[mqtt]), Refused::WrongPath),
        (upgrade_request("/mqtt/", &[mqtt]), Refused::WrongPath),
        (
            Request::post("/mqtt")
                .header("Upgrade", "websocket")
                .body(())
                .unwrap(),
            Refused::Method,
        ),
        (Request::get("/mqtt").body(()).unwrap(), Refused::NotUpgrade),
        (
            Request::get("/mqtt")
                .header("Connection", "Upgrade")
                .header("Upgrade", "h2c")
                .header("Sec-WebSocket-Key", "x")
                .body(())
                .unwrap(),
            Refused::NotUpgrade,
        ),
        (
            {
                let mut request = upgrade_request("/mqtt", &[mqtt]);
                request.headers_mut().remove("Sec-WebSocket-Version");
                request
                    .headers_mut()
                    .insert("Sec-WebSocket-Version", "8".parse().unwrap());
                request
            },
            Refused::Version,
        ),
        (upgrade_request("/mqtt", &[]), Refused::Subprotocol),
        (
            upgrade_request("/mqtt", &[("Sec-WebSocket-Protocol", "chat, wamp")]),
            Refused::Subprotocol,
        ),
    ];
    for (request, refused) in cases {
        let what = format!(
            "{} {} {:?}",
            request.method(),
            request.uri(),
            request.headers()
        );
        assert_eq!(policy(&[]).check(&request), Err(refused), "{what}");
        let response = refused.response("/mqtt");
        assert!(
            response.status().is_client_error(),
            "{refused:?}: {}",
            response.status()
        );
    }
}

#[test]
fn origins_are_checked_when_listed() {
    let listed = policy(&["https://hmi.example"]);
    let with_origin = |origin: &str| {
        upgrade_request(
            "/mqtt",
            &[("Sec-WebSocket-Protocol", "mqtt"), ("Origin", origin)],
        )
    };
    assert!(listed.check(&with_origin("https://hmi.example")).is_ok());
    assert!(listed.check(&with_origin("HTTPS://HMI.example")).is_ok());
    assert_eq!(
        listed.check(&with_origin("https://evil.example")),
        Err(Refused::Origin)
    );
    assert_eq!(
        listed.check(&with_origin("https://hmi.example:8443")),
        Err(Refused::Origin)
    );
    assert_eq!(
        Refused::Origin.response("/mqtt").status(),
        StatusCode::FORBIDDEN
    );
    // No Origin: not a browser, which Origin cannot restrain anyway.
    assert!(
        listed
            .check(&upgrade_request(
                "/mqtt",
                &[("Sec-WebSocket-Protocol", "mqtt")]
            ))
            .is_ok()
    );
    // Nothing listed: any.
    assert!(
        policy(&[])
            .check(&with_origin("https://evil.example"))
            .is_ok()
    );
}

/// The token is never taken from the request: a query string is no part
/// of the path matched, and neither it nor an Authorization header
/// changes the answer.
#[test]
fn a_query_string_or_authorization_header_is_not_read() {
    let accepted = policy(&[])
        .check(&upgrade_request(
            "/mqtt?token=eyJhbGciOi",
            &[
                ("Sec-WebSocket-Protocol", "mqtt"),
                ("Authorization", "Bearer eyJhbGciOi"),
            ],
        ))
        .unwrap();
    assert_eq!(accepted.protocol, "mqtt");
}

#[test]
fn every_refusal_has_its_own_label() {
    let mut labels: Vec<_> = Refused::ALL.iter().map(|r| r.label()).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), Refused::ALL.len());
}
