//! Topic alias tables (MQTT 5 §3.3.2.3.4): those the gateway sets
//! towards its client.

use std::collections::HashMap;
use std::sync::Arc;

use crate::broker::Budget;
use crate::broker::budget::{Account, Charge, Kind as Held};

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
pub(super) const ALIAS_OVERHEAD: usize = 48;

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
