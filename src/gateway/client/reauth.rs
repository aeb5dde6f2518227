//! MQTT 5 re-authentication (AUTH 0x19 with method `JWT`): a fresh
//! token replaces the grants in force, and what they no longer cover is
//! dropped.

use tracing::info;

use crate::acl::Grants;
use crate::gateway::codec::auth::{self as enhanced, Auth};
use crate::gateway::quiet::Kind;
use crate::gateway::wire::Outbox;

use super::ending::{Ending, ProtocolViolation};
use super::state::Client;

impl Client {
    /// An AUTH from the client. jwtgate speaks one exchange, re-authenticate
    /// (0x19) with method `JWT` and a fresh token as data; the token is
    /// verified by the session loop, which holds the keys
    /// ([`Client::take_reauth`]), before any later packet is taken. A
    /// client that authenticated with a password may re-authenticate this
    /// way too.
    pub(super) fn auth(&mut self, auth: Auth) -> Option<Ending> {
        if auth.reason != enhanced::REAUTHENTICATE {
            return Some(Ending::Protocol(ProtocolViolation::AuthReason(auth.reason)));
        }
        if auth.method.as_deref() != Some(enhanced::METHOD) {
            return Some(Ending::ReauthRefused {
                code: enhanced::BAD_AUTHENTICATION_METHOD,
                detail: "re-authentication needs method JWT".to_owned(),
                signed: None,
            });
        }
        match auth.data.as_deref().map(std::str::from_utf8) {
            Some(Ok(token)) => {
                self.reauth = Some(token.to_owned());
                None
            }
            _ => Some(Ending::ReauthRefused {
                code: enhanced::BAD_USER_NAME_OR_PASSWORD,
                detail: "re-authentication without a UTF-8 token as data".to_owned(),
                signed: None,
            }),
        }
    }

    /// The token of a re-authentication the client asked for, to verify.
    pub fn take_reauth(&mut self) -> Option<String> {
        self.reauth.take()
    }

    /// Puts a verified re-authentication into force: the new grants
    /// replace the old at once, the session is narrowed to them, and the
    /// client hears AUTH success. The caller re-arms the expiry.
    pub fn reauthenticated(&mut self, grants: Grants, credential: String, out: &mut Outbox) {
        self.id.grants = grants;
        self.id.credential = credential;
        self.narrow_to_grants();
        let grants = &self.id.grants;
        let not_granted = self.will.take_if(|will| {
            let p = &will.publication;
            !grants.may_publish(&p.topic, p.qos, p.retain)
        });
        if let Some(will) = not_granted {
            self.log_limited(Kind::Reauthentication, |client_id| {
                info!(
                    client_id,
                    topic = will.publication.topic,
                    "will dropped: the new token does not grant its topic"
                );
            });
        }
        out.queue_with(|bytes| Auth::encode(enhanced::SUCCESS, None, bytes));
    }

    /// Drops the subscriptions, queued messages and unacknowledged
    /// deliveries the grants do not cover: on resuming a session made
    /// under an older token, and after re-authentication.
    pub fn narrow_to_grants(&mut self) {
        let dropped = self
            .broker
            .restrict(&self.session, &self.id.grants, &mut self.inflight);
        self.resend &= self.inflight.outgoing() > 0;
        for filter in dropped {
            self.log_limited(Kind::SubscriptionDropped, |client_id| {
                info!(
                    client_id,
                    filter, "subscription dropped: the new token does not grant it"
                );
            });
        }
    }
}
