//! The example of README's "Configuration" section, which must stay a
//! copy of it, parsed.

use super::*;
use crate::mqtt::TopicLimits;

const FULL_EXAMPLE: &str = r#"
listen = "0.0.0.0:8883"          # TLS only; there is no plaintext listener. default "0.0.0.0:8883"
[tls]
cert = "keys/tls/server.crt"     # PEM chain; default "keys/tls/server.crt"
key  = "keys/tls/server.key"     # PEM private key (PKCS#8, PKCS#1 or SEC1); default "keys/tls/server.key"
client_ca = "keys/tls/clients-ca.crt"  # optional; asks devices for a client certificate chaining to these CAs (reloaded like cert)
client_auth = "optional"         # "optional" (default) | "required"; needs client_ca
[auth]
keys_dir = "keys"                # default "keys"
topics_claim = "topics"          # default "topics"; must be non-empty
acl_claim = "acl"                # EMQX-style ACL claim (object or rule list); default "acl"
leeway_secs = 5                  # clock-skew allowance for exp/nbf; default 5, 0 allowed
issuer = "https://tenant.example/"   # optional; enforced when set
audience = "api"                 # optional; a string OR a list of strings; enforced when set; empty list is an error
require_kid = false              # default false (the seed's HS256 tokens carry no kid)
require_exp = true               # default true
require_subject = true           # default true: refuse tokens without a non-empty sub
max_token_lifetime_secs = 86400  # optional cap on exp - iat; must be > 0
algorithms = ["HS256", "RS256"]  # optional allow-list; each must be a jsonwebtoken::Algorithm name; empty list is an error
deny_publish = "drop"            # "drop" (default) | "disconnect": what happens to a connection after a refused PUBLISH
client_id_binding = "claim_or_subject"  # default; "none" lets ${clientid} take any client id
require_certificate_binding = true  # default false; refuse tokens not bound (cnf.x5t#S256) to the connection's client certificate
[limits]
handshake_timeout_secs = 10      # TLS handshake timeout; default 10; must be > 0
connect_timeout_secs = 10        # time from TLS up to a CONNECT packet; default 10; must be > 0
max_packet_size = 1048576        # bytes, default 1 MiB; minimum 1024, maximum 268435455 (MQTT's limit)
max_connect_packet_size = 16384  # bytes, default 16 KiB; 1024 to 268435455, capped by max_packet_size
max_connections = 10000          # authenticated connections; default 10000; must be > 0
max_pending_connections = 1024   # not yet authenticated; default 1024; must be > 0
max_pending_per_source = 64      # not yet authenticated, per IPv4 address or IPv6 /64; default 64; must be > 0
write_timeout_secs = 30          # a client that reads nothing for this long is disconnected; default 30; must be > 0
max_property_bytes = 65536       # MQTT 5 property bytes per packet; default 64 KiB; 256 to 268435455
max_topic_aliases = 64           # aliases granted per MQTT 5 client; default 64; 0 grants none
max_keep_alive_secs = 600        # optional cap on the client's keep-alive; 1 to 65535
memory_budget_mb = 512           # messages in memory, gateway-wide; default 512; 1 to 1048576
max_topic_levels = 128           # levels in a topic or filter; default 128; 1 to 65535
max_topic_bytes = 4096           # bytes in a topic or filter; default 4096; 1 to 65535
max_retained_bytes_per_subject = 8388608  # retained messages one token subject may hold; default 8 MiB; minimum 1024
[sessions]                       # jwtgate's routing core
max_inflight = 1000              # unacknowledged QoS 1/2 per client; default 1000; 1 to 65535
max_queued_messages = 1000       # per session; default 1000; must be >= 1
max_queued_bytes = 8388608       # per session; default 8 MiB; minimum 1024
slow_subscriber = "disconnect"   # "disconnect" (default) | "drop"
slow_subscriber_timeout_ms = 2000  # default 2000; must be > 0
max_subscriptions = 100          # per session; default 100; must be > 0
max_session_expiry_secs = 86400  # default 86400; 0 allowed
max_sessions_per_subject = 8     # sessions (connected and parked) per token subject; default 8; must be > 0
max_subscription_bytes = 262144  # subscriptions of one session, in bytes; default 256 KiB; minimum 1024
[storage]                        # retained messages, parked sessions, bridge queues
dir = "state"                    # default "state" next to the config; created if missing
sync_interval_ms = 1000          # what a power cut may lose; default 1000; 0 forces every commit; at most 60000
[log]
format = "text"                  # "auto" (default: journal entries when stderr is the journal, else lines) | "text" | "json"; --log-format overrides
[metrics]                        # Prometheus text format at http://LISTEN/metrics; off by default
listen = "127.0.0.1:9883"        # a loopback address unless allow_remote = true
allow_remote = false             # default false
[websocket]                      # MQTT over secure WebSockets, for browsers and web clients; off by default
listen = "0.0.0.0:8884"          # TLS with the [tls] certificate; there is no plaintext WebSocket listener
path = "/mqtt"                   # the upgrade's path; default "/mqtt"
allowed_origins = ["https://hmi.example"]  # Origin headers allowed to upgrade; default [] allows any
[admin]                          # jwtgate status, sessions, disconnect reach the gateway here
socket = "/run/jwtgate/admin.sock"  # a Unix socket, mode 0660; default "/run/jwtgate/admin.sock" ("state/admin.sock" with no config file); "" turns it off
[sys]                            # $SYS/broker/... figures as retained messages, for tokens granted $SYS/#
interval_secs = 10               # how often; default 0: none published
[[bridge]]                       # one table per uplink; none by default
name = "cloud"                   # required; letters, digits, - and _; unique
remote = "mqtts://broker.example:8883"  # required; mqtts:// only, except a loopback host; port default 8883
ca_file = "keys/tls/uplink-ca.crt"      # optional; the system roots otherwise
client_id = "site-42"            # required
username = "site-42"             # optional
password_file = "keys/uplink.password"  # optional; or token_file, re-read on every reconnect and when it changes
# cert_file = "..." and key_file = "...": a client certificate, both or neither
protocol = 5                     # 4 (MQTT 3.1.1) or 5 (default)
keep_alive_secs = 30             # default 30; 5 to 65535
clean_start = false              # default false: keep a session at the remote, so commands sent while the link is down arrive
session_expiry_secs = 604800     # MQTT 5: how long the remote keeps it; default 604800 (7 days); 4294967295 never ends
forward = [ { local = "sensors/#", remote_prefix = "site-42/", qos = 1 } ]   # local -> remote; qos 0 or 1 (default)
subscribe = [ { remote = "site-42/cmd/#", strip_prefix = "site-42/", local_prefix = "", qos = 1 } ]  # remote -> local
max_queue_mb = 512               # disk budget of the store-and-forward queue; default 512; the oldest go past it
"#;

