//! How long a bridge waits before it tries the remote again.
//!
//! Exponential from [`FIRST`] to [`LAST`], each wait drawn at random from
//! its upper half ("equal jitter"), so that a site's boxes, cut off by the
//! same outage, do not all knock on the central broker in the same second
//! when it returns.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

const FIRST: Duration = Duration::from_secs(1);
const LAST: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(super) struct Backoff {
    ceiling: Duration,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff { ceiling: FIRST }
    }

    /// Back to the shortest wait, after a connection that worked.
    pub fn reset(&mut self) {
        self.ceiling = FIRST;
    }

    /// The next wait: between half the ceiling and the ceiling, which then
    /// doubles up to [`LAST`].
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (ceiling * 2).min(LAST);
        let half = ceiling / 2;
        // A fresh `RandomState` is randomly keyed: hashing nothing with it
        // is a random number, without a crate for ten lines.
        let random = RandomState::new().hash_one(());
        let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_millis(random % spread)
    }
}

#[cfg(test)]
mod tests {
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
}
