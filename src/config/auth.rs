//! The `[auth]` table: how device tokens are verified, and what a refused
//! publish costs.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

use super::document::{ConfigError, Document, line_column};

/// The names `jsonwebtoken::Algorithm::from_str` accepts, for error messages.
pub(super) const ALGORITHM_NAMES: &str =
    "HS256, HS384, HS512, ES256, ES384, RS256, RS384, RS512, PS256, PS384, PS512, EdDSA";

/// How device tokens are verified and what a refused publish costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Directory holding the verification keys (already resolved).
    pub keys_dir: PathBuf,
    /// Name of the claim listing the topic filters a device may use; never
    /// empty.
    pub topics_claim: String,
    /// Name of the claim holding EMQX-style ACL rules; never empty, never
    /// the topics claim.
    pub acl_claim: String,
    /// Clock-skew allowance applied to `exp` and `nbf`.
    pub leeway: Duration,
    /// Required `iss`, when set; never empty.
    pub issuer: Option<String>,
    /// Accepted `aud` values, when set; never an empty list.
    pub audience: Option<Vec<String>>,
    /// Reject tokens without a `kid` header.
    pub require_kid: bool,
    /// Reject tokens without an `exp` claim.
    pub require_exp: bool,
    /// Reject tokens without a non-empty `sub` claim. Sessions are keyed by
    /// subject and client id, so devices without a subject would share one
    /// namespace and could take over each other's sessions.
    pub require_subject: bool,
    /// Longest accepted `exp - iat`, when set; never zero.
    pub max_token_lifetime: Option<Duration>,
    /// Accepted signature algorithms, when set; never an empty list.
    pub algorithms: Option<Vec<Algorithm>>,
    /// What happens to a connection after a refused PUBLISH.
    pub deny_publish: DenyPublish,
    /// What ties a client id to a token, for `${clientid}` in grants.
    pub client_id_binding: ClientIdBinding,
    /// `[auth] require_certificate_binding`: refuse tokens without a `cnf`
    /// binding them to the connection's client certificate (RFC 8705);
    /// a token with one is held to it either way.
    pub require_certificate_binding: bool,
}

/// What happens to a connection after the gateway refuses one of its
/// PUBLISH packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DenyPublish {
    /// Discard the packet (with a negative acknowledgement where the
    /// protocol has one) and keep the connection.
    #[default]
    Drop,
    /// Close the connection.
    Disconnect,
}

/// `[auth] client_id_binding`: what ties a client id to a token. The
/// setting is read here; what it means for `${clientid}` is
/// [`crate::acl::client_id`]'s business (`ClientIdBinding::bind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientIdBinding {
    /// The token's `clientid` claim must equal the client id when present;
    /// `${clientid}` resolves when it does, or when the client id is the
    /// token's `sub`.
    #[default]
    ClaimOrSubject,
    /// Any client id resolves `${clientid}`; a `clientid` claim is ignored.
    #[serde(rename = "none")]
    Unchecked,
}