#[test]
fn full_example_parses_to_the_documented_values() {
    let config = parse(FULL_EXAMPLE).expect("the documented example is valid");
    let base = Path::new(BASE);
    assert_eq!(
        config,
        Config {
            source: Some(PathBuf::from(ORIGIN)),
            listen: "0.0.0.0:8883".parse().expect("literal address"),
            tls: TlsPaths {
                cert: base.join("keys/tls/server.crt"),
                key: base.join("keys/tls/server.key"),
                client_ca: Some(base.join("keys/tls/clients-ca.crt")),
                client_auth: ClientAuth::Optional,
            },
            auth: AuthConfig {
                keys_dir: base.join("keys"),
                topics_claim: "topics".to_owned(),
                acl_claim: "acl".to_owned(),
                leeway: Duration::from_secs(5),
                issuer: Some("https://tenant.example/".to_owned()),
                audience: Some(vec!["api".to_owned()]),
                require_kid: false,
                require_exp: true,
                require_subject: true,
                max_token_lifetime: Some(Duration::from_secs(86_400)),
                algorithms: Some(vec![Algorithm::HS256, Algorithm::RS256]),
                deny_publish: DenyPublish::Drop,
                client_id_binding: ClientIdBinding::ClaimOrSubject,
                require_certificate_binding: true,
            },
            limits: Limits {
                handshake_timeout: Duration::from_secs(10),
                connect_timeout: Duration::from_secs(10),
                max_packet_size: 1_048_576,
                max_connect_packet_size: 16_384,
                max_connections: 10_000,
                max_pending_connections: 1024,
                max_pending_per_source: 64,
                write_timeout: Duration::from_secs(30),
                max_property_bytes: 65_536,
                max_topic_aliases: 64,
                max_keep_alive: Some(600),
                memory_budget: 512 * 1024 * 1024,
                topics: TopicLimits {
                    max_levels: 128,
                    max_bytes: 4096,
                },
                max_retained_bytes_per_subject: 8 * 1024 * 1024,
            },
            sessions: SessionSettings {
                max_inflight: 1000,
                max_queued_messages: 1000,
                max_queued_bytes: 8_388_608,
                slow_subscriber: SlowSubscriber::Disconnect,
                slow_subscriber_timeout: Duration::from_millis(2000),
                max_subscriptions: 100,
                max_session_expiry: Duration::from_secs(86_400),
                max_sessions_per_subject: 8,
                max_subscription_bytes: 256 * 1024,
            },
            storage: StorageConfig {
                dir: base.join("state"),
                sync_interval: Duration::from_secs(1),
            },
            bridges: vec![BridgeConfig {
                name: "cloud".to_owned(),
                remote: Remote {
                    host: "broker.example".to_owned(),
                    port: 8883,
                    transport: Transport::Tls,
                },
                ca_file: Some(base.join("keys/tls/uplink-ca.crt")),
                client_id: "site-42".to_owned(),
                username: Some("site-42".to_owned()),
                credential: Some(Credential::PasswordFile(base.join("keys/uplink.password"))),
                client_cert: None,
                protocol: Protocol::V5,
                keep_alive: Duration::from_secs(30),
                clean_start: false,
                session_expiry_secs: 604_800,
                forward: vec![ForwardRule {
                    local: crate::mqtt::TopicFilter::parse("sensors/#").expect("literal filter"),
                    remote_prefix: "site-42/".to_owned(),
                    qos: crate::mqtt::QoS::AtLeastOnce,
                }],
                subscribe: vec![SubscribeRule {
                    remote: crate::mqtt::TopicFilter::parse("site-42/cmd/#")
                        .expect("literal filter"),
                    strip_prefix: "site-42/".to_owned(),
                    local_prefix: String::new(),
                    qos: crate::mqtt::QoS::AtLeastOnce,
                }],
                max_queue_bytes: 512 * 1024 * 1024,
            }],
            log: LogConfig {
                format: LogFormat::Text,
            },
            metrics: MetricsConfig {
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 9883))),
            },
            websocket: WebSocketConfig {
                listen: Some(SocketAddr::from(([0, 0, 0, 0], 8884))),
                path: "/mqtt".to_owned(),
                allowed_origins: vec!["https://hmi.example".to_owned()],
            },
            admin: AdminConfig {
                socket: Some(PathBuf::from("/run/jwtgate/admin.sock")),
                explicit: true,
            },
            sys: SysConfig {
                interval: Some(Duration::from_secs(10)),
            },
        }
    );
}

