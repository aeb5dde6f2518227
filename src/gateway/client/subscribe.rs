//! SUBSCRIBE and UNSUBSCRIBE: each filter vetted and authorized on its
//! own, and answered in one SUBACK or UNSUBACK. For a session its client
//! asked to keep, the answer waits until the changed subscriptions are
//! written down, like a PUBACK for a message that must be: a SUBACK a
//! crash could take back would leave a device waiting for messages that
//! never come.

use std::collections::HashMap;

use rumqttd::protocol::{
    Filter, Packet, RetainForwardRule, SubAck, Subscribe, SubscribeProperties, SubscribeReasonCode,
    UnsubAck, UnsubAckReason, Unsubscribe,
};
use tracing::info;

use crate::broker::SubscribeError;
use crate::gateway::quiet::Kind;
use crate::gateway::wire::Outbox;
use crate::mqtt::{QoS, RetainHandling, SubscriptionOptions};

use super::ending::{Ending, ProtocolViolation};
use super::state::Client;

impl Client {
    /// Answers a SUBSCRIBE filter by filter: refused where the token does
    /// not cover it, subscribed in the routing core otherwise.
    pub(super) fn subscribe(
        &mut self,
        out: &mut Outbox,
        subscribe: Subscribe,
        properties: Option<SubscribeProperties>,
    ) -> Option<Ending> {
        let id = properties.as_ref().and_then(|p| p.id);
        if id == Some(0) {
            return Some(Ending::Protocol(ProtocolViolation::SubscriptionIdZero));
        }
        let property_bytes: usize = properties.as_ref().map_or(0, |p| {
            p.user_properties
                .iter()
                .map(|(k, v)| 4 + k.len() + v.len())
                .sum()
        });
        // A filter repeated in one SUBSCRIBE is one subscription (the last
        // options win, MQTT 5 §3.8.4): it is made, charged and replayed
        // once, by its last repetition; the others are answered as they
        // would have been.
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(subscribe.filters.len());
        for (i, filter) in subscribe.filters.iter().enumerate() {
            last.insert(filter.path.as_str(), i);
        }
        let mut return_codes = Vec::with_capacity(subscribe.filters.len());
        for (i, filter) in subscribe.filters.iter().enumerate() {
            let commit = last.get(filter.path.as_str()) == Some(&i);
            let code = if property_bytes > self.limits.max_property_bytes {
                SubscribeReasonCode::QuotaExceeded
            } else {
                match self.subscribe_one(filter, id.and_then(|id| u32::try_from(id).ok()), commit) {
                    Ok(code) => code,
                    Err(ending) => return Some(ending),
                }
            };
            if !matches!(code, SubscribeReasonCode::Success(_)) {
                self.metrics.subscription_refused();
                self.log_limited(Kind::SubscriptionRefused, |client_id| {
                    info!(client_id, filter = filter.path, reason = ?code, "subscription refused");
                });
            }
            return_codes.push(code);
        }
        let suback = Packet::SubAck(
            SubAck {
                pkid: subscribe.pkid,
                return_codes,
            },
            None,
        );
        self.answer_when_kept(suback, out);
        None
    }

    /// Sends `ack` once the session's subscriptions are written down (at
    /// once if they need not be), after the acks owed before it.
    fn answer_when_kept(&mut self, ack: Packet, out: &mut Outbox) {
        let kept = self.broker().keep_subscriptions(&self.session);
        self.owed.push(kept.into_iter().collect(), Some(ack), out);
    }

    /// Vets one filter and, with `commit`, subscribes to it.
    fn subscribe_one(
        &mut self,
        filter: &Filter,
        id: Option<u32>,
        commit: bool,
    ) -> Result<SubscribeReasonCode, Ending> {
        let Ok(requested) = self.limits.topics.requested(&filter.path) else {
            return Ok(SubscribeReasonCode::TopicFilterInvalid);
        };
        if requested.group.is_some() && filter.nolocal {
            return Err(Ending::Protocol(ProtocolViolation::NoLocalOnShared));
        }
        let qos = QoS::from(filter.qos);
        if !self.id.grants.may_subscribe(&filter.path, qos) {
            return Ok(SubscribeReasonCode::NotAuthorized);
        }
        let options = SubscriptionOptions {
            qos,
            no_local: filter.nolocal,
            retain_as_published: filter.preserve_retain,
            id,
        };
        let retain_handling = match filter.retain_forward_rule {
            RetainForwardRule::OnEverySubscribe => RetainHandling::OnSubscribe,
            RetainForwardRule::OnNewSubscribe => RetainHandling::OnNewSubscription,
            RetainForwardRule::Never => RetainHandling::Never,
        };
        if !commit {
            return Ok(SubscribeReasonCode::Success(qos.into()));
        }
        Ok(
            match self
                .broker()
                .subscribe(&self.session, &filter.path, options, retain_handling)
            {
                Ok(_) => SubscribeReasonCode::Success(qos.into()),
                Err(
                    SubscribeError::TooMany(_)
                    | SubscribeError::TooLarge(_)
                    | SubscribeError::Quota(_),
                ) => SubscribeReasonCode::QuotaExceeded,
                Err(SubscribeError::Invalid(_)) => SubscribeReasonCode::TopicFilterInvalid,
            },
        )
    }

    pub(super) fn unsubscribe(&mut self, out: &mut Outbox, unsubscribe: Unsubscribe) {
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                if self.limits.topics.requested(filter).is_err() {
                    UnsubAckReason::TopicFilterInvalid
                } else if self.broker().unsubscribe(&self.session, filter) {
                    UnsubAckReason::Success
                } else {
                    UnsubAckReason::NoSubscriptionExisted
                }
            })
            .collect();
        let unsuback = Packet::UnsubAck(
            UnsubAck {
                pkid: unsubscribe.pkid,
                reasons,
            },
            None,
        );
        self.answer_when_kept(unsuback, out);
    }
}
