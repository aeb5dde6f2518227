//! Checks that hold a test to what it claims (issue 25): a token's `exp`
//! against the wall clock with the margins stated, and waits on what the
//! gateway's metrics endpoint says rather than on its log.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::scrape::{metrics_port, scrape, value};
use super::{DevBinary, WAIT};

/// How far a close may come before `exp` as the test's wall clock reads it:
/// the gateway turns `exp` into a monotonic deadline from the wall clock it
/// reads at CONNECT, and the two clocks round differently.
pub const CLOCK_ROUNDING: Duration = Duration::from_millis(50);

/// `exp` (seconds since the epoch) as a wall-clock time.
pub fn exp_at(exp: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(exp)
}

/// How far `exp` is ahead of the wall clock; zero once it has passed.
pub fn ahead_of_now(exp: u64) -> Duration {
    exp_at(exp)
        .duration_since(SystemTime::now())
        .unwrap_or_default()
}

/// Waits until the wall clock has passed `exp` by `margin`; returns how far
/// past it is.
pub async fn until_past(exp: u64, margin: Duration) -> Duration {
    loop {
        let past = SystemTime::now()
            .duration_since(exp_at(exp))
            .unwrap_or_default();
        if past >= margin {
            return past;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that `what` happened at `at`, no earlier than `exp` (but for
/// [`CLOCK_ROUNDING`]) and less than `within` after it.
pub fn assert_at_exp(what: &str, at: SystemTime, exp: u64, within: Duration) {
    let exp = exp_at(exp);
    assert!(
        at + CLOCK_ROUNDING >= exp,
        "{what} {:?} before exp",
        exp.duration_since(at).unwrap_or_default()
    );
    let late = at.duration_since(exp).unwrap_or_default();
    assert!(
        late < within,
        "{what} {late:?} after exp (bound {within:?})"
    );
}

/// Waits until the series `series` of `gw`'s metrics endpoint (its config
/// has `[metrics] listen = "127.0.0.1:0"`) satisfies `wanted`; returns the
/// value. Panics after [`WAIT`].
pub async fn until_metric(gw: &DevBinary, series: &str, wanted: impl Fn(f64) -> bool) -> f64 {
    let port = metrics_port(gw).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let now = value(&scrape(port).await, series);
        if wanted(now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{series} still {now} after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