#[test]
fn the_documented_example_matches_the_defaults_where_it_states_them() {
    let example = parse(FULL_EXAMPLE).expect("the documented example is valid");
    let defaults = Config::defaults(Path::new(BASE));
    assert_eq!(example.listen, defaults.listen);
    // client_ca, optional, is set; client_auth is its default.
    assert_eq!(
        example.tls,
        TlsPaths {
            client_ca: Some(Path::new(BASE).join("keys/tls/clients-ca.crt")),
            ..defaults.tls
        }
    );
    // max_keep_alive_secs is the one optional key the example sets.
    assert_eq!(
        example.limits,
        Limits {
            max_keep_alive: Some(600),
            ..defaults.limits
        }
    );
    assert_eq!(example.sessions, defaults.sessions);
    assert_eq!(example.storage, defaults.storage);
    assert_eq!(example.auth.keys_dir, defaults.auth.keys_dir);
    assert_eq!(example.auth.leeway, defaults.auth.leeway);
    assert_eq!(example.auth.require_subject, defaults.auth.require_subject);
    assert_eq!(
        example.auth.client_id_binding,
        defaults.auth.client_id_binding
    );
    // The bridge's optional keys the example states are their defaults.
    let minimal = parse(
        "[[bridge]]\nname = \"b\"\nremote = \"mqtts://h\"\nclient_id = \"c\"\nforward = [ { local = \"a\" } ]\n",
    )
    .expect("a minimal bridge");
    let (example, minimal) = (&example.bridges[0], &minimal.bridges[0]);
    assert_eq!(example.clean_start, minimal.clean_start);
    assert_eq!(example.session_expiry_secs, minimal.session_expiry_secs);
    assert_eq!(example.keep_alive, minimal.keep_alive);
    assert_eq!(example.protocol, minimal.protocol);
    assert_eq!(example.max_queue_bytes, minimal.max_queue_bytes);
}