impl AuthConfig {
    /// The built-in `[auth]`, with the keys in `base_dir/keys`.
    pub(super) fn defaults(base_dir: &Path) -> AuthConfig {
        AuthConfig {
            keys_dir: base_dir.join("keys"),
            topics_claim: "topics".to_owned(),
            acl_claim: "acl".to_owned(),
            leeway: Duration::from_secs(5),
            issuer: None,
            audience: None,
            // The development HS256 tokens carry no kid.
            require_kid: false,
            require_exp: true,
            require_subject: true,
            max_token_lifetime: None,
            algorithms: None,
            deny_publish: DenyPublish::Drop,
            client_id_binding: ClientIdBinding::ClaimOrSubject,
            require_certificate_binding: false,
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [auth] table")]
pub(super) struct RawAuth {
    keys_dir: Option<Spanned<PathBuf>>,
    topics_claim: Option<Spanned<String>>,
    acl_claim: Option<Spanned<String>>,
    leeway_secs: Option<Spanned<i64>>,
    issuer: Option<Spanned<String>>,
    audience: Option<Spanned<Audience>>,
    require_kid: Option<bool>,
    require_exp: Option<bool>,
    require_subject: Option<bool>,
    max_token_lifetime_secs: Option<Spanned<i64>>,
    algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    deny_publish: Option<Spanned<DenyPublish>>,
    client_id_binding: Option<Spanned<ClientIdBinding>>,
    require_certificate_binding: Option<bool>,
}

/// `audience` is written either as one string or as a list of strings.
struct Audience(Vec<String>);

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AudienceVisitor;

        impl<'de> Visitor<'de> for AudienceVisitor {
            type Value = Audience;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Audience, E> {
                Ok(Audience(vec![value.to_owned()]))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Audience, A::Error> {
                let mut values = Vec::new();
                while let Some(value) = seq.next_element::<String>()? {
                    values.push(value);
                }
                Ok(Audience(values))
            }
        }

        deserializer.deserialize_any(AudienceVisitor)
    }
}

impl RawAuth {
    /// Checks the table into `auth`; `top_level_deny_publish` is the
    /// compatibility alias for `deny_publish` written outside `[auth]`.
    pub(super) fn validate(
        self,
        doc: &Document<'_>,
        base_dir: &Path,
        top_level_deny_publish: Option<Spanned<DenyPublish>>,
        auth: &mut AuthConfig,
    ) -> Result<(), ConfigError> {
        let deny_publish = match (top_level_deny_publish, &self.deny_publish) {
            (Some(top), Some(auth)) => {
                let (auth_line, _) = line_column(doc.text, auth.span().start);
                return Err(doc.bad(
                    &top,
                    "deny_publish",
                    format!(
                        "given both at the top level and as [auth] deny_publish (line \
                         {auth_line}); keep only [auth] deny_publish"
                    ),
                ));
            }
            (Some(top), None) => Some(top.into_inner()),
            (None, auth) => auth.as_ref().map(|auth| *auth.get_ref()),
        };
        if let Some(deny_publish) = deny_publish {
            auth.deny_publish = deny_publish;
        }
        if let Some(keys_dir) = &self.keys_dir {
            auth.keys_dir = doc.path(keys_dir, "[auth] keys_dir", base_dir)?;
        }
        if let Some(claim) = self.topics_claim {
            if claim.get_ref().is_empty() {
                return Err(doc.bad(&claim, "[auth] topics_claim", "must not be empty"));
            }
            if self.acl_claim.is_none() && *claim.get_ref() == auth.acl_claim {
                return Err(doc.bad(
                    &claim,
                    "[auth] topics_claim",
                    "must differ from [auth] acl_claim (default \"acl\")",
                ));
            }
            auth.topics_claim = claim.into_inner();
        }
        if let Some(claim) = self.acl_claim {
            if claim.get_ref().is_empty() {
                return Err(doc.bad(&claim, "[auth] acl_claim", "must not be empty"));
            }
            if *claim.get_ref() == auth.topics_claim {
                return Err(doc.bad(
                    &claim,
                    "[auth] acl_claim",
                    "must differ from [auth] topics_claim",
                ));
            }
            auth.acl_claim = claim.into_inner();
        }
        if let Some(leeway) = &self.leeway_secs {
            auth.leeway = doc.seconds(leeway, "[auth] leeway_secs", 0)?;
        }
        if let Some(issuer) = self.issuer {
            if issuer.get_ref().is_empty() {
                return Err(doc.bad(
                    &issuer,
                    "[auth] issuer",
                    "must not be empty (leave it out to accept any issuer)",
                ));
            }
            auth.issuer = Some(issuer.into_inner());
        }
        if let Some(audience) = self.audience {
            let values = &audience.get_ref().0;
            if values.is_empty() {
                return Err(doc.bad(
                    &audience,
                    "[auth] audience",
                    "must not be an empty list (leave it out to accept any audience)",
                ));
            }
            if values.iter().any(String::is_empty) {
                return Err(doc.bad(
                    &audience,
                    "[auth] audience",
                    "must not contain an empty string",
                ));
            }
            auth.audience = Some(audience.into_inner().0);
        }
        if let Some(require_kid) = self.require_kid {
            auth.require_kid = require_kid;
        }
        if let Some(require_exp) = self.require_exp {
            auth.require_exp = require_exp;
        }
        if let Some(required) = self.require_certificate_binding {
            auth.require_certificate_binding = required;
        }
        if let Some(require_subject) = self.require_subject {
            auth.require_subject = require_subject;
        }
        if let Some(binding) = self.client_id_binding {
            auth.client_id_binding = binding.into_inner();
        }
        if let Some(lifetime) = &self.max_token_lifetime_secs {
            auth.max_token_lifetime =
                Some(doc.seconds(lifetime, "[auth] max_token_lifetime_secs", 1)?);
        }
        if let Some(names) = &self.algorithms {
            if names.get_ref().is_empty() {
                return Err(doc.bad(
                    names,
                    "[auth] algorithms",
                    "must not be an empty list (leave it out to accept every algorithm \
                     the keys support)",
                ));
            }
            let algorithms = names
                .get_ref()
                .iter()
                .map(|name| {
                    name.get_ref().parse::<Algorithm>().map_err(|_| {
                        doc.bad(
                            name,
                            "[auth] algorithms",
                            format!(
                                "unknown algorithm `{}`, expected one of {ALGORITHM_NAMES}",
                                name.get_ref()
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            auth.algorithms = Some(algorithms);
        }
        Ok(())
    }
}
