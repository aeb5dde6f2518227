//! The waits double up to a minute, jittered, and start over after a reset.

use super::*;

#[test]
fn waits_double_up_to_a_minute_with_jitter_and_reset() {
    let mut backoff = Backoff::new();
    let waits: Vec<Duration> = (0..10).map(|_| backoff.next_wait()).collect();
    let ceilings = [1, 2, 4, 8, 16, 32, 60, 60, 60, 60];
    for (wait, ceiling) in waits.iter().zip(ceilings) {
        let ceiling = Duration::from_secs(ceiling);
        assert!(
            *wait >= ceiling / 2 && *wait <= ceiling,
            "{wait:?} vs {ceiling:?}"
        );
    }
    let spread: std::collections::HashSet<_> = (0..20)
        .map(|_| {
            let mut b = Backoff::new();
            for _ in 0..6 {
                b.next_wait();
            }
            b.next_wait()
        })
        .collect();
    assert!(spread.len() > 1, "no jitter: {spread:?}");
    backoff.reset();
    assert!(backoff.next_wait() <= FIRST);
}
