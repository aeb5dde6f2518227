//! A bare MQTT 5 session for packets rumqttc will not send: hand-encoded
//! packets ([`v5`]) over the harness's raw TLS socket ([`Raw5`]), and a
//! decoder for what the server answers. It covers what a client library
//! hides or lacks: topic aliases chosen by the test, properties at their
//! limits, and MQTT 5 enhanced authentication (authentication method and
//! data in CONNECT, and AUTH), which neither rumqttc nor paho-mqtt for
//! Python can send.

use super::{RawClient, Read, TestGateway, WAIT};

/// An MQTT 5 session over the harness's raw TLS socket, for packets rumqttc
/// will not send.
pub struct Raw5 {
    raw: RawClient,
}

impl Raw5 {
    /// Sends `connect` and reads the CONNACK, asserting success.
    pub async fn connect(gw: &TestGateway, connect: v5::Connect) -> (Raw5, v5::ConnAck) {
        let (raw, ack) = Raw5::try_connect(gw, connect).await;
        assert_eq!(ack.reason, 0, "CONNACK reason: {ack:?}");
        (raw, ack)
    }

    /// Sends `connect` and reads the CONNACK, whatever its reason.
    pub async fn try_connect(gw: &TestGateway, connect: v5::Connect) -> (Raw5, v5::ConnAck) {
        Raw5::over(gw.raw().await, connect).await
    }

