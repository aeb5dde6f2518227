use super::*;

const SECOND: Duration = Duration::from_secs(1);

fn close(actual: f64, expected: f64) -> bool {
    (actual - expected).abs() < 1e-9
}

/// A quiet gateway `uptime` after start: one client, one bridge.
fn reading(uptime: Duration) -> Reading {
    Reading {
        uptime,
        counters: Figures {
            connections_by_version: [0, 1, 0],
            connections_by_transport: [1, 0],
            ..Figures::default()
        },
        sessions: 3,
        subscriptions: 4,
        retained: 5,
        heap: 6000,
        keys: 2,
        queues: vec![("central".to_owned(), 7)],
    }
}

fn find<'a>(figures: &'a [(String, String)], name: &str) -> Option<&'a str> {
    figures
        .iter()
        .find(|(topic, _)| topic == &format!("$SYS/broker/{name}"))
        .map(|(_, text)| text.as_str())
}

/// Mosquitto's `calc_load`, worked by hand: 60 events in a minute (a rate
/// of 60 per minute) from rest moves the 1-minute load by 1 - e^-1, the
/// 5-minute by 1 - e^-0.2 and the 15-minute by 1 - e^-(1/15); a quiet
/// minute then decays each by e^-(60 / window).
#[test]
fn loads_decay_as_mosquittos() {
    let minute = Duration::from_secs(60);
    let mut loads = WINDOWS.map(|_| Load::default());
    for (load, (_, window)) in loads.iter_mut().zip(WINDOWS) {
        load.update(60, minute, window);
    }
    let after_one = [
        60.0 * (1.0 - (-1.0f64).exp()),
        60.0 * (1.0 - (-0.2f64).exp()),
        60.0 * (1.0 - (-1.0f64 / 15.0).exp()),
    ];
    for (load, expected) in loads.iter().zip(after_one) {
        assert!(close(load.0, expected), "{} != {expected}", load.0);
    }
    assert_eq!(format!("{:.2}", loads[0].0), "37.93");
    assert_eq!(format!("{:.2}", loads[1].0), "10.88");
    assert_eq!(format!("{:.2}", loads[2].0), "3.87");
    for (load, (_, window)) in loads.iter_mut().zip(WINDOWS) {
        load.update(0, minute, window);
    }
    for ((load, before), (_, window)) in loads.iter().zip(after_one).zip(WINDOWS) {
        assert!(close(load.0, before * (-60.0 / window).exp()));
    }
}

/// For a steady rate, ten 6-second intervals leave the same load as one
/// minute, so the interval an operator picks changes how often the loads
/// move, not what they say; and a steady rate is where they settle.
#[test]
fn a_steady_rate_gives_the_same_load_whatever_the_interval() {
    let (mut fine, mut coarse) = (Load::default(), Load::default());
    for _ in 0..10 {
        fine.update(12, Duration::from_secs(6), 60.0);
    }
    coarse.update(120, Duration::from_secs(60), 60.0);
    assert!(close(fine.0, coarse.0), "{} != {}", fine.0, coarse.0);
    for _ in 0..60 {
        coarse.update(120, Duration::from_secs(60), 300.0);
    }
    assert!((coarse.0 - 120.0).abs() < 0.01, "{}", coarse.0);
    let before = coarse;
    coarse.update(5, Duration::ZERO, 60.0);
    assert_eq!(coarse, before, "no time, no rate");
}

/// The first tick publishes every figure, in Mosquitto's formats, with
/// the loads at 0; jwtgate's own are under `jwtgate/`.
#[test]
fn the_first_tick_publishes_every_figure() {
    let mut tree = Tree::default();
    let figures = tree.tick(&reading(Duration::from_millis(1500)));
    let expected = [
        ("version", concat!("jwtgate ", env!("CARGO_PKG_VERSION"))),
        ("uptime", "1 seconds"),
        ("clients/connected", "1"),
        ("clients/disconnected", "2"),
        ("clients/total", "3"),
        ("clients/maximum", "3"),
        ("messages/received", "0"),
        ("messages/sent", "0"),
        ("bytes/received", "0"),
        ("bytes/sent", "0"),
        ("retained messages/count", "5"),
        ("subscriptions/count", "4"),
        ("heap/current", "6000"),
        ("jwtgate/keys/loaded", "2"),
        ("jwtgate/bridge/central/queued", "7"),
        ("load/messages/received/1min", "0.00"),
        ("load/messages/sent/5min", "0.00"),
        ("load/bytes/received/15min", "0.00"),
        ("load/bytes/sent/1min", "0.00"),
    ];
    for (name, text) in expected {
        assert_eq!(find(&figures, name), Some(text), "{name}");
    }
    // 4 counters with 3 loads each, 15 figures besides.
    assert_eq!(figures.len(), 12 + 15, "{figures:?}");
    assert!(
        figures
            .iter()
            .all(|(topic, _)| topic.starts_with("$SYS/broker/"))
    );
}

/// A figure goes out again only when its text changed: the version never
/// does, the uptime every second, a load once its two decimals move.
#[test]
fn only_what_changed_is_published_again() {
    let mut tree = Tree::default();
    let _ = tree.tick(&reading(Duration::ZERO));
    let quiet = tree.tick(&reading(SECOND));
    assert_eq!(
        quiet,
        [("$SYS/broker/uptime".to_owned(), "1 seconds".to_owned())]
    );
    let mut busy = reading(2 * SECOND);
    busy.counters.received = 3;
    busy.counters.bytes_received = 300;
    busy.sessions = 1;
    let figures = tree.tick(&busy);
    assert_eq!(find(&figures, "messages/received"), Some("3"));
    assert_eq!(find(&figures, "bytes/received"), Some("300"));
    // 3 in one second is 180 a minute; one second of it moves the
    // 1-minute load by 1 - e^(-1/60).
    let one_minute = 180.0 * (1.0 - (-1.0f64 / 60.0).exp());
    assert_eq!(
        find(&figures, "load/messages/received/1min"),
        Some(format!("{one_minute:.2}").as_str())
    );
    assert_eq!(
        find(&figures, "load/messages/sent/1min"),
        None,
        "still 0.00"
    );
    assert_eq!(find(&figures, "clients/total"), Some("1"));
    assert_eq!(find(&figures, "clients/disconnected"), Some("0"));
    assert_eq!(
        find(&figures, "clients/maximum"),
        None,
        "3 is still the most"
    );
    assert_eq!(find(&figures, "version"), None);
}

/// After a tick whose retained copies may not all have been kept, the
/// next one sends every figure again, the version included.
#[test]
fn forgetting_publishes_everything_again() {
    let mut tree = Tree::default();
    let first = tree.tick(&reading(Duration::ZERO));
    tree.forget();
    let again = tree.tick(&reading(Duration::ZERO));
    assert_eq!(again, first);
}

/// A connection counted before its session is known still counts as a
/// client: total never falls below connected, and disconnected below 0.
#[test]
fn connected_clients_count_before_their_sessions() {
    let mut early = reading(Duration::ZERO);
    early.sessions = 0;
    let figures = Tree::default().tick(&early);
    assert_eq!(find(&figures, "clients/connected"), Some("1"));
    assert_eq!(find(&figures, "clients/total"), Some("1"));
    assert_eq!(find(&figures, "clients/disconnected"), Some("0"));
}
