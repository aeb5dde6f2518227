//! The one quality-of-service type, and its conversions to and from the
//! codecs' own (rumqttd's for devices, rumqttc's for the uplink).

use std::fmt;

/// MQTT quality of service, ordered so that `min` gives the delivered QoS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// Every level, lowest first.
    pub const ALL: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

    /// The level as MQTT writes it (0, 1 or 2).
    pub fn level(self) -> u8 {
        self as u8
    }
}

/// A number that is not a QoS level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not a QoS level (0, 1 or 2)")]
pub struct InvalidQoS(pub i64);

impl TryFrom<i64> for QoS {
    type Error = InvalidQoS;

    fn try_from(level: i64) -> Result<Self, Self::Error> {
        match level {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            other => Err(InvalidQoS(other)),
        }
    }
}

impl fmt::Display for QoS {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.level())
    }
}

/// The three codecs' QoS enums have the same three levels; one macro keeps
/// the six conversions from drifting apart.
macro_rules! same_levels {
    ($($other:path),+) => {$(
        impl From<$other> for QoS {
            fn from(qos: $other) -> Self {
                use $other as Other;
                match qos {
                    Other::AtMostOnce => QoS::AtMostOnce,
                    Other::AtLeastOnce => QoS::AtLeastOnce,
                    Other::ExactlyOnce => QoS::ExactlyOnce,
                }
            }
        }

        impl From<QoS> for $other {
            fn from(qos: QoS) -> Self {
                use $other as Other;
                match qos {
                    QoS::AtMostOnce => Other::AtMostOnce,
                    QoS::AtLeastOnce => Other::AtLeastOnce,
                    QoS::ExactlyOnce => Other::ExactlyOnce,
                }
            }
        }
    )+};
}

same_levels!(
    rumqttd::protocol::QoS,
    rumqttc::mqttbytes::QoS,
    rumqttc::v5::mqttbytes::QoS
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_keep_the_level() {
        for qos in QoS::ALL {
            assert_eq!(rumqttd::protocol::QoS::from(qos) as u8, qos.level());
            assert_eq!(rumqttc::mqttbytes::QoS::from(qos) as u8, qos.level());
            assert_eq!(rumqttc::v5::mqttbytes::QoS::from(qos) as u8, qos.level());
            assert_eq!(QoS::from(rumqttd::protocol::QoS::from(qos)), qos);
            assert_eq!(QoS::from(rumqttc::mqttbytes::QoS::from(qos)), qos);
            assert_eq!(QoS::from(rumqttc::v5::mqttbytes::QoS::from(qos)), qos);
            assert_eq!(QoS::try_from(i64::from(qos.level())), Ok(qos));
        }
        assert_eq!(QoS::try_from(3), Err(InvalidQoS(3)));
        assert_eq!(QoS::ExactlyOnce.min(QoS::AtLeastOnce), QoS::AtLeastOnce);
    }
}
