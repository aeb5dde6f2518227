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
mod tests {
    use super::*;

    fn run(quiet: &mut Quiet, kind: Kind, n: usize, at: Instant) -> Vec<Verdict> {
        (0..n).map(|_| quiet.admit(kind, at)).collect()
    }

    #[test]
    fn the_first_lines_of_each_kind_are_written_then_counted() {
        let mut quiet = Quiet::default();
        let t0 = Instant::now();
        let first = run(&mut quiet, Kind::PublishRefused, 1000, t0);
        assert!(first[..5].iter().all(|v| *v == Verdict::Log));
        assert!(first[5..].iter().all(|v| *v == Verdict::Quiet));
        // Another kind has its own allowance.
        assert_eq!(
            quiet.admit(Kind::SubscriptionRefused, t0),
            Verdict::Log,
            "kinds are counted apart"
        );
        assert_eq!(
            quiet.pending().collect::<Vec<_>>(),
            vec![(Kind::PublishRefused, 995)]
        );
        assert_eq!(quiet.pending().count(), 0, "pending empties the tallies");
    }

    #[test]
    fn a_summary_comes_at_most_once_per_interval_and_counts_every_line_left_out() {
        let mut quiet = Quiet::default();
        let t0 = Instant::now();
        run(&mut quiet, Kind::SubscriptionRefused, 5, t0);
        let mut summaries = Vec::new();
        let mut left_out = 0;
        // 100 lines a second for 35 seconds.
        for tick in 0..3500u64 {
            let at = t0 + Duration::from_millis(tick * 10);
            match quiet.admit(Kind::SubscriptionRefused, at) {
                Verdict::Log => panic!("line {tick} written in full"),
                Verdict::Quiet => {}
                Verdict::Summary(n) => {
                    summaries.push(at);
                    left_out += n;
                }
            }
        }
        assert_eq!(summaries.len(), 3, "at 10, 20 and 30 s");
        for pair in summaries.windows(2) {
            assert!(pair[1] - pair[0] >= SUMMARY_INTERVAL);
        }
        let rest: u64 = quiet.pending().map(|(_, n)| n).sum();
        assert_eq!(left_out + rest, 3500, "every line left out is told");
    }

    #[test]
    fn a_flood_that_stops_is_summed_up_once_the_interval_has_passed() {
        let mut quiet = Quiet::default();
        let t0 = Instant::now();
        run(&mut quiet, Kind::PublishRefused, 50, t0);
        run(&mut quiet, Kind::SubscriptionRefused, 3, t0);
        let later = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(quiet.due(later(9)).count(), 0, "not yet");
        assert_eq!(
            quiet.due(later(10)).collect::<Vec<_>>(),
            vec![(Kind::PublishRefused, 45)]
        );
        assert_eq!(quiet.due(later(60)).count(), 0, "told once");
        // Past the interval, the next refusal is summed up at once and the
        // interval starts again from it.
        assert_eq!(
            run(&mut quiet, Kind::PublishRefused, 2, later(61)),
            vec![Verdict::Summary(1), Verdict::Quiet]
        );
        assert_eq!(quiet.due(later(70)).count(), 0);
        assert_eq!(
            quiet.due(later(71)).collect::<Vec<_>>(),
            vec![(Kind::PublishRefused, 1)]
        );
    }

    #[test]
    fn a_late_refusal_after_a_quiet_spell_is_summed_up_at_once() {
        let mut quiet = Quiet::default();
        let t0 = Instant::now();
        run(&mut quiet, Kind::Reauthentication, 7, t0);
        assert_eq!(
            quiet.admit(Kind::Reauthentication, t0 + Duration::from_secs(60)),
            Verdict::Summary(3)
        );
        assert_eq!(quiet.pending().count(), 0);
    }
}
