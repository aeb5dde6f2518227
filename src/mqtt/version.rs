//! The MQTT protocol versions jwtgate speaks.

/// The MQTT protocol a client speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1 (`MQIsdp`, level 3).
    V3_1,
    /// MQTT 3.1.1 (`MQTT`, level 4).
    V3_1_1,
    /// MQTT 5 (`MQTT`, level 5).
    V5,
}

impl Version {
    pub fn is_v5(self) -> bool {
        self == Version::V5
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V3_1 => "3.1",
            Version::V3_1_1 => "3.1.1",
            Version::V5 => "5",
        }
    }
}
