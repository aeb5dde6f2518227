//! Retained messages by topic, searchable by filter.
//!
//! A trie over topic levels holding at most one message per topic. A new
//! subscription walks it along its filter: a literal level follows one
//! child, `+` every child, `#` takes the node and everything below it. At
//! the first level, wildcards skip topics starting with `$` (MQTT §4.7.2).
//! Expired messages (MQTT 5 message expiry) are never returned, and are
//! removed when their topic is replaced or by [`RetainedTree::purge`].
//!
//! Topic depth is bounded at the door ([`crate::mqtt::TopicLimits`]), but no
//! walk here relies on it: every walk keeps its own stack on the heap, and
//! dropping the tree takes it apart level by level, so no topic however deep
//! can overflow a thread's stack.
//!
//! Children are kept in order, so a walk has a position: a subscriber's
//! retained messages are read in slices, each resuming after the topic the
//! last one ended on ([`RetainedTree::matching_after`]), and no reader holds
//! the tree for longer than one slice.

use std::ops::Bound;
use std::sync::Arc;
use std::time::Instant;

use super::budget::Charge;
use super::children::{self, Children};
use super::message::Message;

/// What one level of a retained topic costs in the tree beside its name:
/// the node and its place in its parent's map.
pub const LEVEL_COST: usize = children::level_cost::<Node>();

/// What storing a retained message on `topic` costs beyond the message.
pub fn place_cost(topic: &str) -> usize {
    topic.len() + (topic.bytes().filter(|&b| b == b'/').count() + 1) * LEVEL_COST
}

/// A retained message with the charge for its place in the tree.
#[derive(Debug)]
pub struct Retained {
    pub message: Arc<Message>,
    /// Its place in the tree, booked to its publisher.
    pub charge: Option<Charge>,
}

#[derive(Debug, Default)]
pub struct RetainedTree {
    root: Node,
    count: usize,
}

#[derive(Debug, Default)]
struct Node {
    retained: Option<Retained>,
    children: Children<Node>,
}

impl Node {
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.retained.is_none() && self.children.is_empty()
    }

    fn message(&self, now: Instant) -> Option<&Arc<Message>> {
        self.retained
            .as_ref()
            .map(|r| &r.message)
            .filter(|m| !m.expired(now))
    }
}

impl Drop for RetainedTree {
    fn drop(&mut self) {
        dispose(std::mem::take(&mut self.root));
    }
}

/// Drops a subtree without recursing: the default drop of nested maps
/// would go one stack frame per level.
fn dispose(node: Node) {
    let mut stack = vec![node];
    while let Some(mut node) = stack.pop() {
        stack.extend(std::mem::take(&mut node.children).into_values());
    }
}

/// A walk over the tree along a filter, resuming after a position.
struct Walk<'f> {
    filter: &'f [&'f str],
    after: &'f [&'f str],
}

/// How a walk goes on below one node.
struct Frame<'a> {
    /// Levels of the topics of the children (the root's children have 1).
    depth: usize,
    /// Everything from here down matches: a `#` was met.
    all: bool,
    /// The node's topic is a prefix of the resume position, or it.
    on_path: bool,
    children: children::Range<'a, Node>,
}

impl<'f> Walk<'f> {
    /// The frame going through the children of `node`, whose topic has
    /// `depth` levels.
    fn frame<'a>(&self, node: &'a Node, depth: usize, all: bool, on_path: bool) -> Frame<'a> {
        let level = self.filter.get(depth).copied();
        let all = all || level == Some("#");
        // On the resume path, children before the position's level at this
        // depth were visited; its own level is on the path and goes on.
        let from = match self.after.get(depth) {
            Some(resume) if on_path => Bound::Included(*resume),
            _ => Bound::Unbounded,
        };
        let children = match level {
            Some(literal) if !all && literal != "+" => {
                let before = matches!(from, Bound::Included(resume) if resume > literal);
                if before {
                    // Visited already: an empty range.
                    node.children
                        .range(Bound::Included(literal), Bound::Excluded(literal))
                } else {
                    node.children
                        .range(Bound::Included(literal), Bound::Included(literal))
                }
            }
            _ => node.children.range(from, Bound::Unbounded),
        };
        Frame {
            depth: depth + 1,
            all,
            on_path,
            children,
        }
    }
}

/// Where a slice of a walk stopped: resume after this topic (which need
/// not hold a message).
pub type Position = String;

impl RetainedTree {
    /// Stores `retained` as the retained message of its topic, replacing
    /// any other. Returns the one replaced.
    pub fn set(&mut self, retained: Retained) -> Option<Retained> {
        let mut node = &mut self.root;
        for level in retained.message.topic().split('/') {
            node = node.children.get_or_default(level);
        }
        let old = node.retained.replace(retained);
        if old.is_none() {
            self.count += 1;
        }
        old
    }

