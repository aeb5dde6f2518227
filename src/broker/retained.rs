//! Retained messages by topic, searchable by filter.
//!
//! A trie over topic levels holding at most one message per topic. A new
//! subscription walks it along its filter: a literal level follows one
//! child, `+` every child, `#` takes the node and everything below it. At
//! the first level, wildcards skip topics starting with `$` (MQTT §4.7.2).
//! Expired messages (MQTT 5 message expiry) are never returned, and are
//! removed when a lookup meets them or when their topic is replaced.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::message::Message;

#[derive(Debug, Default)]
pub struct RetainedTree {
    root: Node,
    count: usize,
}

#[derive(Debug, Default)]
struct Node {
    message: Option<Arc<Message>>,
    children: HashMap<Box<str>, Node>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.message.is_none() && self.children.is_empty()
    }

    /// Everything at and below this node. `skip_dollar` keeps first-level
    /// `$` topics out when a wildcard stands at the first level.
    fn all(&self, skip_dollar: bool, now: Instant, visit: &mut dyn FnMut(&Arc<Message>)) {
        if let Some(message) = self.message.as_ref().filter(|m| !m.expired(now)) {
            visit(message);
        }
        for (level, child) in &self.children {
            if !(skip_dollar && level.starts_with('$')) {
                child.all(false, now, visit);
            }
        }
    }

    fn matching(
        &self,
        rest: Option<&str>,
        first: bool,
        now: Instant,
        visit: &mut dyn FnMut(&Arc<Message>),
    ) {
        let Some(levels) = rest else {
            if let Some(message) = self.message.as_ref().filter(|m| !m.expired(now)) {
                visit(message);
            }
            return;
        };
        let (level, tail) = match levels.split_once('/') {
            Some((level, tail)) => (level, Some(tail)),
            None => (levels, None),
        };
        match level {
            // `#` is always the last level of a valid filter; it matches
            // its parent too.
            "#" => self.all(first, now, visit),
            "+" => {
                for (name, child) in &self.children {
                    if !(first && name.starts_with('$')) {
                        child.matching(tail, false, now, visit);
                    }
                }
            }
            literal => {
                if let Some(child) = self.children.get(literal) {
                    child.matching(tail, false, now, visit);
                }
            }
        }
    }

    /// Drops expired messages at and below this node; returns how many.
    fn purge(&mut self, now: Instant) -> usize {
        let mut purged = 0;
        if self.message.as_ref().is_some_and(|m| m.expired(now)) {
            self.message = None;
            purged += 1;
        }
        self.children.retain(|_, child| {
            purged += child.purge(now);
            !child.is_empty()
        });
        purged
    }
}

impl RetainedTree {
    /// Stores `message` as the retained message of its topic, replacing
    /// any other.
    pub fn set(&mut self, message: Arc<Message>) {
        let mut node = &mut self.root;
        for level in message.topic().split('/') {
            node = node.children.entry(level.into()).or_default();
        }
        if node.message.replace(message).is_none() {
            self.count += 1;
        }
    }

    /// Removes the retained message of `topic`, if any.
    pub fn clear(&mut self, topic: &str) {
        fn clear(node: &mut Node, rest: Option<&str>) -> bool {
            let Some(levels) = rest else {
                return node.message.take().is_some();
            };
            let (level, tail) = match levels.split_once('/') {
                Some((level, tail)) => (level, Some(tail)),
                None => (levels, None),
            };
            let Some(child) = node.children.get_mut(level) else {
                return false;
            };
            let cleared = clear(child, tail);
            if child.is_empty() {
                node.children.remove(level);
            }
            cleared
        }
        if clear(&mut self.root, Some(topic)) {
            self.count -= 1;
        }
    }

    /// Visits the unexpired retained messages `filter` (valid) matches.
    pub fn matching(&self, filter: &str, now: Instant, visit: &mut dyn FnMut(&Arc<Message>)) {
        self.root.matching(Some(filter), true, now, visit);
    }

    /// Drops every expired message.
    pub fn purge(&mut self, now: Instant) {
        self.count -= self.root.purge(now);
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::TopicFilter;
    use crate::broker::budget::Budget;
    use crate::broker::message::{Properties, Publication, QoS};
    use proptest::prelude::*;
    use std::time::Duration;

    fn message(topic: &str, expiry: Option<Duration>) -> Arc<Message> {
        Message::new(
            Publication {
                topic: topic.into(),
                payload: bytes::Bytes::from_static(b"v"),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: Properties::default(),
                expiry,
            },
            &Budget::new(1 << 20),
        )
    }

    fn topics(tree: &RetainedTree, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        tree.matching(filter, Instant::now(), &mut |m| {
            out.push(m.topic().to_owned())
        });
        out.sort();
        out
    }

    #[test]
    fn set_replace_clear() {
        let mut tree = RetainedTree::default();
        tree.set(message("a/b", None));
        tree.set(message("a/b", None));
        tree.set(message("a", None));
        tree.set(message("$SYS/x", None));
        assert_eq!(tree.len(), 3);
        assert_eq!(topics(&tree, "a/#"), ["a", "a/b"]);
        assert_eq!(topics(&tree, "#"), ["a", "a/b"]);
        assert_eq!(topics(&tree, "+/b"), ["a/b"]);
        assert_eq!(topics(&tree, "$SYS/+"), ["$SYS/x"]);
        tree.clear("a/b");
        tree.clear("a/b");
        assert_eq!(tree.len(), 2);
        assert_eq!(topics(&tree, "#"), ["a"]);
        tree.clear("a");
        tree.clear("$SYS/x");
        assert!(tree.is_empty());
        assert!(tree.root.is_empty(), "cleared topics leave no nodes behind");
    }

    #[test]
    fn expired_messages_are_invisible_and_purged() {
        let mut tree = RetainedTree::default();
        tree.set(message("gone", Some(Duration::ZERO)));
        tree.set(message("kept", Some(Duration::from_secs(60))));
        assert_eq!(topics(&tree, "#"), ["kept"]);
        tree.purge(Instant::now());
        assert_eq!(tree.len(), 1);
    }

    proptest! {
        /// Lookup by filter agrees with the ACL's matcher.
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
            prop_assert_eq!(topics(&tree, &filter), expected);
        }
    }
}
