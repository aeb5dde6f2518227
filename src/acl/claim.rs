//! Reading grants from a token's claims, and binding them to a connection.
//!
//! Three forms are read, each into a [`TemplateList`] of rules whose topics
//! may still hold placeholders:
//!
//! - jwtgate's `topics` claim: a filter or a list of filters, each allowing
//!   publish and subscribe;
//! - EMQX's object form of the `acl` claim, `{"pub": [...], "sub": [...],
//!   "all": [...]}`: allow lists (an unknown key is reported and ignored,
//!   since it can only narrow what is granted);
//! - EMQX's rule-list form, `[{"permission", "action", "topic", "qos",
//!   "retain"}, ...]`. One malformed rule refuses the whole claim: skipping
//!   a deny rule, or shifting which rule comes first, would widen it.
//!
//! A topic may start with `eq ` (taken literally, placeholders and all) and
//! may hold `${clientid}`, `${sub}` and `${username}`, replaced by
//! [`GrantTemplate::bind`] once the connection's client id is known. A value
//! is only ever put in whole, as (part of) one topic level: a value holding
//! `/`, `+`, `#` or NUL would add levels or wildcards, so the grant that
//! needs it is not used. Not using an allow rule narrows what the token
//! grants and is only reported; not using a deny rule would widen it, so
//! then the connection is refused ([`BindError`]).

use std::fmt;

use serde_json::Value;

use super::grants::Grants;
use super::rules::{Action, Permission, QosLevels, Rule, RuleList, RuleTopic};
use crate::mqtt::{FilterError, TopicFilter};

/// The prefix that takes a topic literally, as in EMQX.
const EXACT_PREFIX: &str = "eq ";

/// Which claim, and which form of it, a list of rules was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimForm {
    /// jwtgate's list of filters.
    Topics,
    /// EMQX's `{"pub", "sub", "all"}` allow lists.
    AclObject,
    /// EMQX's ordered allow/deny rules.
    AclRules,
}

impl fmt::Display for ClaimForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClaimForm::Topics => "topics claim",
            ClaimForm::AclObject => "acl claim, object form",
            ClaimForm::AclRules => "acl claim, rule list",
        })
    }
}

/// A rule as the token states it, its topic not yet bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRule {
    pub permission: Permission,
    pub action: Action,
    /// As written, without the `eq ` prefix.
    pub topic: String,
    /// Written with `eq `: compared as is, never substituted.
    pub exact: bool,
    pub qos: QosLevels,
    pub retain: Option<bool>,
}

impl TemplateRule {
    fn allow(action: Action, written: &str) -> TemplateRule {
        let (topic, exact) = match written.strip_prefix(EXACT_PREFIX) {
            Some(literal) => (literal, true),
            None => (written, false),
        };
        TemplateRule {
            permission: Permission::Allow,
            action,
            topic: topic.to_owned(),
            exact,
            qos: QosLevels::ALL,
            retain: None,
        }
    }

    fn bind(&self, values: &Bindings<'_>) -> Result<Rule, GrantError> {
        let topic = if self.exact {
            RuleTopic::Exact(self.topic.clone())
        } else {
            let filter = substitute(&self.topic, values)?;
            if filter.starts_with("$share/") {
                return Err(GrantError::Filter(FilterError::SharedSubscription));
            }
            RuleTopic::Filter(TopicFilter::parse(&filter).map_err(GrantError::Filter)?)
        };
        Ok(Rule {
            permission: self.permission,
            action: self.action,
            topic,
            qos: self.qos,
            retain: self.retain,
        })
    }
}

/// The rules read from one claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateList {
    pub form: ClaimForm,
    pub rules: Vec<TemplateRule>,
}

/// What a token grants, before it is bound to a connection. When a token
/// carries both a `topics` and an `acl` claim, both must allow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantTemplate {
    lists: Vec<TemplateList>,
    /// Entries that were skipped while reading (unknown keys of the object
    /// form), with why; for the log and `jwtgate check`.
    ignored: Vec<(String, String)>,
}

/// Why a token's grant claims cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("the token has neither a {topics:?} nor an {acl:?} claim")]
    Missing { topics: String, acl: String },
    #[error("the {0:?} claim is neither a topic filter nor a list of them")]
    BadTopics(String),
    #[error("the {claim:?} claim is neither an object of pub/sub/all lists nor a list of rules")]
    BadAcl { claim: String },
    #[error("in the {claim:?} claim, \"{key}\" must be a list of topic filters")]
    BadAclList { claim: String, key: String },
    /// `index` counts from 0, as in the JSON array.
    #[error("rule {index} of the {claim:?} claim: {why}")]
    BadRule {
        claim: String,
        index: usize,
        why: String,
    },
}

/// The names of the two claims grants are read from.
#[derive(Debug, Clone, Copy)]
pub struct ClaimNames<'a> {
    pub topics: &'a str,
    pub acl: &'a str,
}

