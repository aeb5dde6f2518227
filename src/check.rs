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
    /// The client certificate thumbprint the token is bound to
    /// (`cnf.x5t#S256`, RFC 8705), if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bound_to: Option<String>,
    /// The thumbprint of the certificate checked with (`--client-cert`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
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
    report(token, keys, policy, None, None)
}

/// Checks `token` as the gateway would at a CONNECT from `client_id` with
/// user name `JWT`.
pub fn check_as(token: &str, keys: &KeySet, policy: &Policy, client_id: &str) -> CheckReport {
    report(token, keys, policy, Some(client_id), None)
}

/// Checks `token` as the gateway would at a CONNECT from `client_id` (or
/// the one the token is bound to), over a connection that presented the
/// client certificate of thumbprint `certificate` (or none).
pub fn check_with(
    token: &str,
    keys: &KeySet,
    policy: &Policy,
    client_id: Option<&str>,
    certificate: Option<&str>,
) -> CheckReport {
    report(token, keys, policy, client_id, certificate)
}

fn report(
    token: &str,
    keys: &KeySet,
    policy: &Policy,
    client_id: Option<&str>,
    certificate: Option<&str>,
) -> CheckReport {
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
                bound_to: None,
                certificate: certificate.map(str::to_owned),
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
    let bound = bound.and_then(|bound| {
        token::binding::check(
            verified.certificate.as_deref(),
            certificate,
            policy.requires_certificate_binding(),
        )
        .map_err(|e| e.to_string())?;
        Ok(bound)
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
        bound_to: verified.certificate,
        certificate: certificate.map(str::to_owned),
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
        if let Some(bound_to) = &self.bound_to {
            let presented = match &self.certificate {
                Some(presented) if presented == bound_to => "the certificate given",
                Some(_) => "not the certificate given",
                None => "give it with --client-cert",
            };
            writeln!(
                f,
                "bound:    to client certificate {bound_to} ({presented})"
            )?;
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
mod tests;
