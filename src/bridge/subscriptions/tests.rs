//! A subscriptions record names its session, so another session's
//! filters are never taken for ours.

use std::path::Path;

use super::*;
use crate::config::Config;

fn bridge(subscribe: &str) -> BridgeConfig {
    let text = format!(
        "[[bridge]]\nname = \"cloud\"\nremote = \"mqtts://broker.example\"\nclient_id = \"site-42\"\n\
         subscribe = [ {subscribe} ]\n"
    );
    let config = Config::parse(&text, Path::new("jwtgate.toml"), Path::new("/srv"))
        .unwrap_or_else(|err| panic!("{err}"));
    config.bridges[0].clone()
}

#[test]
fn a_subscriptions_record_names_its_session_and_its_filters() {
    let before = subscription_record(&bridge(
        "{ remote = \"site-42/cmd/#\" }, { remote = \"site-42/cfg/+\", qos = 0 }",
    ));
    assert_eq!(
        before,
        "broker.example:8883 site-42\n1 site-42/cmd/#\n0 site-42/cfg/+\n"
    );
    let after = subscription_record(&bridge("{ remote = \"site-42/cmd/#\" }"));
    assert_eq!(
        recorded_filters(&before, &after),
        vec!["site-42/cmd/#", "site-42/cfg/+"]
    );
    // Another client id is another session: none of its filters are ours.
    let elsewhere = before.replace(" site-42\n", " site-43\n");
    assert!(recorded_filters(&elsewhere, &after).is_empty());
}
