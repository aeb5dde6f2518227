//! Which client id `${clientid}` may stand for: only one bound to the
//! token.
//!
//! The CONNECT's client id is whatever the device typed; the token is what
//! the issuer signed. A grant such as `dev/${clientid}/#` is only as good as
//! the link between the two: without one, a device holding any token that
//! grants `dev/${clientid}/#` connects as `pump-17` and reads and writes
//! the real pump's topics. So, under `[auth] client_id_binding =
//! "claim_or_subject"` (the default), a client id is *bound* when
//!
//! - the token's `clientid` claim (EMQX's convention) names it, or
//! - it equals the token's `sub`,
//!
//! and a token whose `clientid` claim names another client id is refused
//! outright ([`ClientIdMismatch`]): the issuer said which client it is for.
//! An id the gateway assigned (the CONNECT gave none) is the client's only
//! by chance, so it is bound only if it happens to equal `sub`, and a token
//! with a `clientid` claim does not match it.
//!
//! An unbound client id leaves `${clientid}` without a value, as an unknown
//! `${username}` is: allow rules naming it are left out, deny rules naming
//! it refuse the connection ([`super::GrantTemplate::bind`]).
//!
//! Whatever the mode, a client id starting with `$` never stands in a
//! grant: `${clientid}/#` would become `$SYS/#`, a server topic no
//! wildcard grant reaches (see "The `$` rule" in [`super`]).
//!
//! `client_id_binding = "none"` restores EMQX's behaviour (any client id
//! fills `${clientid}`, a `clientid` claim is not looked at), for fleets
//! whose devices cannot be given a bound id yet; the gateway warns about it
//! at start.

use crate::config::ClientIdBinding;
// The test of the setting's names derives a table of its own.
#[cfg(test)]
use serde::Deserialize;

/// A token's `clientid` claim names another client than the connection's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the token's \"clientid\" claim is {claimed:?}, not this connection's client id")]
pub struct ClientIdMismatch {
    pub claimed: String,
}

impl ClientIdBinding {
    /// The value `${clientid}` takes on the connection of `client_id`
    /// whose token has `claim` (its `clientid`) and `subject`: the client id
    /// if it is bound to the token, `None` if it is not.
    pub fn bind<'a>(
        self,
        client_id: &'a str,
        claim: Option<&str>,
        subject: Option<&str>,
    ) -> Result<Option<&'a str>, ClientIdMismatch> {
        let bound = match self {
            ClientIdBinding::ClaimOrSubject => {
                if let Some(claimed) = claim.filter(|&claimed| claimed != client_id) {
                    return Err(ClientIdMismatch {
                        claimed: claimed.to_owned(),
                    });
                }
                claim.is_some() || subject == Some(client_id)
            }
            ClientIdBinding::Unchecked => true,
        };
        Ok((bound && !client_id.starts_with('$')).then_some(client_id))
    }
}

#[cfg(test)]
mod tests;
