//! `[log]`, `[metrics]` and `[storage]`.

use super::*;

#[test]
fn log_format_is_text_or_json() {
    assert_eq!(
        parse("[log]\nformat = \"json\"\n")
            .expect("json")
            .log
            .format,
        LogFormat::Json
    );
    let err = parse("[log]\nformat = \"yaml\"\n").expect_err("yaml is refused");
    let text = err.to_string();
    assert!(text.contains(":2:10: [log] format"), "{text}");
    assert!(parse("[log]\nlevel = \"debug\"\n").is_err());
}

#[test]
fn metrics_are_off_unless_listen_is_set_and_remote_only_when_allowed() {
    assert_eq!(parse("").unwrap().metrics.listen, None);
    let local = parse("[metrics]\nlisten = \"[::1]:9883\"\n").unwrap();
    assert_eq!(local.metrics.listen, Some("[::1]:9883".parse().unwrap()));
    let remote = parse("[metrics]\nlisten = \"0.0.0.0:9883\"\nallow_remote = true\n").unwrap();
    assert_eq!(remote.metrics.listen, Some("0.0.0.0:9883".parse().unwrap()));
}

#[test]
fn storage_takes_a_directory_and_a_bounded_sync_interval() {
    let config = parse("[storage]\ndir = \"/var/lib/jwtgate\"\nsync_interval_ms = 0\n")
        .expect("valid storage table");
    assert_eq!(
        config.storage,
        StorageConfig {
            dir: PathBuf::from("/var/lib/jwtgate"),
            sync_interval: Duration::ZERO,
        }
    );
    assert_invalid_cases(&[
        (
            "[storage]\nsync_interval_ms = 60001\n",
            2,
            20,
            "[storage] sync_interval_ms",
            "at most 60000 milliseconds",
        ),
        (
            "[storage]\nsync_interval_ms = -1\n",
            2,
            20,
            "[storage] sync_interval_ms",
            "must not be negative",
        ),
        (
            "[storage]\ndir = \"\"\n",
            2,
            7,
            "[storage] dir",
            "must not be empty",
        ),
    ]);
}
