//! The subscription index: which sessions want a message on this topic.
//!
//! A trie over topic levels. Each node has its literal children, a `+`
//! child and a `#` child; a subscription lives at the node its filter ends
//! on. Matching a topic walks its levels once, following at each level the
//! literal child, the `+` child, and collecting the `#` child (which also
//! matches the parent level: `a/#` matches `a`). At the first level,
//! wildcards are not followed for topics starting with `$` (MQTT §4.7.2);
//! this is the same rule [`crate::acl`] applies to grants.
//!
//! Shared subscriptions (`$share/{group}/{filter}`) live at the node of
//! their filter, as groups keyed by name, so a shared subscription is
//! identified by group *and* filter: `$share/g/a` and `$share/g/b` are two
//! subscriptions, each delivering to one of its own members. A group hands
//! each message to the next member, round robin, preferring one that is
//! connected and has room.
//!
//! The index only finds subscribers; merging several subscriptions of one
//! session into one delivery is the caller's business ([`super::Broker`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::budget::Budget;
use super::message::QoS;
use super::session::Session;

/// The options of one subscription that matter when delivering (retain
/// handling only matters when subscribing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionOptions {
    /// The granted (maximum) QoS.
    pub qos: QoS,
    /// Never deliver the session's own publishes (MQTT 5).
    pub no_local: bool,
    /// Keep the RETAIN flag of live deliveries (MQTT 5).
    pub retain_as_published: bool,
    /// The subscription identifier (MQTT 5).
    pub id: Option<u32>,
}

#[derive(Debug, Clone)]
pub struct Subscriber {
    pub session: Arc<Session>,
    pub options: SubscriptionOptions,
}

#[derive(Debug, Default)]
pub struct Index {
    root: Node,
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    hash: Option<Box<Node>>,
    subscribers: Vec<Subscriber>,
    groups: Vec<Group>,
}

#[derive(Debug)]
struct Group {
    name: Box<str>,
    members: Vec<Subscriber>,
    /// Where the round robin goes on from.
    next: AtomicUsize,
}

/// One match of a topic: the subscriber, and whether it was chosen for a
/// shared subscription (such deliveries are never merged with others).
#[derive(Debug, Clone, Copy)]
pub struct Match<'a> {
    pub subscriber: &'a Subscriber,
    pub shared: bool,
}

/// Splits the first level off a topic or filter.
fn split_level(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once('/') {
        Some((level, rest)) => (level, Some(rest)),
        None => (rest, None),
    }
}

impl Node {
    fn is_empty(&self) -> bool {
        self.subscribers.is_empty()
            && self.groups.is_empty()
            && self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_none()
    }

    /// The node `filter` ends on, created if missing.
    fn node_mut(&mut self, filter: &str) -> &mut Node {
        let mut node = self;
        let mut rest = Some(filter);
        while let Some(levels) = rest {
            let (level, tail) = split_level(levels);
            rest = tail;
            node = match level {
                "+" => node.plus.get_or_insert_default(),
                "#" => node.hash.get_or_insert_default(),
                literal => node.children.entry(literal.into()).or_default(),
            };
        }
        node
    }

    /// Removes `session`'s subscription at `filter` (in `group`, for a
    /// shared one) and prunes nodes left empty. Returns whether there was
    /// one.
    fn remove(&mut self, filter: Option<&str>, group: Option<&str>, session: &Session) -> bool {
        let Some(levels) = filter else {
            let same = |s: &Subscriber| std::ptr::eq(Arc::as_ptr(&s.session), session);
            return match group {
                None => remove_where(&mut self.subscribers, same),
                Some(name) => {
                    let Some(i) = self.groups.iter().position(|g| &*g.name == name) else {
                        return false;
                    };
                    let removed = remove_where(&mut self.groups[i].members, same);
                    if self.groups[i].members.is_empty() {
                        self.groups.swap_remove(i);
                    }
                    removed
                }
            };
        };
        let (level, rest) = split_level(levels);
        let (removed, prune) = match level {
            "+" | "#" => {
                let slot = if level == "+" {
                    &mut self.plus
                } else {
                    &mut self.hash
                };
                let Some(child) = slot.as_deref_mut() else {
                    return false;
                };
                let removed = child.remove(rest, group, session);
                (removed, child.is_empty())
            }
            literal => {
                let Some(child) = self.children.get_mut(literal) else {
                    return false;
                };
                let removed = child.remove(rest, group, session);
                (removed, child.is_empty())
            }
        };
        if prune {
            match level {
                "+" => self.plus = None,
                "#" => self.hash = None,
                literal => {
                    self.children.remove(literal);
                }
            }
        }
        removed
    }

