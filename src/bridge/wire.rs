//! The uplink's MQTT framing, client side, over rumqttc's packet types.
//!
//! The gateway's own codec ([`crate::gateway`]) is a server's: it refuses
//! the packets only a server sends. The bridge is a client of the central
//! broker, so it frames with rumqttc's `mqttbytes` (3.1.1 and 5), and this
//! module puts one face on both versions: the link asks for a CONNECT, a
//! SUBSCRIBE, a PUBLISH or an ack, and gets back an [`Incoming`] that says
//! what the remote sent, whatever the version.
//!
//! The remote is authenticated by TLS and trusted to speak MQTT, but its
//! bytes still come off a network: decoding runs under `catch_unwind`, and
//! a packet that does not decode ends the connection with an error, not
//! the process.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::{self as v4bytes, v4};
use rumqttc::v5::mqttbytes::{self as v5bytes, v5};

use crate::broker::{Properties, Publication};

use crate::config::{BridgeConfig, Protocol};
use crate::mqtt::QoS;

/// The largest packet accepted from the remote, when it does not say
/// otherwise: a message bigger than this from the central side is refused
/// rather than buffered.
pub(super) const MAX_INCOMING: usize = 1024 * 1024;

/// What the remote sent, in version-neutral terms.
#[derive(Debug)]
pub(super) enum Incoming {
    ConnAck(ConnAck),
    SubAck {
        pkid: u16,
        /// Per filter: the granted QoS, or why it was refused.
        granted: Vec<Result<QoS, String>>,
    },
    UnsubAck {
        pkid: u16,
    },
    PubAck {
        pkid: u16,
        /// Why the remote did not take the message (MQTT 5 reason code).
        refused: Option<String>,
    },
    Publish(InboundPublish),
    PingResp,
    Disconnect {
        reason: String,
    },
    /// A packet a broker should not send a client that only publishes at
    /// QoS 0/1 and subscribes at QoS 0/1.
    Unexpected(&'static str),
}

#[derive(Debug)]
pub(super) struct ConnAck {
    /// Why the remote refused, or `None` when it accepted.
    pub refused: Option<String>,
    /// MQTT 5: how many QoS 1/2 publications it takes unacknowledged.
    pub receive_maximum: Option<u16>,
    /// MQTT 5: the largest packet it takes.
    pub max_packet_size: Option<u32>,
    /// MQTT 5: the keep-alive it imposes.
    pub server_keep_alive: Option<u16>,
    /// The remote resumed the bridge's session: its subscriptions are
    /// still there, and so is what it queued for them meanwhile.
    pub session_present: bool,
}

#[derive(Debug)]
pub(super) struct InboundPublish {
    pub pkid: u16,
    pub topic: String,
    pub publication: Publication,
}

/// Why a packet could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(super) enum WireError {
    #[error("malformed packet from the remote: {0}")]
    Malformed(String),
    #[error("packet too large to send: {0}")]
    TooLarge(String),
}

/// The framing of one uplink connection.
pub(super) struct Codec {
    protocol: Protocol,
    /// The largest packet the remote takes (MQTT 5 CONNACK).
    max_outgoing: Option<u32>,
}

impl Codec {
    pub fn new(protocol: Protocol) -> Codec {
        Codec {
            protocol,
            max_outgoing: None,
        }
    }

    /// Takes the remote's limits from its CONNACK.
    pub fn limit_outgoing(&mut self, max_packet_size: Option<u32>) {
        self.max_outgoing = max_packet_size;
    }

