//! Topic alias tables (MQTT 5 §3.3.2.3.4): those the client sets, read
//! on each of its PUBLISHes, and those the gateway sets towards it.

use std::collections::HashMap;
use std::sync::Arc;

use crate::broker::Budget;
use crate::broker::budget::{Account, Charge, Kind as Held};
use crate::mqtt::validate_topic_name;

use super::ending::ProtocolViolation;

/// The topic aliases the client sets: alias `n` is at `n - 1`. What they
/// hold is booked to the ledger and bounded per connection by
/// `[limits] max_property_bytes`, as a client could otherwise park any
/// number of long topics here.
#[derive(Debug)]
pub(super) struct ReceivedAliases {
    topics: Vec<Option<Box<str>>>,
    bytes: usize,
    charge: Option<Charge>,
    /// Topic aliases granted in CONNACK.
    max: u16,
    max_bytes: usize,
    budget: Arc<Budget>,
}

impl ReceivedAliases {
    pub(super) fn new(max: u16, max_bytes: usize, budget: Arc<Budget>) -> ReceivedAliases {
        ReceivedAliases {
            topics: Vec::new(),
            bytes: 0,
            charge: None,
            max,
            max_bytes,
            budget,
        }
    }

    /// The topic of a PUBLISH whose topic field is `raw`, through the
    /// topic alias it carries, if any: an empty topic is looked up, a
    /// topic with an alias (re)sets it.
    pub(super) fn resolve(
        &mut self,
        raw: &[u8],
        alias: Option<u16>,
    ) -> Result<String, ProtocolViolation> {
        let topic = std::str::from_utf8(raw).map_err(|_| ProtocolViolation::TopicNotUtf8)?;
        let Some(alias) = alias else {
            validate_topic_name(topic).map_err(ProtocolViolation::of_topic)?;
            return Ok(topic.to_owned());
        };
        if alias == 0 || alias > self.max {
            return Err(ProtocolViolation::TopicAliasInvalid {
                alias,
                max: self.max,
            });
        }
        let slot = usize::from(alias) - 1;
        if topic.is_empty() {
            return self
                .topics
                .get(slot)
                .and_then(|t| t.as_deref())
                .map(str::to_owned)
                .ok_or(ProtocolViolation::TopicAliasUnset(alias));
        }
        validate_topic_name(topic).map_err(ProtocolViolation::of_topic)?;
        if self.topics.len() <= slot {
            self.topics.resize(slot + 1, None);
        }
        let old = self
            .topics
            .get_mut(slot)
            .and_then(|t| t.replace(topic.into()));
        self.bytes = self.bytes + topic.len() - old.map_or(0, |t| t.len());
        // Bounded per connection just below; booked so the ledger sees it.
        self.charge = Some(self.budget.charge_as(
            Held::Aliases,
            self.bytes + self.topics.len() * ALIAS_OVERHEAD,
        ));
        if self.bytes > self.max_bytes {
            return Err(ProtocolViolation::TopicAliasesTooLarge);
        }
        Ok(topic.to_owned())
    }
}

/// A topic alias the gateway uses for one PUBLISH to its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SentAlias {
    /// Sent with the topic, which it stands for from now on.
    New(u16),
    /// Sent instead of the topic.
    Known(u16),
}

/// The topic aliases the gateway uses towards one client (MQTT 5
/// §3.3.2.3.4), when the client allows some: the first topics it is sent
/// get one each, for the life of the connection, and later PUBLISHes on
/// them carry the alias and an empty topic. A device with a handful of
/// topics then receives each topic name once.
///
/// The topics held are charged to the ledger and bounded in bytes like the
/// client's own aliases (`[limits] max_property_bytes`): past either, a
/// topic is simply sent without an alias.
#[derive(Debug)]
pub(super) struct SentAliases {
    max: u16,
    by_topic: HashMap<Box<str>, (u16, Charge)>,
    bytes: usize,
    max_bytes: usize,
    budget: Arc<Budget>,
    account: Option<Arc<Account>>,
}

/// What one alias entry costs beside its topic: the map slot and the box.
const ALIAS_OVERHEAD: usize = 48;

impl SentAliases {
    pub(super) fn new(
        max: u16,
        max_bytes: usize,
        budget: Arc<Budget>,
        account: Option<Arc<Account>>,
    ) -> SentAliases {
        SentAliases {
            max,
            by_topic: HashMap::new(),
            bytes: 0,
            max_bytes,
            budget,
            account,
        }
    }

    /// The alias to use for `topic`, if any.
    pub(super) fn lookup(&self, topic: &str) -> Option<SentAlias> {
        if let Some(&(alias, _)) = self.by_topic.get(topic) {
            return Some(SentAlias::Known(alias));
        }
        let next = u16::try_from(self.by_topic.len() + 1).ok()?;
        (next <= self.max).then_some(SentAlias::New(next))
    }

    /// A PUBLISH is about to tell the client that `alias` stands for
    /// `topic`, if the aliases may hold it: whether they do.
    pub(super) fn learned(&mut self, topic: &str, alias: u16) -> bool {
        let cost = topic.len() + ALIAS_OVERHEAD;
        if self.bytes + cost > self.max_bytes {
            return false;
        }
        let charge = match &self.account {
            Some(account) => {
                match self
                    .budget
                    .try_charge(account, Held::Aliases, cost, cost, usize::MAX)
                {
                    Ok(charge) => charge,
                    Err(_) => return false,
                }
            }
            None => self.budget.charge_as(Held::Aliases, cost),
        };
        self.bytes += cost;
        self.by_topic.insert(topic.into(), (alias, charge));
        true
    }
}
