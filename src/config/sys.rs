//! The `[sys]` table: the `$SYS/broker/...` figures Mosquitto's operators
//! read with `mosquitto_sub`, published as retained messages.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::document::{ConfigError, Document};

/// The shortest `[sys] interval_secs`: a figure refreshed more often only
/// costs the subscribers' links.
const MIN_INTERVAL_SECS: i64 = 1;

/// `$SYS` publishing. Off by default, as in Mosquitto before a
/// `sys_interval` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SysConfig {
    /// `[sys] interval_secs`: how often the figures are published; `None`
    /// (the default, or `0`) publishes none.
    pub interval: Option<Duration>,
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "the [sys] table")]
pub(super) struct RawSys {
    interval_secs: Option<Spanned<i64>>,
}

impl RawSys {
    pub(super) fn validate(self, doc: &Document<'_>) -> Result<SysConfig, ConfigError> {
        let Some(interval) = &self.interval_secs else {
            return Ok(SysConfig::default());
        };
        if *interval.get_ref() == 0 {
            return Ok(SysConfig::default());
        }
        let interval = doc.seconds(interval, "[sys] interval_secs", MIN_INTERVAL_SECS)?;
        Ok(SysConfig {
            interval: Some(interval),
        })
    }
}
