//! The offline token check behind `jwtgate check`: would the gateway accept
//! this token right now, and what would it grant?
//!
//! It runs the same verification as a CONNECT ([`token::verify`] against the
//! keys directory, then the rule that a token must grant at least one topic
//! filter), so an operator can debug a refused device on the edge box
//! without a network and without the device. It also repeats the warnings
//! the gateway logs at start about its token policy ([`Policy::warnings`]),
//! since they are about which tokens it accepts.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::acl::{Bindings, ClaimForm};
use crate::keys::KeySet;
use crate::token::{self, Policy};

/// The last second RFC 3339 (and humantime) can write: the end of the year
/// 9999. A token may well expire later.
const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

/// The outcome of checking one token.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// True only when a CONNECT with this token would be accepted.
    pub accepted: bool,
    /// Why not, when it would not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `exp`, seconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The client id placeholders were bound to.
    pub client_id: String,
    /// The filters of the `topics` claim, bound to the client id.
    pub topics: Vec<String>,
    /// The effective rules, one list per grant claim; every list must
    /// allow.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleListReport>,
    /// Grant entries that are not used, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rejected_topics: Vec<RejectedTopic>,
    /// What is unsafe about the token policy with these keys, whatever the
    /// token.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The rules read from one claim, as `jwtgate check` shows them.
