//! How much one connection may write to the log about what it is refused.
//!
//! A refusal costs a client nothing: one SUBSCRIBE of 0.68 MB named
//! 170,000 filters it was not granted, and a loop of refused PUBLISHes runs
//! as fast as the link does. One log line each made the log the gateway's
//! weakest point (36 MB for that SUBSCRIBE, 75 MB/s for the loop), and
//! drowned every other device's lines. The metrics
//! (`jwtgate_subscriptions_refused_total`, `jwtgate_publishes_refused_total`,
//! `jwtgate_reauthentications_total`) count every refusal exactly; the log
//! is there to say who and why, which the first few lines already do.
//!
//! So each connection has a [`Quiet`]: of each [`Kind`] of line, the first
//! [`LOGGED_IN_FULL`] are written; after that the lines are counted, and a
//! refusal of that kind coming [`SUMMARY_INTERVAL`] or more after the last
//! summary (or after the first line left out) writes one line with how many
//! were left out meanwhile; so does the client's next packet of any kind
//! once that interval has passed ([`Quiet::catch_up`]), so a flood that
//! stops is summed up by the next keep-alive ping, not days later. What is
//! still counted when the connection ends is written then
//! ([`Quiet::finish`]). [`Quiet::log`] is the one way the
//! connection layer writes such lines.

use std::time::{Duration, Instant};

use tracing::info;

/// Lines of one kind written in full per connection.
const LOGGED_IN_FULL: u32 = 5;
/// The shortest time between two summaries of one kind on one connection.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// What a line is about: each kind has its own allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// A SUBSCRIBE filter refused (not granted, invalid, over a quota).
    SubscriptionRefused,
    /// A PUBLISH refused (not granted, too many property bytes).
    PublishRefused,
    /// A subscription removed because a new token no longer grants it.
    SubscriptionDropped,
    /// An MQTT 5 re-authentication accepted, and what it changed (the
    /// will dropped).
    Reauthentication,
    /// A grant of a re-authentication's token left out (unbound
    /// placeholder, invalid filter).
    GrantIgnored,
}

impl Kind {
    /// In declaration order: a kind's tally is at its discriminant.
    const ALL: [Kind; 5] = [
        Kind::SubscriptionRefused,
        Kind::PublishRefused,
        Kind::SubscriptionDropped,
        Kind::Reauthentication,
        Kind::GrantIgnored,
    ];

    /// The `kind` field of a summary line.
    fn as_str(self) -> &'static str {
        match self {
            Kind::SubscriptionRefused => "subscription refused",
            Kind::PublishRefused => "publish refused",
            Kind::SubscriptionDropped => "subscription dropped",
            Kind::Reauthentication => "re-authentication",
            Kind::GrantIgnored => "grant ignored",
        }
    }
}

/// What to do about one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Write it.
    Log,
    /// Leave it out; it is counted.
    Quiet,
    /// Leave it out, and write instead that this many lines of its kind
    /// (this one included) were left out since the last summary.
    Summary(u64),
}

/// One kind's tally on one connection.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    logged: u32,
    /// Left out since the last summary.
    suppressed: u64,
    /// When the last summary was written, or the first line left out.
    since: Option<Instant>,
}

/// One connection's limiter, keyed by [`Kind`].
#[derive(Debug, Default)]
pub(super) struct Quiet {
    tallies: [Tally; Kind::ALL.len()],
}

impl Quiet {
    /// Decides about one line of `kind`, at `now`.
    fn admit(&mut self, kind: Kind, now: Instant) -> Verdict {
        let tally = &mut self.tallies[kind as usize];
        if tally.logged < LOGGED_IN_FULL {
            tally.logged += 1;
            return Verdict::Log;
        }
        tally.suppressed += 1;
        let since = *tally.since.get_or_insert(now);
        if now.saturating_duration_since(since) < SUMMARY_INTERVAL {
            return Verdict::Quiet;
        }
        tally.since = Some(now);
        Verdict::Summary(std::mem::take(&mut tally.suppressed))
    }

    /// Writes a line of `kind` about `client_id` if [`Quiet::admit`] lets
    /// it: `line` (given the client id) writes it; a summary, when one is
    /// due, is written instead.
    pub fn log(&mut self, kind: Kind, client_id: &str, line: impl FnOnce(&str)) {
        match self.admit(kind, Instant::now()) {
            Verdict::Log => line(client_id),
            Verdict::Quiet => {}
            Verdict::Summary(suppressed) => log_suppressed(client_id, kind, suppressed),
        }
    }

    /// Writes the summaries due at `now`, whatever the kind of what comes
    /// next.
    pub fn catch_up(&mut self, client_id: &str, now: Instant) {
        for (kind, suppressed) in self.due(now) {
            log_suppressed(client_id, kind, suppressed);
        }
    }

    /// The kinds whose lines were left out [`SUMMARY_INTERVAL`] or more
    /// before `now` and not summed up since, with how many.
    fn due(&mut self, now: Instant) -> impl Iterator<Item = (Kind, u64)> + '_ {
        Kind::ALL
            .into_iter()
            .zip(self.tallies.iter_mut())
            .filter_map(move |(kind, tally)| {
                let since = tally.since?;
                if tally.suppressed == 0 || now.saturating_duration_since(since) < SUMMARY_INTERVAL
                {
                    return None;
                }
                tally.since = Some(now);
                Some((kind, std::mem::take(&mut tally.suppressed)))
            })
    }

    /// Writes what is still left out and not summed up: the connection's
    /// last words about it.
    pub fn finish(&mut self, client_id: &str) {
        for (kind, suppressed) in self.pending() {
            log_suppressed(client_id, kind, suppressed);
        }
    }

    /// The lines still left out and not yet summed up, kind by kind.
    fn pending(&mut self) -> impl Iterator<Item = (Kind, u64)> + '_ {
        Kind::ALL
            .into_iter()
            .zip(self.tallies.iter_mut())
            .filter_map(|(kind, tally)| {
                let suppressed = std::mem::take(&mut tally.suppressed);
                (suppressed > 0).then_some((kind, suppressed))
            })
    }
}

/// The line that stands for `suppressed` lines of `kind` left out.
fn log_suppressed(client_id: &str, kind: Kind, suppressed: u64) {
    info!(
        client_id,
        kind = kind.as_str(),
        suppressed,
        "lines left out of the log (the metrics count them all)"
    );
}

#[cfg(test)]
mod tests;
