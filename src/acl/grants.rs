//! What one connection may do: its token's rule lists, bound to it, and
//! the questions every PUBLISH and SUBSCRIBE asks of them (rules 1 and 2 of
//! the module documentation). Apart from `mod.rs` so that `claim.rs`, which
//! binds claims into [`Grants`], needs nothing from the module that
//! re-exports both.

use super::rules::{Rule, RuleList, RuleTopic};
use crate::mqtt::{QoS, RequestedFilter, TopicFilter, is_server_topic, validate_topic_name};

/// What one connection may do: the token's rule lists, bound to it. Every
/// list must allow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    lists: Vec<RuleList>,
}

impl Grants {
    /// What a `topics` claim of these filters grants: publish and
    /// subscribe on each.
    pub fn new(filters: Vec<TopicFilter>) -> Self {
        Grants::from_lists(vec![RuleList::new(
            filters.into_iter().map(Rule::allow_all).collect(),
        )])
    }

    pub(crate) fn from_lists(lists: Vec<RuleList>) -> Self {
        Grants { lists }
    }

    pub fn lists(&self) -> &[RuleList] {
        &self.lists
    }

    /// The filters every rule names, list by list, in order (rules taking
    /// a topic literally, `eq ...`, are left out).
    pub fn filters(&self) -> impl Iterator<Item = &TopicFilter> {
        self.lists
            .iter()
            .flat_map(RuleList::rules)
            .filter_map(|rule| match &rule.topic {
                RuleTopic::Filter(filter) => Some(filter),
                RuleTopic::Exact(_) => None,
            })
    }

    /// A token that allows nothing is an identity without rights: it is not
    /// worth a connection.
    pub fn may_connect(&self) -> bool {
        !self.lists.is_empty() && self.lists.iter().all(RuleList::allows_something)
    }

    /// Rule 1: `topic` is a valid topic name, not the server's own (the
    /// `$` rule of the module docs: no grant reaches `$SYS/...` for
    /// publishing), and every list allows publishing to it at `qos`,
    /// retained or not.
    pub fn may_publish(&self, topic: &str, qos: QoS, retain: bool) -> bool {
        validate_topic_name(topic).is_ok()
            && !is_server_topic(topic)
            && !self.lists.is_empty()
            && self
                .lists
                .iter()
                .all(|list| list.may_publish(topic, qos, retain))
    }

    /// Rule 2: `filter` (possibly `$share/{group}/{filter}`) is a valid
    /// filter and every list allows subscribing to all of it at `qos`.
    pub fn may_subscribe(&self, filter: &str, qos: QoS) -> bool {
        RequestedFilter::parse(filter).is_ok_and(|requested| {
            !self.lists.is_empty()
                && self
                    .lists
                    .iter()
                    .all(|list| list.may_subscribe(&requested, qos))
        })
    }

    /// Whether a message on `topic` may still be delivered at `qos`: the
    /// topic as a subscription of its own. Used when grants narrow (a new
    /// token) to drop what is queued outside them.
    pub fn may_receive(&self, topic: &str, qos: QoS) -> bool {
        validate_topic_name(topic).is_ok() && self.may_subscribe(topic, qos)
    }
}
