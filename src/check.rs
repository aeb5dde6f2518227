//! The offline token check behind `jwtgate check`: would the gateway accept
//! this token right now, and what would it grant?
//!
//! It runs the same verification as a CONNECT ([`token::verify`] against the
//! keys directory, then the rule that a token must grant at least one topic
//! filter), so an operator can debug a refused device on the edge box
//! without a network and without the device.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::keys::KeySet;
use crate::token::{self, Policy};

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
    /// The granted topic filters.
    pub topics: Vec<String>,
    /// Entries of the topics claim that are not valid filters, with why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rejected_topics: Vec<RejectedTopic>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RejectedTopic {
    pub filter: String,
    pub reason: String,
}

/// Checks `token` as the gateway would at CONNECT.
pub fn check(token: &str, keys: &KeySet, policy: &Policy) -> CheckReport {
    let verified = match token::verify(token.trim(), keys, policy) {
        Ok(verified) => verified,
        Err(e) => {
            return CheckReport {
                accepted: false,
                reason: Some(e.to_string()),
                key_id: e.key_id().map(str::to_owned),
                key_file: None,
                subject: None,
                expires_at: None,
                topics: Vec::new(),
                rejected_topics: Vec::new(),
            };
        }
    };
    let may_connect = verified.grants.may_connect();
    CheckReport {
        accepted: may_connect,
        reason: (!may_connect).then(|| "the token grants no topics".to_owned()),
        key_id: Some(verified.key_id),
        key_file: Some(verified.key_file),
        subject: verified.subject,
        expires_at: verified.expires_at,
        topics: verified
            .grants
            .filters()
            .iter()
            .map(|f| f.as_str().to_owned())
            .collect(),
        rejected_topics: verified
            .rejected_filters
            .into_iter()
            .map(|(filter, why)| RejectedTopic {
                filter,
                reason: why.to_string(),
            })
            .collect(),
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
        if !self.topics.is_empty() {
            writeln!(f, "topics:   {}", self.topics.join(", "))?;
        }
        for rejected in &self.rejected_topics {
            writeln!(
                f,
                "ignored:  {:?} is not a topic filter ({})",
                rejected.filter, rejected.reason
            )?;
        }
        Ok(())
    }
}
