//! The counters' values at one moment, for what reads them other than
//! Prometheus: `jwtgate status` and the `$SYS` figures.

/// What the event counters hold now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    /// Authenticated connections open, for MQTT 3.1, 3.1.1 and 5.
    pub connections_by_version: [u64; 3],
    /// The same connections by transport: TLS, then secure WebSockets.
    pub connections_by_transport: [u64; 2],
    /// PUBLISH packets taken from clients, every QoS.
    pub received: u64,
    /// PUBLISH packets sent to clients, every QoS.
    pub delivered: u64,
    pub bytes_received: u64,
    pub bytes_sent: u64,
}

impl Figures {
    pub fn connections(&self) -> u64 {
        self.connections_by_version.iter().sum()
    }
}
