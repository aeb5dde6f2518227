use super::*;
use crate::admin::protocol::SessionRow;

#[test]
fn a_table_aligns_its_columns_and_ends_no_line_in_blanks() {
    let text = table(
        &["A", "LONGER", "C"],
        vec![
            vec!["wide cell".into(), "x".into(), "last".into()],
            vec!["y".into(), "z".into(), "-".into()],
        ],
    );
    assert_eq!(
        text,
        "A          LONGER  C\nwide cell  x       last\ny          z       -\n"
    );
}

#[test]
fn sizes_read_in_binary_units() {
    assert_eq!(bytes(0), "0 B");
    assert_eq!(bytes(1023), "1023 B");
    assert_eq!(bytes(1536), "1.5 KiB");
    assert_eq!(bytes(512 * 1024 * 1024), "512.0 MiB");
}

#[test]
fn a_parked_session_says_until_when_and_has_no_connection() {
    let row = SessionRow {
        subject: "thermostat-3".into(),
        client_id: "t3".into(),
        state: "parked".into(),
        remote: None,
        protocol: None,
        transport: None,
        connected_since: None,
        token_expires: None,
        session_expires: Some("2026-12-08T10:00:00Z".into()),
        subscriptions: 2,
        queued: 5,
    };
    let text = sessions(&[row]);
    let line = text.lines().nth(1).unwrap();
    assert!(line.contains("parked until 2026-12-08T10:00:00Z"), "{line}");
    assert!(line.ends_with("2     5"), "{line}");
    assert_eq!(sessions(&[]), "no sessions\n");
}

#[test]
fn a_disconnect_says_what_it_did() {
    assert_eq!(
        disconnected(&Disconnected::default()),
        "no live connection or session matched\n"
    );
    assert_eq!(
        disconnected(&Disconnected {
            connections: 1,
            sessions_discarded: 2
        }),
        "disconnected 1 connection; discarded 2 sessions\n"
    );
}
