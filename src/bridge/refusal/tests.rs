//! Every reason is counted apart, from zero.

use super::*;

#[test]
fn refusals_start_at_zero_for_every_reason_and_count_apart() {
    let refusals = Refusals::new("cloud");
    assert!(refusals.snapshot().iter().all(|&(_, count)| count == 0));
    refusals.count(Refusal::TopicLevels);
    refusals.count(Refusal::TopicBytes);
    refusals.count(Refusal::TopicBytes);
    let counts: Vec<_> = refusals
        .snapshot()
        .iter()
        .map(|&(refusal, count)| (refusal.as_str(), count))
        .collect();
    assert_eq!(
        counts,
        vec![
            ("topic_levels", 1),
            ("topic_bytes", 2),
            ("invalid_topic", 0),
            ("unmapped", 0)
        ]
    );
}
