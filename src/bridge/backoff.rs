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
mod tests;
