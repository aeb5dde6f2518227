use super::*;
use crate::broker::mailbox::QueueLimits;
use crate::broker::session::SessionKey;
use crate::config::SlowSubscriber;
use crate::mqtt::QoS;
use crate::mqtt::TopicFilter;
use proptest::prelude::*;

fn session(name: &str) -> Arc<Session> {
    Arc::new(Session::new(
        SessionKey::new(name, name),
        QueueLimits {
            max_messages: 10,
            max_bytes: 1 << 20,
            policy: SlowSubscriber::Drop,
        },
    ))
}

fn options(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions {
        qos,
        no_local: false,
        retain_as_published: false,
        id: None,
    }
}

fn matched(index: &Index, topic: &str) -> Vec<String> {
    let budget = Budget::new(1 << 20);
    let mut out = Vec::new();
    index.matches(topic, &budget, |m| {
        out.push(m.subscriber.session.key().client_id().to_owned())
    });
    out.sort();
    out
}

#[test]
fn levels_wildcards_and_the_dollar_rule() {
    let mut index = Index::default();
    for (name, filter) in [
        ("exact", "a/b"),
        ("plus", "a/+"),
        ("hash", "a/#"),
        ("all", "#"),
        ("sys", "$SYS/#"),
        ("plusroot", "+/b"),
        ("empty", "a//c"),
    ] {
        index.insert(
            None,
            filter,
            Subscriber {
                session: session(name),
                options: options(QoS::AtMostOnce),
            },
        );
    }
    assert_eq!(
        matched(&index, "a/b"),
        ["all", "exact", "hash", "plus", "plusroot"]
    );
    assert_eq!(matched(&index, "a"), ["all", "hash"]);
    assert_eq!(matched(&index, "a//c"), ["all", "empty", "hash"]);
    assert_eq!(matched(&index, "$SYS/x"), ["sys"]);
    assert_eq!(matched(&index, "$x/b"), Vec::<String>::new());
}

#[test]
fn removal_prunes_and_is_per_session() {
    let mut index = Index::default();
    let (a, b) = (session("a"), session("b"));
    let sub = |s: &Arc<Session>| Subscriber {
        session: Arc::clone(s),
        options: options(QoS::AtLeastOnce),
    };
    assert!(!index.insert(None, "x/+/z", sub(&a)));
    assert!(index.insert(None, "x/+/z", sub(&a)), "a replacement");
    index.insert(None, "x/+/z", sub(&b));
    assert!(index.remove(None, "x/+/z", &a));
    assert!(!index.remove(None, "x/+/z", &a));
    assert_eq!(matched(&index, "x/y/z"), ["b"]);
    assert!(index.remove(None, "x/+/z", &b));
    assert!(index.is_empty());
}

#[test]
fn shared_groups_are_keyed_by_group_and_filter() {
    let mut index = Index::default();
    let (a, b, c) = (session("a"), session("b"), session("c"));
    let sub = |s: &Arc<Session>| Subscriber {
        session: Arc::clone(s),
        options: options(QoS::AtLeastOnce),
    };
    index.insert(Some("uniq"), "dev/1/#", sub(&a));
    index.insert(Some("uniq"), "dev/2/#", sub(&b));
    index.insert(Some("uniq"), "dev/1/#", sub(&c));
    // dev/2 only ever goes to b, the one member of that subscription.
    for _ in 0..4 {
        assert_eq!(matched(&index, "dev/2/x"), ["b"]);
    }
    // dev/1 alternates between a and c (both offline: plain round robin).
    let mut seen: Vec<String> = (0..4).flat_map(|_| matched(&index, "dev/1/x")).collect();
    seen.sort();
    assert_eq!(seen, ["a", "a", "c", "c"]);
    assert!(index.remove(Some("uniq"), "dev/1/#", &a));
    assert!(!index.remove(Some("uniq"), "dev/1/#", &b));
    assert_eq!(matched(&index, "dev/1/x"), ["c"]);
    index.remove(Some("uniq"), "dev/1/#", &c);
    index.remove(Some("uniq"), "dev/2/#", &b);
    assert!(index.is_empty());
}

#[test]
fn a_connected_member_with_room_is_preferred() {
    let mut index = Index::default();
    let (a, b) = (session("a"), session("b"));
    b.mailbox().set_online(true);
    for s in [&a, &b] {
        index.insert(
            Some("g"),
            "t",
            Subscriber {
                session: Arc::clone(s),
                options: options(QoS::AtLeastOnce),
            },
        );
    }
    for _ in 0..4 {
        assert_eq!(matched(&index, "t"), ["b"]);
    }
}

fn filter_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof!["a", "b", "", "\\$s", "\\+"], 1..4).prop_flat_map(|levels| {
        let joined = levels.join("/");
        prop_oneof![
            Just(joined.clone()),
            Just(format!("{joined}/#")),
            Just("#".to_owned())
        ]
    })
}