    /// The retained message of `topic`, if any (expired or not).
    pub fn get(&self, topic: &str) -> Option<&Retained> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.retained.as_ref()
    }

    /// Removes the retained message of `topic`, if any, and the nodes it
    /// alone kept.
    pub fn clear(&mut self, topic: &str) -> Option<Retained> {
        // The highest node that would be left empty: everything from there
        // down is the cleared message's chain alone.
        let levels: Vec<&str> = topic.split('/').collect();
        let mut cut = 0;
        let mut node = &self.root;
        for (depth, level) in levels.iter().enumerate() {
            if node.retained.is_some() || node.children.len() > 1 {
                cut = depth;
            }
            node = node.children.get(level)?;
        }
        node.retained.as_ref()?;
        let keeps_itself = !node.children.is_empty();
        let mut node = &mut self.root;
        let mut taken = None;
        for (depth, level) in levels.iter().enumerate() {
            if depth == cut && !keeps_itself {
                let chain = node.children.remove(level)?;
                taken = take_end(chain, levels.len() - depth);
                break;
            }
            node = node.children.get_mut(level)?;
        }
        if keeps_itself {
            taken = node.retained.take();
        }
        if taken.is_some() {
            self.count -= 1;
        }
        taken
    }

    /// Visits the unexpired retained messages `filter` (valid) matches.
    pub fn matching(&self, filter: &str, now: Instant, visit: &mut dyn FnMut(&Arc<Message>)) {
        self.matching_after(filter, None, usize::MAX, now, visit);
    }

    /// Visits, in topic order, the unexpired retained messages `filter`
    /// (valid) matches whose topics come after the position `after` (from
    /// the start when `None`), looking at `steps` nodes at most. Returns
    /// the position to resume from, or `None` once the walk is complete.
    ///
    /// Topics are ordered level by level, a topic before the topics below
    /// it, which is the order of a walk over sorted children: so resuming
    /// after a position skips, on each level of its path, the children
    /// before it, and nothing else.
    pub fn matching_after(
        &self,
        filter: &str,
        after: Option<&str>,
        steps: usize,
        now: Instant,
        visit: &mut dyn FnMut(&Arc<Message>),
    ) -> Option<Position> {
        let filter: Vec<&str> = filter.split('/').collect();
        let after: Vec<&str> = after.map_or_else(Vec::new, |a| a.split('/').collect());
        let walk = Walk {
            filter: &filter,
            after: &after,
        };
        // `path` holds the levels of the node whose children the top frame
        // goes through.
        let mut path: Vec<&str> = Vec::new();
        let mut stack = vec![walk.frame(&self.root, 0, false, !after.is_empty())];
        let mut left = steps;
        while let Some(frame) = stack.last_mut() {
            let Some((level, child)) = frame.children.next() else {
                stack.pop();
                path.pop();
                continue;
            };
            let (depth, all, parent_on_path) = (frame.depth, frame.all, frame.on_path);
            path.push(level);
            let on_path = parent_on_path && after.get(depth - 1) == Some(&level);
            let first_wildcard = all || filter.first() == Some(&"+");
            let mut descended = false;
            if !(depth == 1 && first_wildcard && level.starts_with('$')) {
                let matched = all
                    || (depth == filter.len() && filter.last() != Some(&"#"))
                    || (depth + 1 == filter.len() && filter.last() == Some(&"#"));
                // A node on the resume path is the position or before it.
                if matched && !on_path {
                    if let Some(message) = child.message(now) {
                        visit(message);
                    }
                }
                if all || depth < filter.len() {
                    stack.push(walk.frame(child, depth, all, on_path));
                    descended = true;
                }
            }
            // Nodes on the resume path were counted by the slice that
            // stopped there: counting them again could stop on the same
            // position for ever.
            if !on_path {
                left = left.saturating_sub(1);
                if left == 0 {
                    return Some(path.join("/"));
                }
            }
            if !descended {
                path.pop();
            }
        }
        None
    }

    /// Drops every expired message; returns how many.
    pub fn purge(&mut self, now: Instant) -> usize {
        let mut expired = Vec::new();
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            if let Some(retained) = &node.retained {
                if retained.message.expired(now) {
                    expired.push(retained.message.topic().to_owned());
                }
            }
            stack.extend(node.children.values());
        }
        for topic in &expired {
            self.clear(topic);
        }
        expired.len()
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Every retained message with its charge, for checking the ledger.
    pub fn each(&self, visit: &mut dyn FnMut(&Retained)) {
        let mut stack = vec![&self.root];
        while let Some(node) = stack.pop() {
            if let Some(retained) = &node.retained {
                visit(retained);
            }
            stack.extend(node.children.values());
        }
    }
}

/// The retained message at the end of a chain of `levels` single-child
/// nodes, taken apart without recursion.
fn take_end(mut node: Node, levels: usize) -> Option<Retained> {
    for _ in 1..levels {
        let (_, child) = node.children.pop_first()?;
        dispose(std::mem::replace(&mut node, child));
    }
    let taken = node.retained.take();
    dispose(node);
    taken
}

#[cfg(test)]
mod tests;