    /// Visits the subscriptions held at this node.
    fn collect<'a>(&'a self, budget: &Budget, visit: &mut impl FnMut(Match<'a>)) {
        for subscriber in &self.subscribers {
            visit(Match {
                subscriber,
                shared: false,
            });
        }
        for group in &self.groups {
            if let Some(subscriber) = group.pick(budget) {
                visit(Match {
                    subscriber,
                    shared: true,
                });
            }
        }
    }

    fn matches<'a>(
        &'a self,
        rest: Option<&str>,
        first: bool,
        dollar: bool,
        budget: &Budget,
        visit: &mut impl FnMut(Match<'a>),
    ) {
        let wildcards = !(first && dollar);
        let Some(levels) = rest else {
            self.collect(budget, visit);
            // `a/#` also matches `a`.
            if let Some(hash) = &self.hash {
                hash.collect(budget, visit);
            }
            return;
        };
        if wildcards {
            if let Some(hash) = &self.hash {
                hash.collect(budget, visit);
            }
        }
        let (level, tail) = split_level(levels);
        if let Some(child) = self.children.get(level) {
            child.matches(tail, false, dollar, budget, visit);
        }
        if wildcards {
            if let Some(plus) = &self.plus {
                plus.matches(tail, false, dollar, budget, visit);
            }
        }
    }
}

/// Removes the first element `pred` accepts; whether there was one.
fn remove_where<T>(items: &mut Vec<T>, pred: impl Fn(&T) -> bool) -> bool {
    match items.iter().position(pred) {
        Some(i) => {
            items.swap_remove(i);
            true
        }
        None => false,
    }
}

impl Group {
    /// The member this message goes to: the next in turn that is connected
    /// and has room, else the next connected one (its publisher will wait
    /// for it), else the next one (an offline persistent session queues).
    fn pick(&self, budget: &Budget) -> Option<&Subscriber> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let in_turn = (0..n).map(|i| &self.members[(start + i) % n]);
        in_turn
            .clone()
            .find(|m| m.session.mailbox().accepts_now(budget))
            .or_else(|| in_turn.clone().find(|m| m.session.mailbox().is_online()))
            .or_else(|| in_turn.clone().next())
    }
}

impl Index {
    /// Adds (or replaces) `subscriber`'s subscription to `filter`, shared
    /// in `group` if given. `filter` must be valid. Returns true when the
    /// session already had this subscription.
    pub fn insert(&mut self, group: Option<&str>, filter: &str, subscriber: Subscriber) -> bool {
        let node = self.root.node_mut(filter);
        let list = match group {
            None => &mut node.subscribers,
            Some(name) => {
                let i = match node.groups.iter().position(|g| &*g.name == name) {
                    Some(i) => i,
                    None => {
                        node.groups.push(Group {
                            name: name.into(),
                            members: Vec::new(),
                            next: AtomicUsize::new(0),
                        });
                        node.groups.len() - 1
                    }
                };
                &mut node.groups[i].members
            }
        };
        match list
            .iter_mut()
            .find(|s| Arc::ptr_eq(&s.session, &subscriber.session))
        {
            Some(existing) => {
                *existing = subscriber;
                true
            }
            None => {
                list.push(subscriber);
                false
            }
        }
    }

    /// Removes `session`'s subscription to `filter` (in `group`). Returns
    /// whether it existed.
    pub fn remove(&mut self, group: Option<&str>, filter: &str, session: &Session) -> bool {
        self.root.remove(Some(filter), group, session)
    }

    /// Visits every subscription matching `topic` (a valid topic name),
    /// one member per shared group.
    pub fn matches<'a>(&'a self, topic: &str, budget: &Budget, mut visit: impl FnMut(Match<'a>)) {
        self.root.matches(
            Some(topic),
            true,
            topic.starts_with('$'),
            budget,
            &mut visit,
        );
    }

    pub fn is_empty(&self) -> bool {
        self.root.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::TopicFilter;
    use crate::broker::mailbox::QueueLimits;
    use crate::broker::session::SessionKey;
    use crate::config::SlowSubscriber;
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
        prop::collection::vec(prop_oneof!["a", "b", "", "\\$s", "\\+"], 1..4).prop_flat_map(
            |levels| {
                let joined = levels.join("/");
                prop_oneof![
                    Just(joined.clone()),
                    Just(format!("{joined}/#")),
                    Just("#".to_owned())
                ]
            },
        )
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
}
