use super::*;
use crate::config::ClientIdBinding;
use crate::mqtt::{FilterError, QoS, TopicFilter};
use serde_json::json;

const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;

fn filter(s: &str) -> TopicFilter {
    match TopicFilter::parse(s) {
        Ok(f) => f,
        Err(e) => panic!("{s:?} should be a valid filter: {e}"),
    }
}

fn grants(filters: &[&str]) -> Grants {
    Grants::new(filters.iter().map(|s| filter(s)).collect())
}

const NAMES: ClaimNames<'static> = ClaimNames {
    topics: "topics",
    acl: "acl",
};

fn bindings(client_id: &'static str) -> Bindings<'static> {
    Bindings {
        client_id: Some(client_id),
        subject: Some("device-7"),
        username: Some("JWT"),
    }
}

/// The grants of a token with these claims, for client `dev1`.
fn from(topics: Option<serde_json::Value>, acl: Option<serde_json::Value>) -> Grants {
    let template =
        GrantTemplate::from_claims(topics.as_ref(), acl.as_ref(), NAMES).expect("readable claims");
    template.bind(&bindings("dev1")).expect("binds").grants
}

#[test]
fn may_publish_needs_a_matching_grant() {
    let g = grants(&["sensors/+/temp", "cmd/dev1/#"]);
    assert!(g.may_publish("sensors/x/temp", Q0, false));
    assert!(g.may_publish("cmd/dev1", Q1, true));
    assert!(g.may_publish("cmd/dev1/reboot", Q2, false));
    assert!(!g.may_publish("sensors/x/hum", Q0, false));
    assert!(!g.may_publish("cmd/dev2", Q0, false));
    assert!(!g.may_publish("sensors/+/temp", Q0, false));
    assert!(!g.may_publish("", Q0, false));
    let all = grants(&["#"]);
    assert!(all.may_publish("anything/at/all", Q0, false));
    assert!(!all.may_publish("$SYS/x", Q0, false));
    assert!(!all.may_publish("a/#", Q0, false));
    assert!(!Grants::default().may_publish("a", Q0, false));
}

/// A grant that spells out `$SYS` lets a client read the server's figures,
/// never write them: no form of grant (a filter, an EMQX publish rule, an
/// `eq` rule naming the topic) opens a `$` topic to a PUBLISH or a will.
#[test]
fn server_topics_are_readable_with_a_grant_and_never_writable() {
    let sys = grants(&["$SYS/#"]);
    assert!(sys.may_subscribe("$SYS/#", Q0));
    assert!(sys.may_subscribe("$SYS/broker/uptime", Q2));
    assert!(!sys.may_publish("$SYS/broker/version", Q1, true));
    assert!(!sys.may_publish("$SYS/broker/version", Q0, false));
    let part = grants(&["$SYS/broker/load/#"]);
    assert!(part.may_subscribe("$SYS/broker/load/+/received/1min", Q0));
    assert!(!part.may_subscribe("$SYS/#", Q0));
    let all = grants(&["#", "+/#"]);
    assert!(!all.may_subscribe("$SYS/#", Q0));
    assert!(!all.may_publish("$SYS/broker/version", Q0, false));
    assert!(!grants(&["$other/#"]).may_publish("$other/x", Q0, false));
    let acl = from(
        None,
        Some(json!([
            { "permission": "allow", "action": "publish", "topic": "eq $SYS/broker/version" },
            { "permission": "allow", "action": "all", "topic": "$SYS/#" },
        ])),
    );
    assert!(acl.may_subscribe("$SYS/#", Q0));
    assert!(!acl.may_publish("$SYS/broker/version", Q0, true));
    assert!(!acl.may_publish("$SYS/broker/uptime", Q0, true));
}

#[test]
fn may_subscribe_needs_a_covering_grant() {
    let g = grants(&["sensors/#", "cmd/+"]);
    assert!(g.may_subscribe("sensors/#", Q0));
    assert!(g.may_subscribe("sensors/+/temp", Q1));
    assert!(g.may_subscribe("sensors", Q2));
    assert!(g.may_subscribe("cmd/x", Q0));
    assert!(g.may_subscribe("cmd/+", Q0));
    assert!(!g.may_subscribe("cmd/#", Q0));
    assert!(!g.may_subscribe("#", Q0));
    assert!(!g.may_subscribe("+/temp", Q0));
    assert!(!g.may_subscribe("sensors/#/x", Q0));
    assert!(!g.may_subscribe("", Q0));
    // No union of grants: each subscription must fit inside one grant.
    let split = grants(&["a/b", "a/c"]);
    assert!(!split.may_subscribe("a/+", Q0));
    assert!(!Grants::default().may_subscribe("a", Q0));
}

#[test]
fn shared_subscriptions_are_checked_on_the_inner_filter() {
    let g = grants(&["sensors/#"]);
    assert!(g.may_subscribe("$share/group/sensors/+/temp", Q0));
    assert!(g.may_subscribe("$share/g/sensors", Q0));
    assert!(!g.may_subscribe("$share/g/other", Q0));
    assert!(!g.may_subscribe("$share/sensors/#", Q0));
    let all = grants(&["#"]);
    assert!(all.may_subscribe("$share/g/#", Q0));
    assert!(!all.may_subscribe("$share/g/$SYS/#", Q0));
    for malformed in [
        "$share/",
        "$share/g",
        "$share//a",
        "$share/g/",
        "$share/+/a",
        "$share/#/a",
        "$share/g+/a",
        "$share/g#/a",
        "$share/g\0/a",
        "$share/g/a/#/b",
        "$share/g/a+",
    ] {
        assert!(!all.may_subscribe(malformed, Q0), "{malformed:?}");
    }
    // Without the slash it is not a shared subscription, just a `$`
    // topic filter.
    assert!(!all.may_subscribe("$share", Q0));
    assert!(grants(&["$share"]).may_subscribe("$share", Q0));
    let too_long = format!("$share/{}/a", "g".repeat(65535));
    assert!(!all.may_subscribe(&too_long, Q0));
}

#[test]
fn binding_keeps_valid_allow_entries_and_reports_the_rest() {
    let template =
        GrantTemplate::from_topics(["sensors/#", "", "a/#/b", "cmd/+", "x+", "$share/g/a"]);
    let bound = template.bind(&bindings("dev1")).expect("binds");
    assert_eq!(bound.grants, grants(&["cmd/+", "sensors/#"]));
    let dropped: Vec<(String, GrantError)> = bound
        .dropped
        .into_iter()
        .map(|d| (d.topic, d.reason))
        .collect();
    assert_eq!(
        dropped,
        vec![
            (String::new(), GrantError::Filter(FilterError::Empty)),
            (
                "a/#/b".to_owned(),
                GrantError::Filter(FilterError::MultiLevelNotLast)
            ),
            (
                "x+".to_owned(),
                GrantError::Filter(FilterError::WildcardInLevel { level: 1 })
            ),
            (
                "$share/g/a".to_owned(),
                GrantError::Filter(FilterError::SharedSubscription)
            ),
        ]
    );
    let empty = GrantTemplate::from_topics(Vec::<String>::new())
        .bind(&bindings("dev1"))
        .expect("binds");
    assert!(!empty.grants.may_connect());
}

#[test]
fn claims_are_read_in_every_form_and_both_must_allow() {
    assert!(matches!(
        GrantTemplate::from_claims(None, None, NAMES),
        Err(ClaimError::Missing { .. })
    ));
    for bad in [json!(3), json!([1]), json!({"a": 1})] {
        assert!(GrantTemplate::from_claims(Some(&bad), None, NAMES).is_err());
    }
    for bad in [
        json!("a/#"),
        json!(7),
        json!({"pub": 3}),
        json!([{"permission": "allow", "action": "publish"}]),
        json!([{"permission": "maybe", "action": "publish", "topic": "a"}]),
        json!([{"permission": "allow", "action": "pub", "topic": "a"}]),
        json!([{"permission": "allow", "action": "all", "topic": "a", "qos": [3]}]),
        json!([{"permission": "allow", "action": "all", "topic": "a", "qos": 1}]),
        json!([{"permission": "allow", "action": "all", "topic": "a", "retain": "yes"}]),
        json!([{"permission": "deny", "action": "all", "topic": "a", "clientid_re": "^x"}]),
        json!(["a/#"]),
    ] {
        assert!(
            GrantTemplate::from_claims(None, Some(&bad), NAMES).is_err(),
            "{bad}"
        );
    }
    // An unknown key of the object form only narrows: reported.
    let odd = GrantTemplate::from_claims(None, Some(&json!({"pub": ["a"], "x": 1})), NAMES)
        .expect("readable");
    assert_eq!(odd.ignored().len(), 1);

    let object = from(
        None,
        Some(json!({"pub": ["p/#"], "sub": ["s/#"], "all": ["a/#"]})),
    );
    assert!(object.may_publish("p/1", Q1, false));
    assert!(!object.may_subscribe("p/1", Q1));
    assert!(object.may_subscribe("s/+", Q1));
    assert!(!object.may_publish("s/1", Q1, false));
    assert!(object.may_publish("a/1", Q2, true) && object.may_subscribe("a/#", Q2));
    assert!(!object.may_publish("other", Q0, false));

    let both = from(Some(json!(["x/#"])), Some(json!({"all": ["x/y/#", "z/#"]})));
    assert!(both.may_publish("x/y/1", Q0, false));
    assert!(!both.may_publish("x/1", Q0, false), "acl does not allow");
    assert!(!both.may_publish("z/1", Q0, false), "topics does not allow");
    assert!(both.may_connect());
}

#[test]
fn rule_lists_decide_by_first_match_with_conditions() {
    let g = from(
        None,
        Some(json!([
            {"permission": "deny", "action": "publish", "topic": "t/2", "retain": true},
            {"permission": "allow", "action": "subscribe", "topic": "eq t/1/#", "qos": [1]},
            {"permission": "deny", "action": "all", "topic": "t/3"},
            {"permission": "allow", "action": "all", "topic": "t/#", "qos": [0, 1]},
        ])),
    );
    assert!(g.may_publish("t/2", Q0, false));
    assert!(!g.may_publish("t/2", Q0, true));
    assert!(!g.may_publish("t/3", Q0, false));
    assert!(!g.may_subscribe("t/3", Q0));
    assert!(!g.may_publish("t/4", Q2, false), "qos 2 matches no rule");
    assert!(g.may_publish("t/4", Q1, true));
    assert!(g.may_subscribe("t/1/#", Q1));
    // `t/#` reaches the denied `t/3`, so it is refused whole.
    assert!(!g.may_subscribe("t/#", Q0));
    assert!(g.may_subscribe("t/+/x", Q0));
    assert!(!g.may_subscribe("t/+", Q0), "t/+ includes t/3");
    // The exact rule is about the filter `t/1/#` only.
    assert!(g.may_subscribe("t/1/#", Q1));
    assert!(g.may_subscribe("t/1/x", Q1));
    assert!(!g.may_subscribe("t/1/x", Q2));
    assert!(g.may_receive("t/4", Q0));
    assert!(!g.may_receive("t/3", Q0));
}

#[test]
fn placeholders_are_bound_per_connection_and_never_widen() {
    let template = GrantTemplate::from_claims(
        Some(&json!([
            "dev/${clientid}/#",
            "users/${sub}/+",
            "eq lit/${clientid}",
            "u/${username}"
        ])),
        None,
        NAMES,
    )
    .expect("readable");
    let g = template.bind(&bindings("dev1")).expect("binds").grants;
    assert!(g.may_publish("dev/dev1/x", Q0, false));
    assert!(!g.may_publish("dev/dev2/x", Q0, false));
    assert!(g.may_subscribe("users/device-7/+", Q0));
    assert!(g.may_subscribe("lit/${clientid}", Q0));
    assert!(!g.may_subscribe("lit/dev1", Q0));
    assert!(g.may_publish("u/JWT", Q0, false));

    // A client id that would add a level or a wildcard: the grant that
    // needs it is left out, never widened.
    for hostile in ["a/b", "+", "#", "x/#", "a\0"] {
        let bound = template.bind(&bindings(hostile)).expect("binds");
        assert_eq!(bound.dropped.len(), 1, "{hostile:?}");
        assert_eq!(bound.dropped[0].reason, GrantError::UnsafeValue("clientid"));
        assert!(!bound.grants.may_publish("dev/a/b/c", Q0, false));
        assert!(!bound.grants.may_subscribe("dev/+/#", Q0));
    }
    // No user name (MQTT 5 authentication data without one).
    let bound = template
        .bind(&Bindings {
            username: None,
            ..bindings("dev1")
        })
        .expect("binds");
    assert_eq!(bound.dropped[0].reason, GrantError::NoValue("username"));

    // A deny rule that cannot be bound refuses the connection.
    let deny = GrantTemplate::from_claims(
        None,
        Some(&json!([
            {"permission": "deny", "action": "all", "topic": "dev/${clientid}/admin"},
            {"permission": "allow", "action": "all", "topic": "dev/#"},
        ])),
        NAMES,
    )
    .expect("readable");
    assert!(deny.bind(&bindings("dev1")).is_ok());
    assert!(deny.bind(&bindings("a/b")).is_err());
    let unknown = GrantTemplate::from_topics(["x/${peerhost}"]);
    let bound = unknown.bind(&bindings("dev1")).expect("binds");
    assert_eq!(
        bound.dropped[0].reason,
        GrantError::UnknownPlaceholder("peerhost".into())
    );
    // An unclosed `${` is literal.
    let open = GrantTemplate::from_topics(["x/${clientid"]);
    let g = open.bind(&bindings("dev1")).expect("binds").grants;
    assert!(g.may_publish("x/${clientid", Q0, false));
}

#[test]
fn an_unbound_client_id_leaves_its_allow_rules_out_and_refuses_its_deny_rules() {
    let unbound = Bindings {
        client_id: None,
        ..bindings("pump-17")
    };
    let allow = GrantTemplate::from_topics(["dev/${clientid}/#", "fleet/#"]);
    let bound = allow.bind(&unbound).expect("binds");
    assert_eq!(bound.dropped.len(), 1);
    assert_eq!(bound.dropped[0].topic, "dev/${clientid}/#");
    assert_eq!(bound.dropped[0].reason, GrantError::UnboundClientId);
    assert!(!bound.grants.may_subscribe("dev/pump-17/#", Q0));
    assert!(!bound.grants.may_publish("dev/pump-17/cmd", Q0, false));
    assert!(bound.grants.may_publish("fleet/x", Q0, false));

    let deny = GrantTemplate::from_claims(
        None,
        Some(&json!([
            {"permission": "deny", "action": "all", "topic": "dev/${clientid}/admin"},
            {"permission": "allow", "action": "all", "topic": "dev/#"},
        ])),
        NAMES,
    )
    .expect("readable");
    let refused = deny
        .bind(&unbound)
        .expect_err("a deny rule cannot be left out");
    assert_eq!(refused.reason, GrantError::UnboundClientId);

    // `${sub}` does not depend on the client id.
    let sub = GrantTemplate::from_topics(["users/${sub}/#"]);
    assert!(sub.bind(&unbound).expect("binds").dropped.is_empty());
}

#[test]
fn the_bound_client_id_is_what_clientid_resolves_to() {
    let template = GrantTemplate::from_topics(["dev/${clientid}/#"]);
    let as_seen = |client_id: &str, claim: Option<&str>, binding: ClientIdBinding| {
        let client_id = binding.bind(client_id, claim, Some("thermostat-3"))?;
        let grants = template
            .bind(&Bindings {
                client_id,
                subject: Some("thermostat-3"),
                username: Some("JWT"),
            })
            .expect("binds")
            .grants;
        Ok::<_, ClientIdMismatch>(
            grants
                .filters()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
        )
    };
    let strict = ClientIdBinding::ClaimOrSubject;
    assert_eq!(as_seen("pump-17", None, strict), Ok(vec![]));
    assert_eq!(
        as_seen("thermostat-3", None, strict),
        Ok(vec!["dev/thermostat-3/#".to_owned()])
    );
    assert_eq!(
        as_seen("pump-17", Some("pump-17"), strict),
        Ok(vec!["dev/pump-17/#".to_owned()])
    );
    assert!(as_seen("pump-17", Some("pump-18"), strict).is_err());
    assert_eq!(as_seen("$SYS", Some("$SYS"), strict), Ok(vec![]));
    let none = ClientIdBinding::Unchecked;
    assert_eq!(
        as_seen("pump-17", None, none),
        Ok(vec!["dev/pump-17/#".to_owned()])
    );
    assert_eq!(as_seen("$SYS", None, none), Ok(vec![]));
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn grants_never_panic_on_any_string(s in ".*", t in "\\PC*") {
            let g = grants(&["#", "a/+", "$SYS/#"]);
            for input in [&s, &t] {
                let _ = g.may_publish(input, Q1, false);
                let _ = g.may_subscribe(input, Q1);
                let _ = GrantTemplate::from_topics([input]).bind(&bindings("c"));
            }
        }

        #[test]
        fn grants_never_panic_on_mqtt_shaped_strings(s in "(\\$share/)?[ab/+#$\\x00{}]{0,12}") {
            let g = grants(&["#", "a/+", "$SYS/#"]);
            let _ = g.may_publish(&s, Q0, true);
            let _ = g.may_subscribe(&s, Q2);
            let bound = GrantTemplate::from_topics([&s]).bind(&bindings("c"));
            prop_assert!(bound.is_ok());
        }

        /// With allow rules only, rule lists decide exactly as the
        /// plain filters always did: publish by matching, subscribe by
        /// one covering grant.
        #[test]
        fn allow_lists_agree_with_filters(
            grant in "[ab+/]{1,6}#?",
            asked in "[ab+/]{1,6}#?",
        ) {
            let (Ok(g), Ok(f)) = (TopicFilter::parse(&grant), TopicFilter::parse(&asked)) else {
                return Ok(());
            };
            let grants = Grants::new(vec![g.clone()]);
            prop_assert_eq!(grants.may_subscribe(f.as_str(), Q1), g.covers(&f));
            prop_assert_eq!(grants.may_publish(f.as_str(), Q1, false), g.matches_topic(f.as_str()));
        }
    }
}
