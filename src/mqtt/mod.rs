//! The ground floor: the MQTT words every layer above shares.
//!
//! One [`QoS`], one topic name and filter type with the limits a client
//! cannot exceed ([`topic`]), one protocol [`Version`] and [`Transport`],
//! subscription options and packet identifiers. This module imports nothing else from the crate,
//! so `acl`, `broker`, `config`, `storage`, `bridge` and `gateway` can all
//! speak these words without importing one another.

mod packet_id;
mod qos;
mod subscription;
pub mod topic;
mod transport;
mod version;

pub use packet_id::PacketId;
pub use qos::{InvalidQoS, QoS};
pub use subscription::{RetainHandling, SubscriptionOptions};
pub use topic::{
    FilterError, LimitError, RequestedFilter, TopicError, TopicFilter, TopicLimits,
    is_server_topic, validate_topic_name,
};
pub use transport::Transport;
pub use version::Version;
