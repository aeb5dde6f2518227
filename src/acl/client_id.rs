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
mod tests {
    use super::*;

    const BOUND: ClientIdBinding = ClientIdBinding::ClaimOrSubject;
    const NONE: ClientIdBinding = ClientIdBinding::Unchecked;

    #[test]
    fn a_claim_equal_to_the_client_id_binds_it() {
        assert_eq!(
            BOUND.bind("pump-17", Some("pump-17"), Some("fleet-a")),
            Ok(Some("pump-17"))
        );
    }

    #[test]
    fn a_claim_naming_another_client_is_a_mismatch() {
        assert_eq!(
            BOUND.bind("pump-17", Some("thermostat-3"), Some("pump-17")),
            Err(ClientIdMismatch {
                claimed: "thermostat-3".to_owned()
            }),
            "the claim decides even when sub would have bound"
        );
        // An id the gateway assigned is not the one the issuer named.
        assert!(BOUND.bind("jwtgate-0a1b", Some("pump-17"), None).is_err());
        assert!(BOUND.bind("pump-17", Some(""), None).is_err());
    }

    #[test]
    fn without_a_claim_only_the_subject_binds() {
        assert_eq!(
            BOUND.bind("thermostat-3", None, Some("thermostat-3")),
            Ok(Some("thermostat-3"))
        );
        // The reported attack: another device's id under one's own token.
        assert_eq!(BOUND.bind("pump-17", None, Some("thermostat-3")), Ok(None));
        assert_eq!(BOUND.bind("pump-17", None, None), Ok(None));
        assert_eq!(BOUND.bind("jwtgate-0a1b", None, Some("dev")), Ok(None));
    }

    #[test]
    fn a_dollar_client_id_never_binds() {
        for binding in [BOUND, NONE] {
            assert_eq!(binding.bind("$SYS", Some("$SYS"), Some("$SYS")), Ok(None));
            assert_eq!(binding.bind("$x", None, Some("$x")), Ok(None));
        }
    }

    #[test]
    fn none_binds_every_client_id_and_ignores_the_claim() {
        assert_eq!(
            NONE.bind("pump-17", Some("thermostat-3"), Some("thermostat-3")),
            Ok(Some("pump-17"))
        );
        assert_eq!(NONE.bind("pump-17", None, None), Ok(Some("pump-17")));
    }

    #[test]
    fn the_config_names_are_snake_case_and_none() {
        #[derive(Deserialize)]
        struct Auth {
            client_id_binding: ClientIdBinding,
        }
        let read = |text: &str| toml::from_str::<Auth>(text).map(|a| a.client_id_binding);
        assert_eq!(
            read("client_id_binding = \"claim_or_subject\"").ok(),
            Some(BOUND)
        );
        assert_eq!(read("client_id_binding = \"none\"").ok(), Some(NONE));
        assert!(read("client_id_binding = \"unchecked\"").is_err());
    }
}