    /// CONNECT, keeping the session at the remote unless the bridge's
    /// `clean_start`: the bridge's own queue carries what goes out, but
    /// what comes in (commands for the site) can only wait at the remote,
    /// in the bridge's session there, while the link or the gateway is
    /// down. MQTT 5 names how long the remote keeps it; a 3.1.1 remote
    /// applies its own setting.
    pub fn connect(
        &self,
        config: &BridgeConfig,
        password: Option<String>,
        out: &mut BytesMut,
    ) -> Result<(), WireError> {
        let keep_alive = u16::try_from(config.keep_alive.as_secs()).unwrap_or(u16::MAX);
        // MQTT 3.1.1 has no password without a user name; the client id
        // stands in when only a password or token is configured.
        let login = |password: Option<String>| {
            let username = config.username.clone();
            match (username, password) {
                (None, None) => None,
                (username, password) => Some((
                    username.unwrap_or_else(|| config.client_id.clone()),
                    password.unwrap_or_default(),
                )),
            }
        };
        let written = match self.protocol {
            Protocol::V4 => {
                let mut connect = v4::Connect::new(config.client_id.clone());
                connect.keep_alive = keep_alive;
                connect.clean_session = config.clean_start;
                connect.login =
                    login(password).map(|(username, password)| v4::Login { username, password });
                v4::Packet::Connect(connect)
                    .write(out, usize::MAX)
                    .map_err(v4_error)
            }
            Protocol::V5 => {
                let connect = v5::Connect {
                    keep_alive,
                    client_id: config.client_id.clone(),
                    clean_start: config.clean_start,
                    properties: Some(v5::ConnectProperties {
                        // Absent is zero: the session ends with the link.
                        session_expiry_interval: (!config.clean_start)
                            .then_some(config.session_expiry_secs),
                        receive_maximum: Some(RECEIVE_MAXIMUM),
                        max_packet_size: u32::try_from(MAX_INCOMING).ok(),
                        topic_alias_max: None,
                        request_response_info: None,
                        request_problem_info: None,
                        user_properties: Vec::new(),
                        authentication_method: None,
                        authentication_data: None,
                    }),
                };
                let login =
                    login(password).map(|(username, password)| v5::Login { username, password });
                v5::Packet::Connect(connect, None, login)
                    .write(out, None)
                    .map_err(v5_error)
            }
        };
        written.map(drop)
    }

    /// SUBSCRIBE to `filters` (filter, QoS), with MQTT 5's no-local so
    /// the remote never echoes the bridge's own forwards back, and retained
    /// messages sent only for a subscription the session did not have: a
    /// resumed session subscribed again after a rule change does not get
    /// the retained messages of its unchanged rules once more.
    pub fn subscribe(
        &self,
        pkid: u16,
        filters: &[(String, QoS)],
        out: &mut BytesMut,
    ) -> Result<(), WireError> {
        match self.protocol {
            Protocol::V4 => {
                let subscribe = v4::Subscribe {
                    pkid,
                    filters: filters
                        .iter()
                        .map(|(path, qos)| v4::SubscribeFilter {
                            path: path.clone(),
                            qos: (*qos).into(),
                        })
                        .collect(),
                };
                v4::Packet::Subscribe(subscribe)
                    .write(out, usize::MAX)
                    .map_err(v4_error)?;
            }
            Protocol::V5 => {
                let subscribe = v5::Subscribe {
                    pkid,
                    filters: filters
                        .iter()
                        .map(|(path, qos)| v5::Filter {
                            path: path.clone(),
                            qos: (*qos).into(),
                            nolocal: true,
                            preserve_retain: true,
                            retain_forward_rule: v5::RetainForwardRule::OnNewSubscribe,
                        })
                        .collect(),
                    properties: None,
                };
                v5::Packet::Subscribe(subscribe)
                    .write(out, None)
                    .map_err(v5_error)?;
            }
        }
        Ok(())
    }

    /// UNSUBSCRIBE from `filters`: rules taken out of the configuration
    /// while the remote kept the session.
    pub fn unsubscribe(
        &self,
        pkid: u16,
        filters: &[String],
        out: &mut BytesMut,
    ) -> Result<(), WireError> {
        match self.protocol {
            Protocol::V4 => v4::Packet::Unsubscribe(v4::Unsubscribe {
                pkid,
                topics: filters.to_vec(),
            })
            .write(out, usize::MAX)
            .map_err(v4_error)?,
            Protocol::V5 => v5::Packet::Unsubscribe(v5::Unsubscribe {
                pkid,
                filters: filters.to_vec(),
                properties: None,
            })
            .write(out, None)
            .map_err(v5_error)?,
        };
        Ok(())
    }

