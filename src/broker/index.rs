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

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::budget::Budget;
use super::children::{self, Children};
use super::session::Session;
use crate::mqtt::SubscriptionOptions;

#[derive(Debug, Clone)]
pub struct Subscriber {
    pub session: Arc<Session>,
    pub options: SubscriptionOptions,
}

#[derive(Debug, Default)]
pub struct Index {
    root: Node,
    /// Subscriptions held, each member of a shared group one: kept as
    /// they come and go, since counting would walk the whole trie.
    count: usize,
}

#[derive(Debug, Default)]
struct Node {
    children: Children<Node>,
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

/// What one level of a filter costs in the index beside its name: the node
/// and its place in its parent.
pub const LEVEL_COST: usize = children::level_cost::<Node>();

/// What subscribing to `requested` (`$share/...` included) costs: the
/// filter as the session keeps it, and its chain of index nodes. Nodes
/// shared with other subscriptions are counted for each, so the figure
/// bounds what one subscription can add.
pub fn subscription_cost(requested: &str) -> usize {
    let levels = requested.bytes().filter(|&b| b == b'/').count() + 1;
    2 * requested.len() + levels * LEVEL_COST + std::mem::size_of::<Subscriber>()
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
                literal => node.children.get_or_default(literal),
            };
        }
        node
    }

    /// Whether this node stays once the chain below it through `level`
    /// is gone: it holds subscriptions or other children.
    fn keeps_without(&self, level: &str) -> bool {
        let others = self.children.len()
            + usize::from(self.plus.is_some())
            + usize::from(self.hash.is_some());
        !self.subscribers.is_empty() || !self.groups.is_empty() || others > 1 || {
            // The one child is not the one on the chain.
            match level {
                "+" => self.plus.is_none(),
                "#" => self.hash.is_none(),
                literal => !self.children.contains_key(literal),
            }
        }
    }

    fn child(&self, level: &str) -> Option<&Node> {
        match level {
            "+" => self.plus.as_deref(),
            "#" => self.hash.as_deref(),
            literal => self.children.get(literal),
        }
    }

    fn child_mut(&mut self, level: &str) -> Option<&mut Node> {
        match level {
            "+" => self.plus.as_deref_mut(),
            "#" => self.hash.as_deref_mut(),
            literal => self.children.get_mut(literal),
        }
    }

    fn take_child(&mut self, level: &str) -> Option<Node> {
        match level {
            "+" => self.plus.take().map(|b| *b),
            "#" => self.hash.take().map(|b| *b),
            literal => self.children.remove(literal),
        }
    }

    /// The node `levels` lead to from here.
    fn descend(&self, levels: &[&str]) -> Option<&Node> {
        levels
            .iter()
            .try_fold(self, |node, level| node.child(level))
    }

    /// Whether `session` subscribes here (in `group`).
    fn holds(&self, group: Option<&str>, session: &Session) -> bool {
        let same = |s: &Subscriber| std::ptr::eq(Arc::as_ptr(&s.session), session);
        match group {
            None => self.subscribers.iter().any(same),
            Some(name) => self
                .groups
                .iter()
                .any(|g| &*g.name == name && g.members.iter().any(same)),
        }
    }

    /// Takes the children out, for [`dispose`].
    fn drain_children(&mut self) -> impl Iterator<Item = Node> + use<> {
        let children = std::mem::take(&mut self.children).into_values();
        let plus = self.plus.take().map(|b| *b);
        let hash = self.hash.take().map(|b| *b);
        children.chain(plus).chain(hash)
    }

    /// Removes `session`'s subscription from this node's lists (in
    /// `group`, for a shared one). Returns whether there was one.
    fn remove_here(&mut self, group: Option<&str>, session: &Session) -> bool {
        let same = |s: &Subscriber| std::ptr::eq(Arc::as_ptr(&s.session), session);
        match group {
            None => remove_where(&mut self.subscribers, same),
            Some(name) => {
                let Some(i) = self.groups.iter().position(|g| &*g.name == name) else {
                    return false;
                };
                let Some(members) = self.groups.get_mut(i).map(|g| &mut g.members) else {
                    return false;
                };
                let removed = remove_where(members, same);
                if members.is_empty() {
                    self.groups.swap_remove(i);
                }
                removed
            }
        }
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

    /// Visits every subscription matching `topic`, walking with a stack
    /// of its own: the depth of a topic is bounded at the door, but the
    /// walk does not rely on it.
    fn matches<'a>(
        &'a self,
        topic: &str,
        dollar: bool,
        budget: &Budget,
        visit: &mut impl FnMut(Match<'a>),
    ) {
        let levels: Vec<&str> = topic.split('/').collect();
        // (node, levels of the topic it stands for)
        let mut stack: Vec<(&'a Node, usize)> = vec![(self, 0)];
        while let Some((node, depth)) = stack.pop() {
            let wildcards = !(depth == 0 && dollar);
            let Some(level) = levels.get(depth) else {
                node.collect(budget, visit);
                // `a/#` also matches `a`.
                if let Some(hash) = &node.hash {
                    hash.collect(budget, visit);
                }
                continue;
            };
            if wildcards {
                if let Some(hash) = &node.hash {
                    hash.collect(budget, visit);
                }
                if let Some(plus) = &node.plus {
                    stack.push((plus, depth + 1));
                }
            }
            if let Some(child) = node.children.get(level) {
                stack.push((child, depth + 1));
            }
        }
    }
}

/// Drops a subtree without recursing: the default drop of nested nodes
/// would go one stack frame per level.
fn dispose(node: Node) {
    let mut stack = vec![node];
    while let Some(mut node) = stack.pop() {
        stack.extend(node.drain_children());
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        dispose(std::mem::take(&mut self.root));
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
                self.count += 1;
                false
            }
        }
    }

    /// Removes `session`'s subscription to `filter` (in `group`). Returns
    /// whether it existed.
    pub fn remove(&mut self, group: Option<&str>, filter: &str, session: &Session) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        // Find the node, and the highest node below which only this
        // subscription's chain would be left empty.
        let mut cut: Option<usize> = None;
        let mut node = &self.root;
        for (depth, level) in levels.iter().enumerate() {
            if node.keeps_without(level) || depth == 0 {
                cut = Some(depth);
            }
            let Some(child) = node.child(level) else {
                return false;
            };
            node = child;
        }
        let alone = node.subscribers.len()
            + node.groups.iter().map(|g| g.members.len()).sum::<usize>()
            == 1
            && node.children.is_empty()
            && node.plus.is_none()
            && node.hash.is_none();
        let mut node = &mut self.root;
        for (depth, level) in levels.iter().enumerate() {
            if alone && Some(depth) == cut {
                // Check it is really this session's before cutting.
                let below = levels.get(depth + 1..).unwrap_or_default();
                let Some(end) = node.child(level).and_then(|c| c.descend(below)) else {
                    return false;
                };
                if !end.holds(group, session) {
                    return false;
                }
                if let Some(chain) = node.take_child(level) {
                    dispose(chain);
                }
                self.count -= 1;
                return true;
            }
            let Some(child) = node.child_mut(level) else {
                return false;
            };
            node = child;
        }
        let removed = node.remove_here(group, session);
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// Visits every subscription matching `topic` (a valid topic name),
    /// one member per shared group.
    pub fn matches<'a>(&'a self, topic: &str, budget: &Budget, mut visit: impl FnMut(Match<'a>)) {
        self.root
            .matches(topic, topic.starts_with('$'), budget, &mut visit);
    }

    pub fn is_empty(&self) -> bool {
        self.root.is_empty()
    }

    /// Subscriptions held (`$SYS/broker/subscriptions/count`).
    pub fn count(&self) -> usize {
        self.count
    }
}

#[cfg(test)]
mod tests;
