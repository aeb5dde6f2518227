//! # jwtgate: an offline, JWT-only MQTT edge gateway
//!
//! jwtgate is a TLS-only MQTT broker for device fleets. A device connects
//! with username `JWT` and a signed JSON Web Token as its password. The token
//! is verified **locally**, against key material that lives in a directory on
//! the edge box, so the gateway keeps working when the link to the identity
//! provider is down. The token's `topics` claim (the name is configurable)
//! lists the MQTT topic filters the device may use (EMQX's `acl` claim is
//! read too), and every PUBLISH, every SUBSCRIBE filter and the will
//! message are checked against it. An MQTT 5 client may hand over a fresh
//! token on the same connection (AUTH, re-authentication).
//!
//! ## The model
//!
//! - [`mqtt`] is the ground floor: the one `QoS`, topic names and filters
//!   with their limits, subscription options, `Version` and `PacketId`,
//!   shared by every layer above and importing nothing from them (README's
//!   "Code map" draws the layers; `tests/architecture.rs` keeps them).
//! - A [`config::Config`] is parsed once from TOML and handed down.
//! - [`keys::KeyStore`] is the one owner of the verification keys: an
//!   immutable [`keys::KeySet`] swapped atomically, read by connections as a
//!   snapshot.
//! - [`token`] turns a compact JWT into a [`token::VerifiedToken`] (subject,
//!   key id, expiry, and the [`acl::GrantTemplate`] its claims carry), or
//!   says exactly why not. It also mints development tokens.
//! - [`acl::Grants`], the template bound to one connection (placeholders
//!   resolved), is the one place that decides "may this client do this":
//!   ordered allow/deny rule lists, every one of which must allow.
//! - [`check`] answers "would the gateway accept this token?" offline.
//! - [`tls`] loads the server certificate behind a resolver that can be
//!   swapped at run time; [`firstrun`] creates development material so a
//!   first run needs nothing hand-made.
//! - [`broker`] is jwtgate's routing core: the subscription index, retained
//!   messages, sessions with their queues and QoS exchanges, and delivery
//!   with back-pressure, all on the publishing and subscribing clients' own
//!   tasks.
//! - [`gateway`] owns the connection layer: the TLS listener and one task
//!   per connection that speaks MQTT 3.1, 3.1.1 and 5 (framing from
//!   rumqttd's codec), authorizes every packet and drives its session in
//!   the routing core.
//! - [`storage`] keeps what must outlive the process in one SQLite
//!   database: retained messages, parked sessions, and the bridges'
//!   store-and-forward queues, written by one thread in grouped commits.
//! - [`bridge`] connects the site to central brokers: a tap on the routing
//!   core queues what is forwarded (the device's PUBACK waits for the
//!   commit), a link task per bridge drains the queue to the remote and
//!   publishes what it subscribed to locally.
//! - [`reload`] swaps in new keys and certificates when files change (or
//!   on SIGHUP) and makes live connections re-check their tokens.
//! - [`readiness`] tells systemd when the gateway is up, and pings its
//!   watchdog while the routing core answers.
//! - [`logging`] picks where the log goes: lines (coloured only on a
//!   terminal), JSON, or native journal entries when stderr is the journal.
//! - [`metrics`] counts what happens (connections, CONNECT outcomes,
//!   packets, bytes, refusals, reloads) and serves it, with the state of
//!   keys, routing core and bridges, to Prometheus on `[metrics] listen`.
//! - [`sys`] publishes Mosquitto's `$SYS/broker/...` figures (and
//!   jwtgate's own) as retained messages every `[sys] interval_secs`, for
//!   tokens granted `$SYS/#`; no client may publish under `$`.
//! - [`admin`] is the admin socket (`jwtgate status`, `sessions`,
//!   `disconnect`): its request and answer, the socket, the commands'
//!   client side and tables; the gateway provides what it serves.
//! - [`provision`], the only part that talks to the identity provider, backs `jwtgate-provision`.
//!
//! The `jwtgate` binary is a thin command-line layer over this library.
//!
//! ## Robustness
//!
//! The modules that read what a stranger controls ([`token`], [`acl`],
//! [`keys`], [`config`], and the gateway's codec and connection) deny
//! `unwrap`, `expect`, indexing and `panic!` outside tests (clippy), so bad
//! input ends in an error, not a panic; the few exceptions carry an
//! `#[allow]` and a comment saying why they cannot fail.

pub mod acl;
pub mod admin;
pub mod bridge;
pub mod broker;
pub mod check;
pub mod config;
pub mod firstrun;
// The fuzz targets' logic, shared by cargo-fuzz and `cargo test` replay.
#[doc(hidden)]
pub mod fuzz;
pub mod gateway;
pub mod http;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod mqtt;
pub mod provision;
pub mod readiness;
pub mod reload;
pub mod storage;
pub mod sys;
pub mod tls;
pub mod token;