    /// PUBLISH of `publication` (already on its remote topic) at `qos`.
    pub fn publish(
        &self,
        pkid: u16,
        dup: bool,
        qos: QoS,
        publication: &Publication,
        out: &mut BytesMut,
    ) -> Result<(), WireError> {
        let pkid = if qos == QoS::AtMostOnce { 0 } else { pkid };
        match self.protocol {
            Protocol::V4 => {
                let publish = v4::Publish {
                    dup,
                    qos: qos.into(),
                    retain: publication.retain,
                    topic: publication.topic.clone(),
                    pkid,
                    payload: publication.payload.clone(),
                };
                v4::Packet::Publish(publish)
                    .write(out, usize::MAX)
                    .map_err(v4_error)?;
            }
            Protocol::V5 => {
                let p = &publication.properties;
                let expiry = publication
                    .expiry
                    .map(|left| u32::try_from(left.as_secs().max(1)).unwrap_or(u32::MAX));
                let properties =
                    (!p.is_empty() || expiry.is_some()).then(|| v5::PublishProperties {
                        payload_format_indicator: p.payload_format_indicator,
                        message_expiry_interval: expiry,
                        topic_alias: None,
                        response_topic: p.response_topic.clone(),
                        correlation_data: p.correlation_data.clone(),
                        user_properties: p.user_properties.clone(),
                        subscription_identifiers: Vec::new(),
                        content_type: p.content_type.clone(),
                    });
                let publish = v5::Publish {
                    dup,
                    qos: qos.into(),
                    retain: publication.retain,
                    topic: Bytes::copy_from_slice(publication.topic.as_bytes()),
                    pkid,
                    payload: publication.payload.clone(),
                    properties,
                };
                v5::Packet::Publish(publish)
                    .write(out, self.max_outgoing)
                    .map_err(v5_error)?;
            }
        }
        Ok(())
    }

    pub fn puback(&self, pkid: u16, out: &mut BytesMut) -> Result<(), WireError> {
        match self.protocol {
            Protocol::V4 => v4::Packet::PubAck(v4::PubAck { pkid })
                .write(out, usize::MAX)
                .map_err(v4_error)?,
            Protocol::V5 => v5::Packet::PubAck(v5::PubAck {
                pkid,
                reason: v5::PubAckReason::Success,
                properties: None,
            })
            .write(out, None)
            .map_err(v5_error)?,
        };
        Ok(())
    }

    pub fn pingreq(&self, out: &mut BytesMut) -> Result<(), WireError> {
        match self.protocol {
            Protocol::V4 => v4::Packet::PingReq
                .write(out, usize::MAX)
                .map_err(v4_error)?,
            Protocol::V5 => v5::Packet::PingReq(v5::PingReq)
                .write(out, None)
                .map_err(v5_error)?,
        };
        Ok(())
    }

    pub fn disconnect(&self, out: &mut BytesMut) -> Result<(), WireError> {
        match self.protocol {
            Protocol::V4 => v4::Packet::Disconnect
                .write(out, usize::MAX)
                .map_err(v4_error)?,
            Protocol::V5 => v5::Packet::Disconnect(v5::Disconnect::new(
                v5::DisconnectReasonCode::NormalDisconnection,
            ))
            .write(out, None)
            .map_err(v5_error)?,
        };
        Ok(())
    }

    /// The next whole packet in `buf`, if there is one.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Incoming>, WireError> {
        if buf.is_empty() {
            return Ok(None);
        }
        let decoded = catch_unwind(AssertUnwindSafe(|| match self.protocol {
            Protocol::V4 => match v4::Packet::read(buf, MAX_INCOMING) {
                Ok(packet) => Ok(Some(incoming_v4(packet))),
                Err(v4bytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(err) => Err(WireError::Malformed(format!("{err:?}"))),
            },
            Protocol::V5 => match v5::Packet::read(buf, u32::try_from(MAX_INCOMING).ok()) {
                Ok(packet) => Ok(Some(incoming_v5(packet))),
                Err(v5bytes::Error::InsufficientBytes(_)) => Ok(None),
                Err(err) => Err(WireError::Malformed(format!("{err:?}"))),
            },
        }));
        decoded.unwrap_or_else(|_| Err(WireError::Malformed("the decoder panicked".to_owned())))
    }
}

/// In-flight QoS 1 messages the bridge accepts from the remote at once.
const RECEIVE_MAXIMUM: u16 = 256;

fn v4_error(err: v4bytes::Error) -> WireError {
    WireError::TooLarge(format!("{err:?}"))
}

fn v5_error(err: v5bytes::Error) -> WireError {
    WireError::TooLarge(format!("{err:?}"))
}

