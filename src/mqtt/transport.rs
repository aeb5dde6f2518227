//! What carries a client's MQTT bytes to the gateway.

use std::fmt;

/// The two ways in, both under TLS: MQTT straight over it, or inside
/// WebSocket binary frames (MQTT §6), for browsers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Tls,
    Wss,
}

impl Transport {
    pub const ALL: [Transport; 2] = [Transport::Tls, Transport::Wss];

    /// The name in logs (`transport=`) and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::Tls => "tls",
            Transport::Wss => "wss",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
