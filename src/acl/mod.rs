//! Authorization: may this client publish to this topic, or subscribe with
//! this filter?
//!
//! # The model
//!
//! A token grants topics in one or both of two claims:
//!
//! - jwtgate's `topics` claim (the name is `[auth] topics_claim`): a list
//!   of MQTT topic filters, each allowing publish and subscribe;
//! - EMQX's `acl` claim (`[auth] acl_claim`), in either of its forms: the
//!   object `{"pub": [...], "sub": [...], "all": [...]}` of allow lists, or
//!   an ordered list of allow/deny rules with optional QoS and retain
//!   conditions ([`claim`]).
//!
//! Each claim becomes a [`RuleList`]: rules read top to bottom, the first
//! that applies decides, none denies ([`rules`]). A token with both claims
//! gets both lists, and **both must allow**: adding an `acl` claim to a
//! token can only narrow what its `topics` claim grants, and the reverse.
//! Grants may hold placeholders (`${clientid}`, `${sub}`, `${username}`),
//! so a token's claims are read into a [`GrantTemplate`] at verification
//! and bound into [`Grants`] once the connection's client id is known;
//! `${clientid}` only takes a client id the token vouches for
//! ([`client_id`]).
//!
//! Two relations between filters decide everything
//! ([`crate::mqtt::topic`]):
//!
//! 1. **Publish**: a PUBLISH (or will message) to topic `t` is allowed iff
//!    `t` is a valid topic name and, in every list, the first rule whose
//!    filter matches `t` (and whose action, QoS and retain conditions fit)
//!    allows it ([`TopicFilter::matches_topic`]).
//! 2. **Subscribe**: a SUBSCRIBE with filter `f` is allowed iff `f` is a
//!    valid filter and, in every list, an allow rule whose filter *covers*
//!    `f` (every topic `f` matches, it matches too: [`TopicFilter::covers`])
//!    comes before any deny rule that reaches into `f`
//!    ([`TopicFilter::intersects`]). Comparing filters as sets of topics,
//!    not as strings, is what keeps a device granted `sensors/+/temp` from
//!    subscribing to `sensors/#`, while still letting a device granted
//!    `sensors/#` subscribe to `sensors/+/temp`. A filter is never narrowed
//!    to what is granted; it is accepted or refused whole, so a deny rule
//!    inside an allowed filter refuses that filter.
//!
//! A shared subscription request `$share/{group}/{filter}` is authorized on
//! its inner `{filter}`, because that is the set of topics it delivers; the
//! group name only chooses which session receives each message. A grant
//! cannot itself be a `$share/...` filter: binding rejects it, since it
//! would silently grant nothing but the literal topic.
//!
//! # The `$` rule
//!
//! MQTT (3.1.1 §4.7.2, 5 §4.7.2) reserves topics whose first level starts
//! with `$` (such as `$SYS/...`) for the server: a filter whose first level is
//! a wildcard (`#`, `+`, `+/...`) does not match them. So a grant of `#` does
//! not reach `$SYS/uptime`; only a grant that spells out the `$` level, such
//! as `$SYS/#`, does. Matching and covering apply the rule identically, so a
//! grant of `#` does not cover a subscription to `$SYS/#` either.
//!
//! Such a grant only ever lets a client *read*: publishing to a `$` topic
//! (a PUBLISH, a will) is refused whatever the token grants, since the
//! server alone writes there (MQTT 5 §4.7.2); the gateway's own `$SYS`
//! figures would otherwise be one retained publish away from a forgery.
//!
//! Matching runs on every PUBLISH, so nothing here allocates once grants
//! are bound: levels are walked with `split('/')`.
//!
//! [`TopicFilter::matches_topic`]: crate::mqtt::TopicFilter::matches_topic
//! [`TopicFilter::covers`]: crate::mqtt::TopicFilter::covers
//! [`TopicFilter::intersects`]: crate::mqtt::TopicFilter::intersects

// Untrusted input (topics and filters come from clients and from token
// claims): fail with an error, never a panic, here and in every file below.
// Tests are exempt through clippy.toml; an exception in this code carries an
// `#[allow]` saying why it cannot fail. See "Robustness" in the crate docs.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod claim;
pub mod client_id;
pub mod grants;
pub mod rules;

pub use claim::{
    BindError, Bindings, Bound, ClaimError, ClaimForm, ClaimNames, Dropped, GrantError,
    GrantTemplate,
};
pub use client_id::ClientIdMismatch;
pub use grants::Grants;
pub use rules::{Action, Permission, QosLevels, Rule, RuleList, RuleTopic};

#[cfg(test)]
mod tests;
