//! Packet identifiers: never zero on the wire (MQTT §2.2.1), so never zero
//! in a value of this type.

use std::fmt;
use std::num::NonZeroU16;

/// The identifier of a QoS 1 or 2 exchange, a SUBSCRIBE or an UNSUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    pub const FIRST: PacketId = PacketId(NonZeroU16::MIN);

    /// The identifier a packet carried; `None` for the zero MQTT forbids.
    pub fn new(id: u16) -> Option<PacketId> {
        NonZeroU16::new(id).map(PacketId)
    }

    pub fn get(self) -> u16 {
        self.0.get()
    }

    /// The identifier after this one, wrapping from 65535 to 1.
    pub fn next(self) -> PacketId {
        PacketId(self.0.checked_add(1).unwrap_or(NonZeroU16::MIN))
    }
}

impl From<PacketId> for u16 {
    fn from(id: PacketId) -> u16 {
        id.get()
    }
}

impl fmt::Display for PacketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_not_an_identifier_and_the_successor_wraps_past_it() {
        assert_eq!(PacketId::new(0), None);
        let last = PacketId::new(u16::MAX).map(PacketId::next);
        assert_eq!(last, Some(PacketId::FIRST));
        assert_eq!(PacketId::new(7).map(|id| id.next().get()), Some(8));
    }
}
