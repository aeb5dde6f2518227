use super::*;
use crate::broker::budget::Budget;
use crate::broker::message::{Properties, Publication};
use crate::mqtt::QoS;
use crate::mqtt::{TopicFilter, TopicLimits};
use proptest::prelude::*;
use std::time::Duration;

fn message(topic: &str, expiry: Option<Duration>) -> Retained {
    Retained {
        message: Message::new(
            Publication {
                topic: topic.into(),
                payload: bytes::Bytes::from_static(b"v"),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: Properties::default(),
                expiry,
            },
            &Budget::new(1 << 20),
        ),
        charge: None,
    }
}

fn topics(tree: &RetainedTree, filter: &str) -> Vec<String> {
    let mut out = Vec::new();
    tree.matching(filter, Instant::now(), &mut |m| {
        out.push(m.topic().to_owned())
    });
    out.sort();
    out
}

/// The same walk in slices of `steps` nodes, resumed each time.
fn topics_in_slices(tree: &RetainedTree, filter: &str, steps: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut after: Option<Position> = None;
    loop {
        after = tree.matching_after(filter, after.as_deref(), steps, Instant::now(), &mut |m| {
            out.push(m.topic().to_owned())
        });
        if after.is_none() {
            return out;
        }
    }
}

#[test]
fn set_replace_clear() {
    let mut tree = RetainedTree::default();
    tree.set(message("a/b", None));
    assert!(tree.set(message("a/b", None)).is_some(), "replaced");
    tree.set(message("a", None));
    tree.set(message("$SYS/x", None));
    assert_eq!(tree.len(), 3);
    assert_eq!(topics(&tree, "a/#"), ["a", "a/b"]);
    assert_eq!(topics(&tree, "#"), ["a", "a/b"]);
    assert_eq!(topics(&tree, "+/b"), ["a/b"]);
    assert_eq!(topics(&tree, "$SYS/+"), ["$SYS/x"]);
    assert!(tree.clear("a/b").is_some());
    assert!(tree.clear("a/b").is_none());
    assert_eq!(tree.len(), 2);
    assert_eq!(topics(&tree, "#"), ["a"]);
    tree.clear("a");
    tree.clear("$SYS/x");
    assert!(tree.is_empty());
    assert!(tree.root.is_empty(), "cleared topics leave no nodes behind");
}

#[test]
fn clearing_keeps_what_others_need() {
    let mut tree = RetainedTree::default();
    for topic in ["a/b/c/d", "a/b", "a/x/y", "a/b/c/e"] {
        tree.set(message(topic, None));
    }
    tree.clear("a/b/c/d");
    assert_eq!(topics(&tree, "#"), ["a/b", "a/b/c/e", "a/x/y"]);
    tree.clear("a/b");
    assert_eq!(topics(&tree, "#"), ["a/b/c/e", "a/x/y"]);
    tree.clear("a/b/c/e");
    tree.clear("a/x/y");
    assert!(tree.root.is_empty());
}

#[test]
fn expired_messages_are_invisible_and_purged() {
    let mut tree = RetainedTree::default();
    tree.set(message("gone", Some(Duration::ZERO)));
    tree.set(message("kept", Some(Duration::from_secs(60))));
    assert_eq!(topics(&tree, "#"), ["kept"]);
    assert_eq!(tree.purge(Instant::now()), 1);
    assert_eq!(tree.len(), 1);
}

/// 100 times the default depth limit, on this thread's stack: every walk
/// and the drop are iterative.
#[test]
fn topics_far_deeper_than_the_limit_walk_without_recursion() {
    let levels = TopicLimits::DEFAULT.max_levels * 100;
    let deep = vec!["l"; levels].join("/");
    let run = move || {
        let mut tree = RetainedTree::default();
        tree.set(message(&deep, Some(Duration::ZERO)));
        tree.set(message(&format!("{deep}/x"), None));
        assert_eq!(topics(&tree, "#").len(), 1);
        assert_eq!(topics(&tree, &format!("{deep}/+")).len(), 1);
        assert_eq!(topics_in_slices(&tree, "#", 7).len(), 1);
        assert_eq!(tree.purge(Instant::now()), 1);
        assert!(tree.clear(&format!("{deep}/x")).is_some());
        assert!(tree.root.is_empty());
        tree.set(message(&deep, None));
        drop(tree);
    };
    crate::broker::on_small_stack(run);
}

#[test]
fn slices_resume_where_they_stopped() {
    let mut tree = RetainedTree::default();
    let stored = [
        "a", "a/b", "a/b/c", "a/c", "b", "b/a", "$s/a", "/x", "", "c/d/e",
    ];
    for topic in stored.iter().filter(|t| !t.is_empty()) {
        tree.set(message(topic, None));
    }
    for filter in [
        "#", "a/#", "+/a", "+/+", "a/b", "/#", "+/#", "$s/#", "c/+/e",
    ] {
        let mut whole = Vec::new();
        tree.matching(filter, Instant::now(), &mut |m| {
            whole.push(m.topic().to_owned())
        });
        for steps in 1..6 {
            assert_eq!(
                topics_in_slices(&tree, filter, steps),
                whole,
                "{filter} in slices of {steps}"
            );
        }
    }
}

proptest! {
    /// Lookup by filter agrees with the ACL's matcher, whole or in slices.
    #[test]
    fn lookup_matches_like_the_acl(
        stored in prop::collection::vec(
            prop::collection::vec(prop_oneof!["a", "b", "", "\\$s"], 1..4).prop_map(|l| l.join("/")),
            0..10,
        ),
        filter in prop::collection::vec(prop_oneof!["a", "b", "", "\\$s", "\\+"], 1..4)
            .prop_flat_map(|l| {
                let joined = l.join("/");
                prop_oneof![Just(joined.clone()), Just(format!("{joined}/#")), Just("#".to_owned())]
            }),
        steps in 1usize..5,
    ) {
        let Ok(parsed) = TopicFilter::parse(&filter) else { return Ok(()) };
        let mut tree = RetainedTree::default();
        // Only valid topic names are ever retained; the empty one is not.
        let stored: Vec<&String> = stored.iter().filter(|t| !t.is_empty()).collect();
        for topic in &stored {
            tree.set(message(topic, None));
        }
        let mut expected: Vec<String> = stored.iter().filter(|t| parsed.matches_topic(t)).map(|t| t.to_string()).collect();
        expected.sort();
        expected.dedup();
        prop_assert_eq!(topics(&tree, &filter), expected.clone());
        let mut sliced = topics_in_slices(&tree, &filter, steps);
        let in_order = sliced.clone();
        sliced.sort();
        prop_assert_eq!(sliced, expected, "slices of {}", steps);
        let mut unique = in_order.clone();
        unique.dedup();
        prop_assert_eq!(unique, in_order, "nothing visited twice");
    }
}
