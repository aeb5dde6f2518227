//! The counters' values at one moment, for what reads them other than
//! Prometheus: `jwtgate status` and the `$SYS` figures.

use super::Metrics;

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

impl Metrics {
    /// The counters now. Each is read on its own, so two read during a
    /// burst may be a few events apart.
    pub fn figures(&self) -> Figures {
        // A gauge counts open connections and never goes below zero.
        let gauge = |g: &prometheus_client::metrics::gauge::Gauge| g.get().max(0).unsigned_abs();
        Figures {
            connections_by_version: self.connections_by_version.each_ref().map(gauge),
            connections_by_transport: self.connections_by_transport.each_ref().map(gauge),
            received: self.received_by_qos.iter().map(|c| c.get()).sum(),
            delivered: self.delivered_by_qos.iter().map(|c| c.get()).sum(),
            bytes_received: self.bytes_received.get(),
            bytes_sent: self.bytes_sent.get(),
        }
    }
}