fn topic_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(prop_oneof!["a", "b", "", "\\$s"], 1..5)
        .prop_map(|l| l.join("/"))
        .prop_filter("a topic name is never empty", |t| !t.is_empty())
}

proptest! {
    /// The index agrees with the ACL's matcher, the reference for
    /// what a filter matches, on every filter and topic.
    #[test]
    fn index_matches_like_the_acl(
        filters in prop::collection::vec(filter_strategy(), 1..8),
        topic in topic_strategy(),
    ) {
        let mut index = Index::default();
        let mut expected = Vec::new();
        for (i, filter) in filters.iter().enumerate() {
            let Ok(parsed) = TopicFilter::parse(filter) else { continue };
            let name = format!("s{i}");
            index.insert(None, filter, Subscriber { session: session(&name), options: options(QoS::AtMostOnce) });
            if parsed.matches_topic(&topic) {
                expected.push(name);
            }
        }
        expected.sort();
        prop_assert_eq!(matched(&index, &topic), expected);
    }
}

/// 100 times the default depth limit, on a small stack: insert, match,
/// remove and drop never recurse.
#[test]
fn filters_far_deeper_than_the_limit_walk_without_recursion() {
    let levels = crate::mqtt::TopicLimits::DEFAULT.max_levels * 100;
    let deep = vec!["l"; levels].join("/");
    let run = move || {
        let mut index = Index::default();
        let (a, b) = (session("a"), session("b"));
        let sub = |s: &Arc<Session>| Subscriber {
            session: Arc::clone(s),
            options: options(QoS::AtMostOnce),
        };
        index.insert(None, &format!("{deep}/#"), sub(&a));
        index.insert(None, &format!("{deep}/+"), sub(&b));
        index.insert(None, &deep, sub(&b));
        assert_eq!(matched(&index, &format!("{deep}/x")), ["a", "b"]);
        assert_eq!(matched(&index, &deep), ["a", "b"]);
        assert!(index.remove(None, &format!("{deep}/+"), &b));
        assert!(!index.remove(None, &format!("{deep}/+"), &b));
        assert_eq!(matched(&index, &format!("{deep}/x")), ["a"]);
        assert!(index.remove(None, &deep, &b));
        assert!(index.remove(None, &format!("{deep}/#"), &a));
        assert!(index.is_empty());
        index.insert(None, &deep, sub(&a));
        drop(index);
    };
    crate::broker::on_small_stack(run);
}

#[test]
fn removing_one_of_several_leaves_the_rest() {
    let mut index = Index::default();
    let (a, b) = (session("a"), session("b"));
    let sub = |s: &Arc<Session>| Subscriber {
        session: Arc::clone(s),
        options: options(QoS::AtMostOnce),
    };
    index.insert(None, "x/y/z", sub(&a));
    index.insert(None, "x/y", sub(&b));
    index.insert(Some("g"), "x/y/z", sub(&b));
    assert!(
        !index.remove(None, "x/y/z", &b),
        "b is only in the group there"
    );
    assert!(index.remove(None, "x/y/z", &a));
    assert_eq!(matched(&index, "x/y/z"), ["b"]);
    assert!(index.remove(Some("g"), "x/y/z", &b));
    assert_eq!(matched(&index, "x/y"), ["b"]);
    assert!(index.remove(None, "x/y", &b));
    assert!(index.is_empty());
}

/// The count follows every way a subscription comes and goes: a
/// replacement is not a new one, a shared member is one, a removal that
/// cuts a chain and one that leaves it both count, a miss does not.
#[test]
fn the_count_follows_inserts_replacements_and_removals() {
    let mut index = Index::default();
    let (a, b) = (session("a"), session("b"));
    let sub = |s: &Arc<Session>| Subscriber {
        session: Arc::clone(s),
        options: options(QoS::AtMostOnce),
    };
    index.insert(None, "x/y", sub(&a));
    index.insert(None, "x/y", sub(&a));
    index.insert(None, "x/y", sub(&b));
    index.insert(Some("g"), "x/y", sub(&a));
    index.insert(None, "x/y/z/deep", sub(&b));
    assert_eq!(index.count(), 4);
    assert!(!index.remove(None, "x/q", &a));
    assert!(!index.remove(Some("h"), "x/y", &a));
    assert_eq!(index.count(), 4);
    assert!(index.remove(None, "x/y/z/deep", &b), "cuts its chain");
    assert!(index.remove(None, "x/y", &a), "leaves b's");
    assert_eq!(index.count(), 2);
    assert!(index.remove(Some("g"), "x/y", &a));
    assert!(index.remove(None, "x/y", &b));
    assert_eq!(index.count(), 0);
    assert!(index.is_empty());
}
