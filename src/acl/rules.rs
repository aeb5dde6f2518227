//! Rules: the form every grant takes once it is read from a token and bound
//! to a connection, and how an ordered list of them decides.
//!
//! A [`Rule`] allows or denies an action (publish, subscribe, or both) on a
//! topic filter, optionally only at some QoS levels and, for publish, only
//! for retained or only for plain messages. A [`RuleList`] is read top to
//! bottom; the first rule that applies decides and no applicable rule
//! denies, which is EMQX's rule-list semantics with `no_match = deny`.
//!
//! Subscribing asks about a *set* of topics at once, so "applies" needs
//! care there. A subscription to `f` is allowed when, going down the list,
//! an allow rule whose filter covers `f` is reached before any deny rule
//! whose filter shares a topic with `f`. A deny rule that reaches only part
//! of `f` refuses `f` whole: a filter is never narrowed to what is allowed.
//! EMQX compares the requested filter with each rule's filter as if it were
//! a topic, so it lets `t/#` through past `deny t/secret`; jwtgate does not.

use std::fmt;

use crate::mqtt::topic::Filter;
use crate::mqtt::{QoS, RequestedFilter, TopicFilter};

/// What a rule says when it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Allow,
    Deny,
}

/// What a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
    /// Both.
    All,
}

impl Action {
    fn covers_publish(self) -> bool {
        self != Action::Subscribe
    }

    fn covers_subscribe(self) -> bool {
        self != Action::Publish
    }
}

/// The QoS levels a rule applies to; all three unless the rule says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QosLevels(u8);

impl QosLevels {
    pub const ALL: QosLevels = QosLevels(0b111);

    /// The levels named, or `None` if one is not 0, 1 or 2.
    pub fn from_levels(levels: impl IntoIterator<Item = u64>) -> Option<QosLevels> {
        levels.into_iter().try_fold(QosLevels(0), |set, level| {
            (level <= 2).then(|| QosLevels(set.0 | 1 << level))
        })
    }

    fn contains(self, qos: QoS) -> bool {
        self.0 & (1 << qos as u8) != 0
    }
}

/// The topics a rule is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RuleTopic {
    /// Every topic the filter matches (and, for subscribe, every filter it
    /// covers).
    Filter(TopicFilter),
    /// Exactly this string, wildcards and all (EMQX's `eq ` prefix): a
    /// subscription to that very filter, or a publish to that very topic.
    Exact(String),
}

/// One allow or deny rule, bound to a connection (placeholders resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub permission: Permission,
    pub action: Action,
    pub topic: RuleTopic,
    pub qos: QosLevels,
    /// Publish only: the rule applies only to retained (`true`) or only to
    /// plain (`false`) messages; `None` applies to both. Ignored for
    /// subscribe, as in EMQX.
    pub retain: Option<bool>,
}

impl Rule {
    /// An allow rule for both actions at every QoS: what one entry of a
    /// `topics` claim grants.
    pub fn allow_all(filter: TopicFilter) -> Rule {
        Rule {
            permission: Permission::Allow,
            action: Action::All,
            topic: RuleTopic::Filter(filter),
            qos: QosLevels::ALL,
            retain: None,
        }
    }

    fn applies_to_publish(&self, topic: &str, qos: QoS, retain: bool) -> bool {
        self.action.covers_publish()
            && self.qos.contains(qos)
            && self.retain.is_none_or(|wanted| wanted == retain)
            && match &self.topic {
                RuleTopic::Filter(filter) => filter.view().matches(topic),
                RuleTopic::Exact(exact) => exact == topic,
            }
    }
}

/// What one rule does to a subscription request.
enum Reach {
    /// The rule's topics include every topic of the request.
    Whole,
    /// Some, not all.
    Part,
    None,
}

/// Ordered rules: the first that applies decides; none denies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleList(Vec<Rule>);

impl RuleList {
    pub fn new(rules: Vec<Rule>) -> RuleList {
        RuleList(rules)
    }

    pub fn rules(&self) -> &[Rule] {
        &self.0
    }

    /// Whether anything at all is allowed.
    pub(super) fn allows_something(&self) -> bool {
        self.0.iter().any(|r| r.permission == Permission::Allow)
    }

    /// `topic` must be a valid topic name.
    pub(super) fn may_publish(&self, topic: &str, qos: QoS, retain: bool) -> bool {
        self.0
            .iter()
            .find(|rule| rule.applies_to_publish(topic, qos, retain))
            .is_some_and(|rule| rule.permission == Permission::Allow)
    }

    /// See the module docs for how a set of topics is decided.
    pub(super) fn may_subscribe(&self, requested: &RequestedFilter<'_>, qos: QoS) -> bool {
        let topics = requested.topics();
        for rule in &self.0 {
            if !rule.action.covers_subscribe() || !rule.qos.contains(qos) {
                continue;
            }
            match (
                reach(&rule.topic, requested.filter, topics),
                rule.permission,
            ) {
                (Reach::Whole, Permission::Allow) => return true,
                (Reach::Whole | Reach::Part, Permission::Deny) => return false,
                (Reach::Part | Reach::None, _) => {}
            }
        }
        false
    }
}

fn reach(rule: &RuleTopic, requested: &str, topics: Filter<'_>) -> Reach {
    match rule {
        // An exact rule is about that one filter as written, not about the
        // topics it matches.
        RuleTopic::Exact(exact) if exact == requested => Reach::Whole,
        RuleTopic::Exact(_) => Reach::None,
        RuleTopic::Filter(filter) if filter.view().covers(topics) => Reach::Whole,
        RuleTopic::Filter(filter) if filter.view().intersects(topics) => Reach::Part,
        RuleTopic::Filter(_) => Reach::None,
    }
}

impl fmt::Display for RuleTopic {
    /// As a token writes it: the filter, or `eq ` and the literal topic.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleTopic::Filter(filter) => write!(f, "{filter}"),
            RuleTopic::Exact(exact) => write!(f, "eq {exact}"),
        }
    }
}

impl fmt::Display for Rule {
    /// `allow publish sensors/# qos 0,1 retain false`, the way `jwtgate
    /// check` shows effective rules.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let permission = match self.permission {
            Permission::Allow => "allow",
            Permission::Deny => "deny",
        };
        let action = match self.action {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::All => "all",
        };
        write!(f, "{permission} {action} {}", self.topic)?;
        if self.qos != QosLevels::ALL {
            let levels: Vec<String> = (0u8..=2)
                .filter(|level| self.qos.0 & (1 << level) != 0)
                .map(|level| level.to_string())
                .collect();
            write!(f, " qos {}", levels.join(","))?;
        }
        if let Some(retain) = self.retain {
            write!(f, " retain {retain}")?;
        }
        Ok(())
    }
}
