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
