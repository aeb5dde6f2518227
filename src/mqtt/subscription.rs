//! What a subscription asks for beside its filter.

use super::QoS;

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

/// When retained messages are sent for a new subscription (MQTT 5
/// §3.8.3.1; MQTT 3.1.1 always sends them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainHandling {
    OnSubscribe,
    OnNewSubscription,
    Never,
}