impl GrantTemplate {
    /// Reads the grant claims of a verified token.
    pub fn from_claims(
        topics: Option<&Value>,
        acl: Option<&Value>,
        names: ClaimNames<'_>,
    ) -> Result<GrantTemplate, ClaimError> {
        let mut template = GrantTemplate::default();
        if topics.is_none() && acl.is_none() {
            return Err(ClaimError::Missing {
                topics: names.topics.to_owned(),
                acl: names.acl.to_owned(),
            });
        }
        if let Some(value) = topics {
            let rules = strings(value)
                .ok_or_else(|| ClaimError::BadTopics(names.topics.to_owned()))?
                .into_iter()
                .map(|topic| TemplateRule::allow(Action::All, topic))
                .collect();
            template.lists.push(TemplateList {
                form: ClaimForm::Topics,
                rules,
            });
        }
        match acl {
            None => {}
            Some(Value::Object(lists)) => {
                let mut rules = Vec::new();
                for (key, value) in lists {
                    let action = match key.as_str() {
                        "pub" => Action::Publish,
                        "sub" => Action::Subscribe,
                        "all" => Action::All,
                        _ => {
                            template.ignored.push((
                                key.clone(),
                                format!("not a key of the {:?} claim (pub, sub, all)", names.acl),
                            ));
                            continue;
                        }
                    };
                    let topics = strings(value).ok_or_else(|| ClaimError::BadAclList {
                        claim: names.acl.to_owned(),
                        key: key.clone(),
                    })?;
                    rules.extend(topics.into_iter().map(|t| TemplateRule::allow(action, t)));
                }
                template.lists.push(TemplateList {
                    form: ClaimForm::AclObject,
                    rules,
                });
            }
            Some(Value::Array(entries)) => {
                let rules = entries
                    .iter()
                    .enumerate()
                    .map(|(index, entry)| {
                        rule(entry).map_err(|why| ClaimError::BadRule {
                            claim: names.acl.to_owned(),
                            index,
                            why,
                        })
                    })
                    .collect::<Result<_, _>>()?;
                template.lists.push(TemplateList {
                    form: ClaimForm::AclRules,
                    rules,
                });
            }
            Some(_) => {
                return Err(ClaimError::BadAcl {
                    claim: names.acl.to_owned(),
                });
            }
        }
        Ok(template)
    }

    /// A template with one `topics`-style list: what tests and development
    /// tokens grant.
    pub fn from_topics<S: AsRef<str>>(topics: impl IntoIterator<Item = S>) -> GrantTemplate {
        GrantTemplate {
            lists: vec![TemplateList {
                form: ClaimForm::Topics,
                rules: topics
                    .into_iter()
                    .map(|t| TemplateRule::allow(Action::All, t.as_ref()))
                    .collect(),
            }],
            ignored: Vec::new(),
        }
    }

    pub fn lists(&self) -> &[TemplateList] {
        &self.lists
    }

    /// Claim entries skipped while reading, with why.
    pub fn ignored(&self) -> &[(String, String)] {
        &self.ignored
    }

    /// Resolves the placeholders for one connection.
    pub fn bind(&self, values: &Bindings<'_>) -> Result<Bound, BindError> {
        let mut lists = Vec::with_capacity(self.lists.len());
        let mut dropped = Vec::new();
        for list in &self.lists {
            let mut rules = Vec::with_capacity(list.rules.len());
            for template in &list.rules {
                match template.bind(values) {
                    Ok(rule) => rules.push(rule),
                    Err(reason) if template.permission == Permission::Allow => {
                        dropped.push(Dropped {
                            topic: template.written(),
                            reason,
                        });
                    }
                    Err(reason) => {
                        return Err(BindError {
                            topic: template.written(),
                            reason,
                        });
                    }
                }
            }
            if list.form == ClaimForm::Topics {
                // All allow, so order means nothing: kept sorted and
                // without repeats, as `jwtgate check` shows them.
                rules.sort_by(|a, b| a.topic.cmp(&b.topic));
                rules.dedup();
            }
            lists.push(RuleList::new(rules));
        }
        Ok(Bound {
            grants: Grants::from_lists(lists),
            dropped,
        })
    }
}

impl TemplateRule {
    /// The topic as the token wrote it.
    pub fn written(&self) -> String {
        if self.exact {
            format!("{EXACT_PREFIX}{}", self.topic)
        } else {
            self.topic.clone()
        }
    }
}

impl fmt::Display for TemplateRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Shown like a bound rule, placeholders as written.
        let shown = Rule {
            permission: self.permission,
            action: self.action,
            topic: if self.exact {
                RuleTopic::Exact(self.topic.clone())
            } else {
                match TopicFilter::parse(&self.topic) {
                    Ok(filter) => RuleTopic::Filter(filter),
                    Err(_) => return write!(f, "{:?} (not a topic filter)", self.topic),
                }
            },
            qos: self.qos,
            retain: self.retain,
        };
        shown.fmt(f)
    }
}

