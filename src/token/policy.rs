//! The verification policy: the fixed size limit on a token, and what the
//! configuration asks of the rest (algorithms, `kid`, `exp`, subject,
//! leeway, issuer, audience, lifetime, client id binding), with the
//! warnings an operator should hear about it.

use std::fmt;
use std::path::PathBuf;

use jsonwebtoken::{Algorithm, AlgorithmFamily};

use crate::config::AuthConfig;
use crate::config::ClientIdBinding;
use crate::keys::KeySet;

/// Longest accepted token, in bytes. A CONNECT password beyond this is
/// refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// How tokens are judged; built once from the configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(super) topics_claim: String,
    pub(super) acl_claim: String,
    pub(super) leeway: u64,
    pub(super) issuer: Option<String>,
    /// One of these must be in `aud`; `None` leaves `aud` unchecked.
    pub(super) audience: Option<Vec<String>>,
    pub(super) require_kid: bool,
    pub(super) require_exp: bool,
    pub(super) require_subject: bool,
    pub(super) max_lifetime: Option<u64>,
    /// `None` accepts every algorithm some key allows.
    algorithms: Option<Vec<Algorithm>>,
    client_id_binding: ClientIdBinding,
    require_certificate_binding: bool,
}

impl Policy {
    /// Takes the configuration as it is: [`AuthConfig`] is validated when it
    /// is parsed. Sub-second parts of the durations are dropped (JWT times
    /// are whole seconds), which only makes the lifetime cap stricter.
    pub fn from_config(auth: &AuthConfig) -> Policy {
        Policy {
            topics_claim: auth.topics_claim.clone(),
            acl_claim: auth.acl_claim.clone(),
            leeway: auth.leeway.as_secs(),
            issuer: auth.issuer.clone(),
            audience: auth.audience.clone(),
            require_kid: auth.require_kid,
            require_exp: auth.require_exp,
            require_subject: auth.require_subject,
            max_lifetime: auth.max_token_lifetime.map(|max| max.as_secs()),
            algorithms: auth.algorithms.clone(),
            client_id_binding: auth.client_id_binding,
            require_certificate_binding: auth.require_certificate_binding,
        }
    }

    /// `[auth] require_certificate_binding`: tokens without `cnf` refused.
    pub fn requires_certificate_binding(&self) -> bool {
        self.require_certificate_binding
    }

    /// What ties a connection's client id to its token, for `${clientid}`.
    pub fn client_id_binding(&self) -> ClientIdBinding {
        self.client_id_binding
    }

    pub(super) fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms
            .as_ref()
            .is_none_or(|algorithms| algorithms.contains(&alg))
    }

    /// What is unsafe about judging tokens by this policy with `keys`, for
    /// the operator to hear at start and from `jwtgate check`.
    pub fn warnings(&self, keys: &KeySet) -> Vec<PolicyWarning> {
        let mut warnings = Vec::new();
        if self.audience.is_none() {
            // Public keys are an identity provider's (a JWKS); what it signs
            // for one application verifies for all of them.
            let mut files: Vec<PathBuf> = keys
                .iter()
                .filter(|key| {
                    key.algorithms()
                        .iter()
                        .any(|&alg| alg.family() != AlgorithmFamily::Hmac && self.allows(alg))
                })
                .map(|key| key.source().to_path_buf())
                .collect();
            files.sort();
            files.dedup();
            if !files.is_empty() {
                warnings.push(PolicyWarning::NoAudience { files });
            }
        }
        if self.client_id_binding == ClientIdBinding::Unchecked {
            warnings.push(PolicyWarning::UnboundClientId);
        }
        warnings
    }
}

/// A weakness of a [`Policy`] given the keys in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyWarning {
    /// Public keys are in force and `[auth] audience` is unset (RFC 8725
    /// §3.9): a token the provider issued to any of its applications is
    /// accepted if it carries a topics claim.
    NoAudience {
        /// The files holding those keys, sorted.
        files: Vec<PathBuf>,
    },
    /// `[auth] client_id_binding = "none"`: `${clientid}` takes whatever
    /// client id a device gives.
    UnboundClientId,
}

impl fmt::Display for PolicyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyWarning::NoAudience { files } => {
                f.write_str(
                    "[auth] audience is unset while public keys (an identity provider's JWKS: ",
                )?;
                for (i, file) in files.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", file.display())?;
                }
                f.write_str(
                    ") are in force: any token that provider signs with a topics claim is \
                     accepted, whichever application it was issued to; set [auth] audience \
                     to the \"aud\" of this gateway's tokens (RFC 8725 §3.9)",
                )
            }
            PolicyWarning::UnboundClientId => f.write_str(
                "[auth] client_id_binding = \"none\": ${clientid} in grants takes any client id \
                 a device connects with, so a device can use another's ${clientid} topics by \
                 using its client id; give tokens a \"clientid\" claim (or sub equal to the \
                 client id) and remove the setting",
            ),
        }
    }
}