#[derive(Debug, Clone, Serialize)]
pub struct RuleListReport {
    /// Which claim, in which form.
    pub claim: String,
    /// First match wins; no match denies.
    pub rules: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RejectedTopic {
    pub filter: String,
    pub reason: String,
}

/// The client id [`check`] binds placeholders to when the token names
/// none.
pub const DEFAULT_CLIENT_ID: &str = "jwtgate-check";

/// Checks `token` as the gateway would at CONNECT from the client the token
/// is for: the client id its `clientid` claim names, else its `sub` (both
/// bind `${clientid}`), else [`DEFAULT_CLIENT_ID`].
pub fn check(token: &str, keys: &KeySet, policy: &Policy) -> CheckReport {
    report(token, keys, policy, None)
}

/// Checks `token` as the gateway would at a CONNECT from `client_id` with
/// user name `JWT`.
pub fn check_as(token: &str, keys: &KeySet, policy: &Policy, client_id: &str) -> CheckReport {
    report(token, keys, policy, Some(client_id))
}

fn report(token: &str, keys: &KeySet, policy: &Policy, client_id: Option<&str>) -> CheckReport {
    let warnings = policy
        .warnings(keys)
        .iter()
        .map(ToString::to_string)
        .collect();
    let verified = match token::verify_signed(token.trim(), keys, policy) {
        Ok(verified) => verified,
        Err(refused) => {
            let e = refused.error;
            // A token refused after its signature held still says whom it
            // names, which key signed it and when it expires.
            let signed = refused.signed;
            let expires_at = match e {
                token::TokenError::Expired { exp } => Some(exp),
                _ => None,
            };
            return CheckReport {
                accepted: false,
                reason: Some(e.to_string()),
                key_id: signed
                    .as_ref()
                    .map(|s| s.key_id.clone())
                    .or_else(|| e.key_id().map(str::to_owned)),
                key_file: signed.as_ref().map(|s| s.key_file.clone()),
                subject: signed.and_then(|s| s.subject),
                expires_at,
                client_id: client_id.unwrap_or(DEFAULT_CLIENT_ID).to_owned(),
                topics: Vec::new(),
                rules: Vec::new(),
                rejected_topics: Vec::new(),
                warnings,
            };
        }
    };
    let client_id = client_id
        .or(verified.client_id.as_deref())
        .or(verified.subject.as_deref())
        .unwrap_or(DEFAULT_CLIENT_ID)
        .to_owned();
    let client_id = client_id.as_str();
    let bound = policy
        .client_id_binding()
        .bind(
            client_id,
            verified.client_id.as_deref(),
            verified.subject.as_deref(),
        )
        .map_err(|e| e.to_string())
        .and_then(|bound_client_id| {
            verified
                .grants
                .bind(&Bindings {
                    client_id: bound_client_id,
                    subject: verified.subject.as_deref(),
                    username: Some("JWT"),
                })
                .map_err(|e| e.to_string())
        });
    let mut rejected_topics: Vec<RejectedTopic> = verified
        .grants
        .ignored()
        .iter()
        .map(|(entry, why)| RejectedTopic {
            filter: entry.clone(),
            reason: why.clone(),
        })
        .collect();
    let (reason, topics, rules) = match &bound {
        Err(e) => (Some(e.clone()), Vec::new(), Vec::new()),
        Ok(bound) => {
            rejected_topics.extend(bound.dropped.iter().map(|d| RejectedTopic {
                filter: d.topic.clone(),
                reason: d.reason.to_string(),
            }));
            let mut rules = Vec::new();
            let mut topics = Vec::new();
            for (template, list) in verified.grants.lists().iter().zip(bound.grants.lists()) {
                if template.form == ClaimForm::Topics {
                    topics.extend(list.rules().iter().map(|rule| rule.topic.to_string()));
                }
                rules.push(RuleListReport {
                    claim: template.form.to_string(),
                    rules: list.rules().iter().map(ToString::to_string).collect(),
                });
            }
            let reason =
                (!bound.grants.may_connect()).then(|| "the token grants no topics".to_owned());
            (reason, topics, rules)
        }
    };
    CheckReport {
        accepted: reason.is_none(),
        reason,
        key_id: Some(verified.key_id),
        key_file: Some(verified.key_file),
        subject: verified.subject,
        expires_at: verified.expires_at,
        client_id: client_id.to_owned(),
        topics,
        rules,
        rejected_topics,
        warnings,
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reason {
            None => writeln!(f, "valid: the gateway would accept this token")?,
            Some(reason) => writeln!(f, "refused: {reason}")?,
        }
        if let Some(kid) = &self.key_id {
            write!(f, "key:      {kid}")?;
            if let Some(file) = &self.key_file {
                write!(f, " ({})", file.display())?;
            }
            writeln!(f)?;
        }
        if let Some(subject) = &self.subject {
            writeln!(f, "subject:  {subject}")?;
        }
        if let Some(exp) = self.expires_at {
            if exp > LAST_RFC3339_SECOND {
                writeln!(f, "expires:  {exp} (Unix time, after the year 9999)")?;
            } else {
                let at = UNIX_EPOCH + Duration::from_secs(exp);
                write!(f, "expires:  {}", humantime::format_rfc3339_seconds(at))?;
                match at.duration_since(SystemTime::now()) {
                    Ok(left) => {
                        let left = Duration::from_secs(left.as_secs());
                        writeln!(f, " (in {})", humantime::format_duration(left))?;
                    }
                    Err(_) => writeln!(f, " (passed)")?,
                }
            }
        }
        if !self.topics.is_empty() {
            writeln!(f, "topics:   {}", self.topics.join(", "))?;
        }
        // The topics claim alone reads fully from the line above; rule
        // lists are shown rule by rule.
        let only_topics = match self.rules.as_slice() {
            [list] => list.rules.len() == self.topics.len(),
            _ => false,
        };
        if !only_topics && !self.rules.is_empty() {
            writeln!(
                f,
                "rules:    for client id {:?}; first match wins, no match denies{}",
                self.client_id,
                if self.rules.len() > 1 {
                    "; every list must allow"
                } else {
                    ""
                }
            )?;
            for list in &self.rules {
                writeln!(f, "  {}:", list.claim)?;
                for rule in &list.rules {
                    writeln!(f, "    {rule}")?;
                }
            }
        }
        for rejected in &self.rejected_topics {
            writeln!(f, "ignored:  {:?} ({})", rejected.filter, rejected.reason)?;
        }
        for warning in &self.warnings {
            writeln!(f, "warning:  {warning}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    // Tests panic on purpose when a fixture cannot be set up.
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::config::{AuthConfig, ClientIdBinding, Config};
    use crate::keys::KeyStore;
    use crate::keys::testing;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::{Value, json};
    use std::path::Path;
    use std::sync::Arc;

    const SECRET: &[u8] = b"a development secret of 32 bytes";

    /// A keys directory with `dev.b64` and, when asked, an identity
    /// provider's `idp.json`.
    fn key_set(with_jwks: bool) -> (tempfile::TempDir, Arc<KeySet>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dev.b64"), STANDARD.encode(SECRET)).unwrap();
        if with_jwks {
            let jwks = testing::jwks(&[testing::ec_jwk("ec")]);
            std::fs::write(dir.path().join("idp.json"), jwks).unwrap();
        }
        let (store, report) = KeyStore::open(dir.path()).unwrap();
        assert!(report.issues.is_empty(), "{report}");
        (dir, store.snapshot())
    }

    fn policy(edit: impl FnOnce(&mut AuthConfig)) -> Policy {
        let mut auth = Config::defaults(Path::new("/unused")).auth;
        edit(&mut auth);
        Policy::from_config(&auth)
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(claims: &Value) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("dev".to_owned());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    #[test]
    fn effective_rules_are_shown_bound_to_the_client_id() {
        let (_dir, keys) = key_set(false);
        let claims = json!({
            "sub": "site-7",
            "clientid": "gw-7",
            "exp": now() + 600,
            "acl": [
                {"permission": "deny", "action": "all", "topic": "site/secret/#"},
                {"permission": "allow", "action": "publish", "topic": "site/${clientid}/#", "qos": [0, 1], "retain": false},
                {"permission": "allow", "action": "subscribe", "topic": "eq site/alerts/#"}
            ],
            "topics": ["site/#", "x/${peerhost}"]
        });
        let report = check_as(&token(&claims), &keys, &policy(|_| {}), "gw-7");
        assert!(report.accepted, "{report}");
        let json = json_of(&report);
        assert_eq!(json["client_id"], json!("gw-7"));
        assert_eq!(json["topics"], json!(["site/#"]));
        assert_eq!(
            json["rules"],
            json!([
                {"claim": "topics claim", "rules": ["allow all site/#"]},
                {"claim": "acl claim, rule list", "rules": [
                    "deny all site/secret/#",
                    "allow publish site/gw-7/# qos 0,1 retain false",
                    "allow subscribe eq site/alerts/#"
                ]}
            ])
        );
        assert_eq!(json["rejected_topics"][0]["filter"], json!("x/${peerhost}"));
        let text = report.to_string();
        assert!(text.contains("every list must allow"), "{text}");
        assert!(
            text.contains("    allow publish site/gw-7/# qos 0,1 retain false"),
            "{text}"
        );
        // A deny rule that cannot be bound refuses the token.
        let claims = json!({
            "sub": "a/b",
            "exp": now() + 600,
            "acl": [
                {"permission": "deny", "action": "all", "topic": "u/${sub}/admin"},
                {"permission": "allow", "action": "all", "topic": "u/#"}
            ]
        });
        let report = check(&token(&claims), &keys, &policy(|_| {}));
        assert!(!report.accepted);
        assert!(report.reason.unwrap_or_default().contains("deny rule"));
    }

    #[test]
    fn clientid_stands_only_for_a_client_id_bound_to_the_token() {
        let (_dir, keys) = key_set(false);
        let claims = |clientid: Option<&str>| {
            let mut claims = json!({
                "sub": "site-7",
                "exp": now() + 600,
                "topics": ["site/${clientid}/#", "fleet/#"]
            });
            if let Some(clientid) = clientid {
                claims["clientid"] = json!(clientid);
            }
            token(&claims)
        };
        let strict = policy(|_| {});
        let unbound = check_as(&claims(None), &keys, &strict, "gw-7");
        assert!(unbound.accepted, "{unbound}");
        assert_eq!(unbound.topics, vec!["fleet/#"]);
        assert_eq!(unbound.rejected_topics[0].filter, "site/${clientid}/#");
        let by_subject = check_as(&claims(None), &keys, &strict, "site-7");
        assert_eq!(by_subject.topics, vec!["fleet/#", "site/site-7/#"]);
        let mismatch = check_as(&claims(Some("gw-8")), &keys, &strict, "gw-7");
        assert!(!mismatch.accepted);
        assert!(
            mismatch
                .reason
                .unwrap_or_default()
                .contains("\"clientid\" claim"),
            "the reason names the claim"
        );
        // Without --client-id: the client the token is for.
        let own = check(&claims(Some("gw-8")), &keys, &strict);
        assert_eq!(own.client_id, "gw-8");
        assert_eq!(own.topics, vec!["fleet/#", "site/gw-8/#"]);
        let own = check(&claims(None), &keys, &strict);
        assert_eq!(own.topics, vec!["fleet/#", "site/site-7/#"]);
        let none = policy(|auth| auth.client_id_binding = ClientIdBinding::Unchecked);
        let old = check_as(&claims(Some("gw-8")), &keys, &none, "gw-7");
        assert_eq!(old.topics, vec!["fleet/#", "site/gw-7/#"]);
        assert!(
            old.warnings
                .iter()
                .any(|w| w.contains("client_id_binding = \"none\""))
        );
    }

    fn json_of(report: &CheckReport) -> Value {
        serde_json::to_value(report).unwrap()
    }

    #[test]
    fn a_token_without_subject_is_refused_with_the_reason() {
        let (_dir, keys) = key_set(false);
        let report = check(
            &token(&json!({ "exp": now() + 60, "topics": ["t"] })),
            &keys,
            &policy(|_| {}),
        );
        assert!(!report.accepted);
        let text = report.to_string();
        assert!(
            text.starts_with(
                "refused: no subject: the \"sub\" claim is missing or empty, and [auth] \
                 require_subject is on"
            ),
            "{text}"
        );
        assert_eq!(json_of(&report)["reason"], json!(report.reason.unwrap()));

        let relaxed = policy(|auth| auth.require_subject = false);
        let report = check(
            &token(&json!({ "sub": "", "exp": now() + 60, "topics": ["t"] })),
            &keys,
            &relaxed,
        );
        assert!(report.accepted, "{report}");
    }

    #[test]
    fn future_iat_and_lifetime_refusals_say_which() {
        let (_dir, keys) = key_set(false);
        let capped = policy(|auth| auth.max_token_lifetime = Some(Duration::from_secs(3600)));
        let now = now();
        for (claims, reason) in [
            (
                json!({ "sub": "d", "iat": now + 3600, "exp": now + 7200, "topics": "t" }),
                format!("issued in the future, at {} (Unix time)", now + 3600),
            ),
            (
                json!({ "sub": "d", "exp": now + 60, "topics": "t" }),
                "no \"iat\" claim, needed to check the lifetime against the maximum of 3600 s"
                    .to_owned(),
            ),
            (
                json!({ "sub": "d", "iat": now, "exp": now - 1, "topics": "t" }),
                format!(
                    "issued at {now}, after it expires at {} (Unix time): no lifetime to \
                     check against the maximum of 3600 s",
                    now - 1
                ),
            ),
            (
                json!({ "sub": "d", "iat": now, "exp": now + 3601, "topics": "t" }),
                "lifetime of 3601 s exceeds the maximum of 3600 s".to_owned(),
            ),
        ] {
            let report = check(&token(&claims), &keys, &capped);
            assert!(!report.accepted);
            assert_eq!(report.reason.as_deref(), Some(reason.as_str()), "{claims}");
        }
    }

    #[test]
    fn the_audience_warning_shows_in_both_forms() {
        let (dir, keys) = key_set(true);
        let good = token(&json!({ "sub": "d", "exp": now() + 60, "topics": "t" }));
        let idp = dir.path().join("idp.json");
        // Whatever the token: the warning is about the configuration.
        for token in [good.as_str(), "not a token"] {
            let report = check(token, &keys, &policy(|_| {}));
            assert_eq!(report.warnings.len(), 1, "{report}");
            assert!(
                report.warnings[0].contains(&format!("JWKS: {})", idp.display())),
                "{report}"
            );
            let text = report.to_string();
            let last = text.lines().last().unwrap();
            assert_eq!(last, format!("warning:  {}", report.warnings[0]));
            assert_eq!(json_of(&report)["warnings"], json!(report.warnings));
        }

        let with_audience = policy(|auth| auth.audience = Some(vec!["gw".into()]));
        let report = check(&good, &keys, &with_audience);
        assert!(report.warnings.is_empty());
        assert!(!report.to_string().contains("warning:"));
        assert!(json_of(&report).get("warnings").is_none());

        let (_other, hmac_only) = key_set(false);
        assert!(
            check(&good, &hmac_only, &policy(|_| {}))
                .warnings
                .is_empty()
        );
    }

    /// A token whose signature held but which is refused all the same
    /// (expired here) still shows whom it names and which key signed it;
    /// one whose signature failed shows neither.
    #[test]
    fn a_refused_token_with_a_good_signature_names_its_subject_and_key() {
        let (_dir, keys) = key_set(false);
        let exp = now() - 3600;
        let expired = token(&json!({ "sub": "meter-9", "exp": exp, "topics": "t" }));
        let report = check(&expired, &keys, &policy(|_| {}));
        assert!(!report.accepted);
        assert_eq!(report.subject.as_deref(), Some("meter-9"), "{report}");
        assert!(report.key_id.is_some(), "{report}");
        assert!(report.key_file.is_some(), "{report}");
        assert_eq!(report.expires_at, Some(exp));
        let (signed_part, _) = expired.rsplit_once('.').unwrap();
        let forged = format!("{signed_part}.AAAA");
        let forged = check(&forged, &keys, &policy(|_| {}));
        assert!(!forged.accepted);
        assert_eq!(forged.subject, None, "{forged}");
        assert_eq!(forged.key_file, None, "{forged}");
    }

    #[test]
    fn a_far_future_expiry_is_shown_as_a_number() {
        let (_dir, keys) = key_set(false);
        for exp in [u64::MAX, 1 << 63, LAST_RFC3339_SECOND + 1] {
            let report = check(
                &token(&json!({ "sub": "d", "exp": exp, "topics": "t" })),
                &keys,
                &policy(|_| {}),
            );
            assert!(report.accepted);
            assert_eq!(report.expires_at, Some(exp));
            assert!(
                report.to_string().contains(&format!(
                    "expires:  {exp} (Unix time, after the year 9999)\n"
                )),
                "{report}"
            );
            assert_eq!(json_of(&report)["expires_at"], json!(exp));
        }
        let report = check(
            &token(&json!({ "sub": "d", "exp": LAST_RFC3339_SECOND, "topics": "t" })),
            &keys,
            &policy(|_| {}),
        );
        assert!(
            report
                .to_string()
                .contains("expires:  9999-12-31T23:59:59Z (in "),
            "{report}"
        );
    }
}
