//! Reading the gateway's Prometheus endpoint from a test: its port (what a
//! binary serving `[metrics] listen = "127.0.0.1:0"` reported in its ready
//! file) and one scrape as `series -> value`.

use std::collections::BTreeMap;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{DevBinary, WAIT};

/// The metrics port of `gw`, as its ready file reported it (the listener is
/// bound by then). Panics if its config has no `[metrics] listen`.
pub async fn metrics_port(gw: &DevBinary) -> u16 {
    gw.metrics_addr()
        .unwrap_or_else(|| {
            panic!(
                "no metrics= line in the ready file: is [metrics] listen set?\n{}",
                gw.served.log()
            )
        })
        .port()
}

/// One scrape: every sample, `name{labels}` to value.
pub async fn scrape(port: u16) -> BTreeMap<String, f64> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the metrics port");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("send the request");
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .expect("the response within WAIT")
        .expect("read the response");
    let (_, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The value of `series` in `scraped`. Every family is exported with
/// every label value from the start, so a series missing from a scrape is
/// a misspelt name or a lost metric, and fails the test.
pub fn value(scraped: &BTreeMap<String, f64>, series: &str) -> f64 {
    match scraped.get(series) {
        Some(value) => *value,
        None => panic!("{series} is not exported; the scrape: {scraped:?}"),
    }
}
