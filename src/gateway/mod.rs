//! The gateway: a TLS-only MQTT front end on jwtgate's routing core.
//!
//! The shape, from the outside in:
//!
//! - [`Gateway::bind`] loads the key set and the server certificate (both
//!   reloadable at run time, see [`crate::reload`]), creates the routing
//!   core ([`crate::broker`]) and binds the TLS listener, and the
//!   WebSocket listener when `[websocket] listen` is set. Nothing listens
//!   in plaintext.
//! - [`Gateway::run`] is the accept loop (`listener`): TCP_NODELAY, a place
//!   among the unauthenticated connections (`pending`: capped per source
//!   and in all, the oldest pushed out by newcomers), a TLS handshake with
//!   a timeout, then one task per client. On the WebSocket listener the
//!   task first takes the HTTP upgrade (`websocket`), and the rest runs on
//!   its binary frames as on TLS bytes.
//! - Each task answers CONNECT itself (`connection`; the token checked by
//!   `authenticate`, also for MQTT 5 re-authentication, whose AUTH packet
//!   `codec::auth` reads and writes), then runs the client's session loop
//!   (`session`: socket, timers, deadlines) around its protocol state
//!   (`client`: packets in, decisions out): every packet authorized,
//!   publishes routed on the task itself, acks held in order until the
//!   bridges and the retained store have committed, each telling whether
//!   its message was kept (`owed`), deliveries written from the
//!   session's mailbox; what it is refused is counted in full and logged
//!   within a per-connection allowance (`quiet`). MQTT framing comes from rumqttd's codec behind a guard
//!   (`codec`); the socket is driven in both directions at once (`wire`).
//! - One live connection per session (`takeover`).
//! - Shutdown: the future given to `run` resolves, the listener stops, every
//!   connection is told (MQTT 5 clients get DISCONNECT "server shutting
//!   down") and given a moment to finish.
//!
//! `mod.rs` only declares the layer and re-exports its API: the gateway
//! itself is in `server`, and what the connection tasks share in `shared`.

mod authenticate;
mod client;
mod codec;
mod control;
// Crate-visible, like the few items in them marked so, for the
// `mqtt_session` fuzz harness (`crate::fuzz`), which serves a connection
// over an in-memory stream; not part of the gateway's API.
pub(crate) mod connection;
mod listener;
mod owed;
pub(crate) mod pending;
mod quiet;
mod server;
pub(crate) mod session;
pub(crate) mod shared;
pub(crate) mod takeover;
pub(crate) mod websocket;
mod wire;

pub use server::{Gateway, StartError};