    /// Sends `connect` over `raw` (a connection to any gateway, the
    /// served binary's included) and reads the CONNACK, whatever its
    /// reason.
    pub async fn over(raw: RawClient, connect: v5::Connect) -> (Raw5, v5::ConnAck) {
        let mut raw = Raw5 { raw };
        raw.send(&connect.encode()).await;
        match raw.next().await {
            Some(v5::Packet::ConnAck(ack)) => (raw, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// The next packet, `None` once the server closed the connection or
    /// `window` passed first (`Err(())`).
    pub async fn next_within(
        &mut self,
        window: std::time::Duration,
    ) -> Result<Option<v5::Packet>, ()> {
        match self.raw.read_within(window).await {
            Some(Read::Packet(frame)) => Ok(Some(v5::parse(&frame))),
            Some(Read::Closed(_)) => Ok(None),
            None => Err(()),
        }
    }

    /// Re-authenticates with `token` (AUTH 0x19, method `JWT`) and returns
    /// the answer: AUTH success, or the DISCONNECT that refused it (`None`
    /// if the server just closed).
    pub async fn reauthenticate(&mut self, token: &str) -> Option<v5::Packet> {
        self.send(&v5::reauth(token)).await;
        loop {
            match self.next().await {
                Some(v5::Packet::Publish(p)) if p.qos == 1 => {
                    self.send(&v5::puback(p.pkid)).await;
                }
                Some(v5::Packet::Publish(_)) => {}
                other => return other,
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.raw.send_ok(bytes).await;
    }

    /// The next packet, `None` once the server closed the connection;
    /// panics after [`WAIT`].
    pub async fn next(&mut self) -> Option<v5::Packet> {
        match self.raw.read_within(WAIT).await {
            Some(Read::Packet(frame)) => Some(v5::parse(&frame)),
            Some(Read::Closed(_)) => None,
            None => panic!("no packet and no close within {WAIT:?}"),
        }
    }

    /// Reads the next packet, which must be a PUBACK: (packet id, reason).
    pub async fn puback(&mut self) -> (u16, u8) {
        match self.next().await {
            Some(v5::Packet::PubAck { pkid, reason }) => (pkid, reason),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }

    /// Subscribes to `filters` (filter, subscription options byte) and
    /// returns the SUBACK reason codes.
    pub async fn subscribe(&mut self, pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
        self.send(&v5::subscribe(pkid, filters, &v5::Props::new()))
            .await;
        match self.next().await {
            Some(v5::Packet::SubAck { pkid: acked, codes }) if acked == pkid => codes,
            other => panic!("expected SUBACK {pkid}, got {other:?}"),
        }
    }

    /// The next packet, which must be a PUBLISH (QoS 1 ones are acked).
    pub async fn expect_publish(&mut self) -> v5::Publish {
        match self.next().await {
            Some(v5::Packet::Publish(p)) => {
                if p.qos == 1 {
                    self.send(&v5::puback(p.pkid)).await;
                }
                p
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Reads until the server closes the connection; returns the reason of
    /// the DISCONNECT it sent first, if any. Panics after [`WAIT`].
    pub async fn closed(&mut self) -> Option<u8> {
        let mut reason = None;
        loop {
            match self.next().await {
                None => return reason,
                Some(v5::Packet::Disconnect { reason: r, .. }) => reason = Some(r),
                Some(_) => {}
            }
        }
    }
}

/// Hand-encoded MQTT 5 packets (§2 and §3) and a decoder for what the
/// server sends.
pub mod v5 {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REASON_STRING: u8 = 0x1F;

    use super::super::mqtt::{frame, remaining_length as varint, string};

    /// Properties to send, in the order they are added (§2.2.2).
    #[derive(Debug, Clone, Default)]
    pub struct Props(Vec<u8>);

    impl Props {
        pub fn new() -> Props {
            Props::default()
        }

        /// A one-byte property (Payload Format Indicator, Request Problem
        /// Information...).
        pub fn byte(mut self, id: u8, value: u8) -> Props {
            self.0.push(id);
            self.0.push(value);
            self
        }

        pub fn u16(mut self, id: u8, value: u16) -> Props {
            self.0.push(id);
            self.0.extend_from_slice(&value.to_be_bytes());
            self
        }

        pub fn u32(mut self, id: u8, value: u32) -> Props {
            self.0.push(id);
            self.0.extend_from_slice(&value.to_be_bytes());
            self
        }

        pub fn text(mut self, id: u8, value: &str) -> Props {
            self.0.push(id);
            string(value.as_bytes(), &mut self.0);
            self
        }

        /// A User Property (0x26): a name and a value.
        pub fn user(mut self, name: &str, value: &str) -> Props {
            self.0.push(0x26);
            string(name.as_bytes(), &mut self.0);
            string(value.as_bytes(), &mut self.0);
            self
        }

        /// Method `JWT` with `token` as authentication data.
        pub fn jwt_auth(self, token: &str) -> Props {
            let mut props = self.text(AUTHENTICATION_METHOD, "JWT");
            props.0.push(AUTHENTICATION_DATA);
            string(token.as_bytes(), &mut props.0);
            props
        }

        /// Length-prefixed, as they go on the wire.
        fn encode(&self, out: &mut Vec<u8>) {
            varint(self.0.len(), out);
            out.extend_from_slice(&self.0);
        }
    }

    /// A will for [`Connect::will`]: QoS 0, not retained, no properties
    /// unless set.
    #[derive(Debug, Clone)]
    pub struct Will {
        topic: String,
        payload: Vec<u8>,
        qos: u8,
        props: Props,
    }

    impl Will {
        pub fn new(topic: &str, payload: &[u8]) -> Will {
            Will {
                topic: topic.to_owned(),
                payload: payload.to_vec(),
                qos: 0,
                props: Props::new(),
            }
        }

        /// The Will Properties (§3.1.3.2).
        pub fn props(mut self, props: Props) -> Will {
            self.props = props;
            self
        }
    }

    /// An MQTT 5 CONNECT with username `JWT` and a token as password, or
    /// with the token as authentication data of method `JWT`.
    #[derive(Debug, Clone)]
    pub struct Connect {
        client_id: String,
        token: String,
        /// The token goes in Authentication Data, with no user name.
        enhanced: bool,
        keep_alive: u16,
        clean_start: bool,
        props: Props,
        will: Option<Will>,
    }

    impl Connect {
        /// Clean start, keep-alive 30 s, no properties, no will.
        pub fn new(client_id: &str, token: &str) -> Connect {
            Connect {
                client_id: client_id.to_owned(),
                token: token.to_owned(),
                enhanced: false,
                keep_alive: 30,
                clean_start: true,
                props: Props::new(),
                will: None,
            }
        }

        /// The same, the token sent as authentication data (method `JWT`)
        /// with neither user name nor password.
        pub fn enhanced(client_id: &str, token: &str) -> Connect {
            Connect {
                enhanced: true,
                ..Connect::new(client_id, token)
            }
        }

        pub fn clean_start(mut self, clean: bool) -> Connect {
            self.clean_start = clean;
            self
        }

        pub fn props(mut self, props: Props) -> Connect {
            self.props = props;
            self
        }

        pub fn will(mut self, will: Will) -> Connect {
            self.will = Some(will);
            self
        }

        pub fn keep_alive(mut self, secs: u16) -> Connect {
            self.keep_alive = secs;
            self
        }

        /// §3.1.
        pub fn encode(&self) -> Vec<u8> {
            let mut body = Vec::new();
            string(b"MQTT", &mut body);
            body.push(5);
            let mut flags = if self.enhanced { 0 } else { 0xC0 }; // username and password
            if self.clean_start {
                flags |= 0x02;
            }
            if let Some(will) = &self.will {
                flags |= 0x04 | (will.qos << 3);
            }
            body.push(flags);
            body.extend_from_slice(&self.keep_alive.to_be_bytes());
            let mut props = self.props.clone();
            if self.enhanced {
                props = props.jwt_auth(&self.token);
            }
            props.encode(&mut body);
            string(self.client_id.as_bytes(), &mut body);
            if let Some(will) = &self.will {
                will.props.encode(&mut body);
                string(will.topic.as_bytes(), &mut body);
                string(&will.payload, &mut body);
            }
            if !self.enhanced {
                string(b"JWT", &mut body);
                string(self.token.as_bytes(), &mut body);
            }
            frame(0x10, &body)
        }
    }

    /// §3.3: a PUBLISH; `pkid` is used for QoS > 0.
    pub fn publish(
        topic: &str,
        payload: &[u8],
        qos: u8,
        retain: bool,
        pkid: u16,
        props: &Props,
    ) -> Vec<u8> {
        let mut body = Vec::new();
        string(topic.as_bytes(), &mut body);
        if qos > 0 {
            body.extend_from_slice(&pkid.to_be_bytes());
        }
        props.encode(&mut body);
        body.extend_from_slice(payload);
        frame(0x30 | (qos << 1) | u8::from(retain), &body)
    }

    /// §3.4: a PUBACK with reason 0x00 and no properties.
    pub fn puback(pkid: u16) -> Vec<u8> {
        frame(0x40, &pkid.to_be_bytes())
    }

    /// §3.8: a SUBSCRIBE of `filters` (filter, subscription options byte:
    /// QoS | No Local 0x04 | Retain As Published 0x08 | Retain Handling
    /// << 4).
    pub fn subscribe(pkid: u16, filters: &[(&str, u8)], props: &Props) -> Vec<u8> {
        let mut body = pkid.to_be_bytes().to_vec();
        props.encode(&mut body);
        for (filter, options) in filters {
            string(filter.as_bytes(), &mut body);
            body.push(*options);
        }
        frame(0x82, &body)
    }

    /// §3.15: an AUTH with `reason` and `props`.
    pub fn auth(reason: u8, props: &Props) -> Vec<u8> {
        let mut body = vec![reason];
        props.encode(&mut body);
        frame(0xF0, &body)
    }

    /// AUTH 0x19 (re-authenticate), method `JWT`, `token` as data.
    pub fn reauth(token: &str) -> Vec<u8> {
        auth(0x19, &Props::new().jwt_auth(token))
    }

    /// §3.14: a DISCONNECT with `reason` and `props`.
    pub fn disconnect(reason: u8, props: &Props) -> Vec<u8> {
        let mut body = vec![reason];
        props.encode(&mut body);
        frame(0xE0, &body)
    }

    /// A property as received.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Value {
        Byte(u8),
        Two(u16),
        Four(u32),
        Var(usize),
        Text(String),
        Binary(Vec<u8>),
        Pair(String, String),
    }

    /// Received properties, in wire order.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct Received(pub Vec<(u8, Value)>);

    impl Received {
        pub fn get(&self, id: u8) -> Option<&Value> {
            self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
        }

        pub fn u16(&self, id: u8) -> Option<u16> {
            match self.get(id)? {
                Value::Two(v) => Some(*v),
                other => panic!("property {id:#04x} is {other:?}, not a two-byte integer"),
            }
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ConnAck {
        pub session_present: bool,
        pub reason: u8,
        pub props: Received,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Publish {
        pub topic: String,
        pub qos: u8,
        pub retain: bool,
        pub pkid: u16,
        pub props: Received,
        pub payload: Vec<u8>,
    }

    /// A packet from the server.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Packet {
        ConnAck(ConnAck),
        Publish(Publish),
        PubAck { pkid: u16, reason: u8 },
        PubRec { pkid: u16, reason: u8 },
        SubAck { pkid: u16, codes: Vec<u8> },
        Disconnect { reason: u8, props: Received },
        Auth { reason: u8, props: Received },
        Other(Vec<u8>),
    }

    struct Reader<'a> {
        buf: &'a [u8],
        at: usize,
    }

    impl Reader<'_> {
        fn left(&self) -> usize {
            self.buf.len() - self.at
        }

        fn take(&mut self, n: usize) -> &[u8] {
            let bytes = self
                .buf
                .get(self.at..self.at + n)
                .unwrap_or_else(|| panic!("packet too short: {:02x?}", self.buf));
            self.at += n;
            bytes
        }

        fn u8(&mut self) -> u8 {
            self.take(1)[0]
        }

        fn u16(&mut self) -> u16 {
            let b = self.take(2);
            u16::from_be_bytes([b[0], b[1]])
        }

        fn u32(&mut self) -> u32 {
            let b = self.take(4);
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        }

        fn varint(&mut self) -> usize {
            let mut value = 0;
            for shift in 0..4 {
                let byte = self.u8();
                value |= usize::from(byte & 0x7f) << (7 * shift);
                if byte & 0x80 == 0 {
                    return value;
                }
            }
            panic!("malformed variable byte integer in {:02x?}", self.buf)
        }

        fn binary(&mut self) -> Vec<u8> {
            let n = usize::from(self.u16());
            self.take(n).to_vec()
        }

        fn text(&mut self) -> String {
            String::from_utf8(self.binary()).expect("UTF-8 string")
        }

        /// §2.2.2: a property length and the properties.
        fn props(&mut self) -> Received {
            let len = self.varint();
            let end = self.at + len;
            let mut props = Vec::new();
            while self.at < end {
                let id = u8::try_from(self.varint()).expect("property identifier");
                let value = match id {
                    0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => Value::Byte(self.u8()),
                    0x13 | 0x21 | 0x22 | 0x23 => Value::Two(self.u16()),
                    0x02 | 0x11 | 0x18 | 0x27 => Value::Four(self.u32()),
                    0x0B => Value::Var(self.varint()),
                    0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => Value::Text(self.text()),
                    0x09 | 0x16 => Value::Binary(self.binary()),
                    0x26 => {
                        let name = self.text();
                        Value::Pair(name, self.text())
                    }
                    other => panic!("unknown property {other:#04x} in {:02x?}", self.buf),
                };
                props.push((id, value));
            }
            Received(props)
        }
    }

    /// Decodes one complete frame from the server.
    pub fn parse(frame: &[u8]) -> Packet {
        let mut r = Reader { buf: frame, at: 1 };
        let len = r.varint();
        assert_eq!(r.left(), len, "one whole frame: {frame:02x?}");
        let flags = frame[0] & 0x0F;
        match frame[0] >> 4 {
            2 => {
                let session_present = r.u8() & 0x01 != 0;
                let reason = r.u8();
                let props = if r.left() > 0 {
                    r.props()
                } else {
                    Received::default()
                };
                Packet::ConnAck(ConnAck {
                    session_present,
                    reason,
                    props,
                })
            }
            3 => {
                let qos = (flags >> 1) & 0x03;
                let topic = r.text();
                let pkid = if qos > 0 { r.u16() } else { 0 };
                let props = r.props();
                let payload = r.take(r.left()).to_vec();
                Packet::Publish(Publish {
                    topic,
                    qos,
                    retain: flags & 0x01 != 0,
                    pkid,
                    props,
                    payload,
                })
            }
            4 | 5 => {
                let pkid = r.u16();
                let reason = if r.left() > 0 { r.u8() } else { 0 };
                if frame[0] >> 4 == 4 {
                    Packet::PubAck { pkid, reason }
                } else {
                    Packet::PubRec { pkid, reason }
                }
            }
            9 => {
                let pkid = r.u16();
                r.props();
                let codes = r.take(r.left()).to_vec();
                Packet::SubAck { pkid, codes }
            }
            14 | 15 => {
                let reason = if r.left() > 0 { r.u8() } else { 0 };
                let props = if r.left() > 0 {
                    r.props()
                } else {
                    Received::default()
                };
                if frame[0] >> 4 == 14 {
                    Packet::Disconnect { reason, props }
                } else {
                    Packet::Auth { reason, props }
                }
            }
            _ => Packet::Other(frame.to_vec()),
        }
    }
}
