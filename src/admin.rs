//! The operator's way into the running gateway: `jwtgate status`,
//! `sessions` and `disconnect`, over a Unix socket (`[admin] socket`,
//! never a network port).
//!
//! - [`protocol`]: the request and answer, JSON on one line each; the
//!   answer is also what `--json` prints.
//! - [`server`]: the socket, bound with the mode that decides who may use
//!   it, serving a [`server::Control`] the gateway provides (it knows the
//!   connections; this module knows none of the gateway's types).
//! - [`client`]: the commands' side, with the one-line errors they exit 2
//!   on.
//! - [`render`]: the human tables.

pub mod client;
pub mod protocol;
pub mod render;
pub mod server;
