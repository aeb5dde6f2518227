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
