use tracing_subscriber::layer::SubscriberExt;

use super::*;

/// The entry's fields, read back in the native protocol's framing.
fn parse(mut datagram: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    while let Some(end) = datagram.iter().position(|&b| b == b'\n') {
        let name = String::from_utf8(datagram[..end].to_vec()).unwrap();
        datagram = &datagram[end + 1..];
        if let Some((name, value)) = name.split_once('=') {
            fields.push((name.to_owned(), value.to_owned()));
        } else {
            let len = u64::from_le_bytes(datagram[..8].try_into().unwrap()) as usize;
            fields.push((
                name,
                String::from_utf8(datagram[8..8 + len].to_vec()).unwrap(),
            ));
            assert_eq!(datagram[8 + len], b'\n');
            datagram = &datagram[8 + len + 1..];
        }
    }
    fields
}

fn get<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn an_event_is_one_entry_whose_message_names_who_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("socket");
    let journald = UnixDatagram::bind(&path).unwrap();
    let layer = Journal::connect(&path, "jwtgate").unwrap();
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        let remote: std::net::SocketAddr = "127.0.0.1:4000".parse().unwrap();
        tracing::warn!(
            remote = %remote,
            client_id = "thermostat-3",
            code = ?Some(5),
            reason = "two\nlines",
            "connection refused"
        );
    });
    let mut buf = vec![0; 64 * 1024];
    let n = journald.recv(&mut buf).unwrap();
    let entry = parse(&buf[..n]);
    assert_eq!(get(&entry, "PRIORITY"), Some("4"));
    assert_eq!(get(&entry, "SYSLOG_IDENTIFIER"), Some("jwtgate"));
    assert_eq!(
        get(&entry, "MESSAGE"),
        Some(
            "connection refused remote=127.0.0.1:4000 client_id=\"thermostat-3\" code=Some(5) reason=\"two\\nlines\""
        )
    );
    assert_eq!(get(&entry, "CLIENT_ID"), Some("thermostat-3"));
    assert_eq!(get(&entry, "REMOTE"), Some("127.0.0.1:4000"));
    assert_eq!(get(&entry, "CODE"), Some("Some(5)"));
    // A value with a newline goes length-encoded, whole.
    assert_eq!(get(&entry, "REASON"), Some("two\nlines"));
    assert!(get(&entry, "CODE_LINE").is_some());
}

#[test]
fn nothing_listening_is_an_error_at_connect() {
    let dir = tempfile::tempdir().unwrap();
    assert!(Journal::connect(&dir.path().join("socket"), "jwtgate").is_err());
}

#[test]
fn field_names_are_the_journals() {
    assert_eq!(journal_name("client_id"), "CLIENT_ID");
    assert_eq!(journal_name("log.target"), "LOG_TARGET");
    assert_eq!(journal_name("_private"), "F_PRIVATE");
    assert_eq!(journal_name("9lives"), "F9LIVES");
}