/// One EMQX rule-list entry.
fn rule(entry: &Value) -> Result<TemplateRule, String> {
    let Value::Object(fields) = entry else {
        return Err("not an object".to_owned());
    };
    let text = |name: &str| -> Result<&str, String> {
        match fields.get(name) {
            Some(Value::String(value)) => Ok(value),
            Some(_) => Err(format!("\"{name}\" must be a string")),
            None => Err(format!("\"{name}\" is missing")),
        }
    };
    let permission = match text("permission")? {
        "allow" => Permission::Allow,
        "deny" => Permission::Deny,
        other => return Err(format!("\"permission\" is {other:?}, not allow or deny")),
    };
    let action = match text("action")? {
        "publish" => Action::Publish,
        "subscribe" => Action::Subscribe,
        "all" => Action::All,
        other => {
            return Err(format!(
                "\"action\" is {other:?}, not publish, subscribe or all"
            ));
        }
    };
    let mut template = TemplateRule::allow(action, text("topic")?);
    template.permission = permission;
    template.qos = match fields.get("qos") {
        None => QosLevels::ALL,
        Some(Value::Array(levels)) => levels
            .iter()
            .map(Value::as_u64)
            .collect::<Option<Vec<_>>>()
            .and_then(QosLevels::from_levels)
            .ok_or("\"qos\" must be a list of 0, 1 and 2")?,
        Some(_) => return Err("\"qos\" must be a list of 0, 1 and 2".to_owned()),
    };
    template.retain = match fields.get("retain") {
        None => None,
        Some(Value::Bool(retain)) => Some(*retain),
        Some(_) => return Err("\"retain\" must be true or false".to_owned()),
    };
    for key in fields.keys() {
        if !matches!(
            key.as_str(),
            "permission" | "action" | "topic" | "qos" | "retain"
        ) {
            // A condition jwtgate does not know (EMQX's clientid_re,
            // ipaddr...) would make the rule apply more widely if ignored.
            return Err(format!("\"{key}\" is not a field jwtgate knows"));
        }
    }
    Ok(template)
}

/// A string or a list of strings.
fn strings(value: &Value) -> Option<Vec<&str>> {
    match value {
        Value::String(one) => Some(vec![one]),
        Value::Array(many) => many.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

/// What the placeholders of one connection stand for.
#[derive(Debug, Clone, Copy)]
pub struct Bindings<'a> {
    /// The connection's client id when it is bound to the token
    /// ([`crate::config::ClientIdBinding::bind`]); `None` leaves `${clientid}`
    /// without a value.
    pub client_id: Option<&'a str>,
    /// The token's `sub`.
    pub subject: Option<&'a str>,
    /// The CONNECT's user name: always `JWT` when the token came as the
    /// password; none when it came as MQTT 5 authentication data without
    /// a user name.
    pub username: Option<&'a str>,
}

/// A token's grants bound to one connection.
#[derive(Debug, Clone)]
pub struct Bound {
    pub grants: Grants,
    /// Allow rules left out, with why; for the log.
    pub dropped: Vec<Dropped>,
}

/// An allow rule that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub topic: String,
    pub reason: GrantError,
}

/// A deny rule that could not be used: the connection must be refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the deny rule on {topic:?} cannot be applied ({reason}), so the token cannot be honoured")]
pub struct BindError {
    pub topic: String,
    pub reason: GrantError,
}

/// Why one grant is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error(transparent)]
    Filter(FilterError),
    #[error(
        "unknown placeholder ${{{0}}}; jwtgate knows ${{clientid}}, ${{sub}} and ${{username}}"
    )]
    UnknownPlaceholder(String),
    #[error("${{{0}}} has no value on this connection")]
    NoValue(&'static str),
    #[error(
        "${{clientid}} stands only for a client id bound to the token (named by its \"clientid\" \
         claim, or equal to its \"sub\", and not starting with '$'); this one is not"
    )]
    UnboundClientId,
    #[error("the value of ${{{0}}} holds '/', '+', '#' or NUL, which would change the filter")]
    UnsafeValue(&'static str),
}

/// Replaces every `${name}` in `topic`. A `${` without a closing `}` is
/// taken literally.
fn substitute(topic: &str, values: &Bindings<'_>) -> Result<String, GrantError> {
    let mut out = String::with_capacity(topic.len());
    let mut rest = topic;
    while let Some(start) = rest.find("${") {
        let (before, from) = rest.split_at(start);
        out.push_str(before);
        let Some(end) = from.find('}') else {
            rest = from;
            break;
        };
        let name = from.get(2..end).unwrap_or_default();
        let (label, value) = match name {
            "clientid" => (
                "clientid",
                Some(values.client_id.ok_or(GrantError::UnboundClientId)?),
            ),
            "sub" => ("sub", values.subject),
            "username" => ("username", values.username),
            other => return Err(GrantError::UnknownPlaceholder(other.to_owned())),
        };
        let value = value
            .filter(|v| !v.is_empty())
            .ok_or(GrantError::NoValue(label))?;
        if value.contains(['/', '+', '#', '\0']) {
            return Err(GrantError::UnsafeValue(label));
        }
        out.push_str(value);
        rest = from.get(end + 1..).unwrap_or_default();
    }
    out.push_str(rest);
    Ok(out)
}