fn incoming_v4(packet: v4::Packet) -> Incoming {
    match packet {
        v4::Packet::ConnAck(ack) => Incoming::ConnAck(ConnAck {
            refused: (ack.code != v4::ConnectReturnCode::Success)
                .then(|| format!("{:?}", ack.code)),
            receive_maximum: None,
            max_packet_size: None,
            server_keep_alive: None,
            session_present: ack.session_present,
        }),
        v4::Packet::SubAck(ack) => Incoming::SubAck {
            pkid: ack.pkid,
            granted: ack
                .return_codes
                .into_iter()
                .map(|code| match code {
                    v4::SubscribeReasonCode::Success(qos) => Ok(QoS::from(qos)),
                    v4::SubscribeReasonCode::Failure => Err("Failure".to_owned()),
                })
                .collect(),
        },
        v4::Packet::PubAck(ack) => Incoming::PubAck {
            pkid: ack.pkid,
            refused: None,
        },
        v4::Packet::Publish(publish) => Incoming::Publish(InboundPublish {
            pkid: publish.pkid,
            topic: publish.topic.clone(),
            publication: Publication {
                topic: publish.topic,
                payload: publish.payload,
                qos: QoS::from(publish.qos),
                retain: publish.retain,
                properties: Properties::default(),
                expiry: None,
            },
        }),
        v4::Packet::PingResp => Incoming::PingResp,
        v4::Packet::Disconnect => Incoming::Disconnect {
            reason: "DISCONNECT".to_owned(),
        },
        v4::Packet::PubRec(_) => Incoming::Unexpected("PUBREC"),
        v4::Packet::PubRel(_) => Incoming::Unexpected("PUBREL"),
        v4::Packet::PubComp(_) => Incoming::Unexpected("PUBCOMP"),
        v4::Packet::UnsubAck(ack) => Incoming::UnsubAck { pkid: ack.pkid },
        v4::Packet::Connect(_)
        | v4::Packet::Subscribe(_)
        | v4::Packet::Unsubscribe(_)
        | v4::Packet::PingReq => Incoming::Unexpected("a client's packet"),
    }
}

fn incoming_v5(packet: v5::Packet) -> Incoming {
    match packet {
        v5::Packet::ConnAck(ack) => {
            let properties = ack.properties;
            let mut refused =
                (ack.code != v5::ConnectReturnCode::Success).then(|| format!("{:?}", ack.code));
            let reason = properties.as_ref().and_then(|p| p.reason_string.as_ref());
            if let (Some(refused), Some(reason)) = (&mut refused, reason) {
                refused.push_str(&format!(" ({reason})"));
            }
            Incoming::ConnAck(ConnAck {
                refused,
                receive_maximum: properties.as_ref().and_then(|p| p.receive_max),
                max_packet_size: properties.as_ref().and_then(|p| p.max_packet_size),
                server_keep_alive: properties.as_ref().and_then(|p| p.server_keep_alive),
                session_present: ack.session_present,
            })
        }
        v5::Packet::SubAck(ack) => Incoming::SubAck {
            pkid: ack.pkid,
            granted: ack
                .return_codes
                .into_iter()
                .map(|code| match code {
                    v5::SubscribeReasonCode::Success(qos) => Ok(QoS::from(qos)),
                    other => Err(format!("{other:?}")),
                })
                .collect(),
        },
        v5::Packet::PubAck(ack) => Incoming::PubAck {
            pkid: ack.pkid,
            refused: match ack.reason {
                v5::PubAckReason::Success | v5::PubAckReason::NoMatchingSubscribers => None,
                other => Some(format!("{other:?}")),
            },
        },
        v5::Packet::Publish(publish) => {
            let topic = String::from_utf8_lossy(&publish.topic).into_owned();
            let properties = publish.properties.unwrap_or_default();
            Incoming::Publish(InboundPublish {
                pkid: publish.pkid,
                topic: topic.clone(),
                publication: Publication {
                    topic,
                    payload: publish.payload,
                    qos: QoS::from(publish.qos),
                    retain: publish.retain,
                    properties: Properties {
                        payload_format_indicator: properties.payload_format_indicator,
                        content_type: properties.content_type,
                        response_topic: properties.response_topic,
                        correlation_data: properties.correlation_data,
                        user_properties: properties.user_properties,
                    },
                    expiry: properties
                        .message_expiry_interval
                        .map(|secs| Duration::from_secs(u64::from(secs))),
                },
            })
        }
        v5::Packet::PingResp(_) => Incoming::PingResp,
        v5::Packet::Disconnect(disconnect) => Incoming::Disconnect {
            reason: format!("{:?}", disconnect.reason_code),
        },
        v5::Packet::PubRec(_) => Incoming::Unexpected("PUBREC"),
        v5::Packet::PubRel(_) => Incoming::Unexpected("PUBREL"),
        v5::Packet::PubComp(_) => Incoming::Unexpected("PUBCOMP"),
        v5::Packet::UnsubAck(ack) => Incoming::UnsubAck { pkid: ack.pkid },
        v5::Packet::Auth(_) => Incoming::Unexpected("AUTH"),
        v5::Packet::Connect(..)
        | v5::Packet::Subscribe(_)
        | v5::Packet::Unsubscribe(_)
        | v5::Packet::PingReq(_) => Incoming::Unexpected("a client's packet"),
    }
}
