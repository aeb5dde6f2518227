//! Topic filters and topic names: what MQTT allows in them, and the two
//! relations authorization is built from.
//!
//! - [`TopicFilter::matches_topic`]: the filter matches a topic name;
//! - [`TopicFilter::covers`]: every topic one filter matches, the other
//!   matches too (a subscription stays within a grant);
//! - [`TopicFilter::intersects`]: some topic is matched by both (a deny
//!   rule reaches into a subscription).
//!
//! Filters are compared as sets of topics, never as strings. The `$` rule
//! and the cost of matching are described in [`crate::acl`].

// Untrusted input (topics and filters come from clients and from token
// claims): fail with an error, never a panic. Tests are exempt through
// clippy.toml; an exception in this code carries an `#[allow]` saying why it
// cannot fail. See "Robustness" in the crate docs.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::fmt;

/// The longest topic name or filter MQTT can carry: a UTF-8 string field has
/// a two-byte length prefix.
const MAX_LEN: usize = 65535;

/// The prefix that turns a SUBSCRIBE filter into a shared subscription.
const SHARE_PREFIX: &str = "$share/";

/// How deep and how long a topic name or filter a client may use
/// (`[limits] max_topic_levels` and `max_topic_bytes`).
///
/// MQTT bounds a topic only by its 65535-byte length field, which allows
/// 32,768 levels: enough to make every walk over topic levels, and every
/// trie node per level, the attacker's lever. The connection layer checks
/// these limits on every PUBLISH topic, SUBSCRIBE and UNSUBSCRIBE filter
/// and will topic before anything else sees them, the bridge on what it
/// receives, and the storage on what it restores, so nothing deeper or
/// longer ever reaches the routing core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLimits {
    /// Levels (`/`-separated parts) at most.
    pub max_levels: usize,
    /// Bytes at most, `$share/{group}/` included for a shared subscription.
    pub max_bytes: usize,
}

impl TopicLimits {
    /// EMQX's default depth; a length no device topic comes near.
    pub const DEFAULT: TopicLimits = TopicLimits {
        max_levels: 128,
        max_bytes: 4096,
    };

    /// Whether `s` (a topic name, or the filter part of a request whose
    /// whole length is `len`) stays within the limits.
    fn check(&self, levels_of: &str, len: usize) -> Result<(), LimitError> {
        if len > self.max_bytes {
            return Err(LimitError::TooLong {
                len,
                max: self.max_bytes,
            });
        }
        let levels = levels_of.bytes().filter(|&b| b == b'/').count() + 1;
        if levels > self.max_levels {
            return Err(LimitError::TooDeep {
                levels,
                max: self.max_levels,
            });
        }
        Ok(())
    }

    /// Checks a topic name: valid for MQTT, and within these limits.
    pub fn topic_name(&self, topic: &str) -> Result<(), TopicError> {
        validate_topic_name(topic)?;
        self.check(topic, topic.len()).map_err(TopicError::Limit)
    }

    /// Parses a SUBSCRIBE or UNSUBSCRIBE filter: valid for MQTT, and
    /// within these limits.
    pub fn requested<'a>(&self, requested: &'a str) -> Result<RequestedFilter<'a>, FilterError> {
        // The cheap bounds first: an oversized filter is not scanned twice.
        if requested.len() > self.max_bytes {
            return Err(FilterError::Limit(LimitError::TooLong {
                len: requested.len(),
                max: self.max_bytes,
            }));
        }
        let parsed = RequestedFilter::parse(requested)?;
        self.check(parsed.filter, requested.len())
            .map_err(FilterError::Limit)?;
        Ok(parsed)
    }
}

impl Default for TopicLimits {
    fn default() -> Self {
        TopicLimits::DEFAULT
    }
}

/// How a topic or filter breaks the gateway's [`TopicLimits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("{levels} levels; this gateway allows at most {max} ([limits] max_topic_levels)")]
    TooDeep { levels: usize, max: usize },
    #[error("{len} bytes; this gateway allows at most {max} ([limits] max_topic_bytes)")]
    TooLong { len: usize, max: usize },
}

/// A validated MQTT topic filter.
///
/// It can only be built by [`TopicFilter::parse`], so holding one means the
/// filter obeys every MQTT rule: matching never has to cope with a `#` in the
/// middle or a `+` glued to other characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(String);

/// Why a string is not a valid topic filter (or not a grantable one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("empty topic filter")]
    Empty,
    #[error("topic filter is {len} bytes long; MQTT allows at most 65535")]
    TooLong { len: usize },
    #[error("topic filter contains the NUL character (U+0000)")]
    Nul,
    #[error("`#` may only be the last level of a topic filter")]
    MultiLevelNotLast,
    /// `level` counts from 1.
    #[error(
        "level {level} mixes a wildcard (`+` or `#`) with other characters; a wildcard must be a whole level"
    )]
    WildcardInLevel { level: usize },
    #[error(
        "`$share/...` is a shared-subscription request, not a grantable filter; grant the filter after the group name instead"
    )]
    SharedSubscription,
    #[error(
        "a shared subscription needs `$share/{{group}}/{{filter}}` with a group free of wildcards"
    )]
    BadShareGroup,
    #[error("topic filter over the limit: {0}")]
    Limit(LimitError),
}

/// Why a string is not a valid topic name (the topic of a PUBLISH).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("empty topic name")]
    Empty,
    #[error("topic name is {len} bytes long; MQTT allows at most 65535")]
    TooLong { len: usize },
    #[error("topic name contains the NUL character (U+0000)")]
    Nul,
    #[error("topic name contains the wildcard `{0}`; wildcards are only allowed in filters")]
    Wildcard(char),
    #[error("topic name over the limit: {0}")]
    Limit(LimitError),
}

impl TopicFilter {
    /// Parses a topic filter, saying which MQTT rule it breaks if it is not
    /// valid.
    pub fn parse(s: &str) -> Result<Self, FilterError> {
        Filter::parse(s).map(|f| TopicFilter(f.0.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this filter matches the topic name `topic`.
    ///
    /// A string that is not a valid topic name (empty, too long, or holding a
    /// NUL or wildcard) is matched by nothing, so no caller can be tricked
    /// into treating `a/+` as a concrete topic.
    pub fn matches_topic(&self, topic: &str) -> bool {
        validate_topic_name(topic).is_ok() && self.view().matches(topic)
    }

    /// Whether every topic that `other` matches is also matched by `self`:
    /// the rule that decides if a subscription to `other` stays within a
    /// grant of `self`.
    pub fn covers(&self, other: &TopicFilter) -> bool {
        self.view().covers(other.view())
    }

    /// Whether some topic is matched by both filters: the rule that decides
    /// if a deny grant reaches into a subscription.
    pub fn intersects(&self, other: &TopicFilter) -> bool {
        self.view().intersects(other.view())
    }

    pub(crate) fn view(&self) -> Filter<'_> {
        Filter(&self.0)
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `topic` is the server's own: its first level starts with `$`
/// (`$SYS/...`), which MQTT (3.1.1 and 5, §4.7.2) reserves for the
/// server. No client publishes there, whatever its grants ([`crate::acl`]),
/// and the gateway's own figures there last only as long as the process.
pub fn is_server_topic(topic: &str) -> bool {
    topic.starts_with('$')
}

/// Checks that `topic` may be used as the topic of a PUBLISH.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > MAX_LEN {
        return Err(TopicError::TooLong { len: topic.len() });
    }
    // All three are ASCII, which never occurs inside a multi-byte UTF-8
    // sequence, so scanning bytes is exact and cheaper than decoding chars.
    match topic.bytes().find(|b| matches!(b, b'\0' | b'+' | b'#')) {
        Some(b'\0') => Err(TopicError::Nul),
        Some(wildcard) => Err(TopicError::Wildcard(char::from(wildcard))),
        None => Ok(()),
    }
}

/// A borrowed filter that has passed validation. It lets a SUBSCRIBE request
/// be checked in place, without copying it into a [`TopicFilter`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Filter<'a>(&'a str);

impl<'a> Filter<'a> {
    fn parse(s: &'a str) -> Result<Self, FilterError> {
        if s.is_empty() {
            return Err(FilterError::Empty);
        }
        if s.len() > MAX_LEN {
            return Err(FilterError::TooLong { len: s.len() });
        }
        if s.contains('\0') {
            return Err(FilterError::Nul);
        }
        let mut levels = s.split('/').enumerate().peekable();
        while let Some((index, level)) = levels.next() {
            match level {
                "+" => {}
                "#" if levels.peek().is_some() => return Err(FilterError::MultiLevelNotLast),
                "#" => {}
                _ if level.contains(['+', '#']) => {
                    return Err(FilterError::WildcardInLevel { level: index + 1 });
                }
                _ => {}
            }
        }
        Ok(Filter(s))
    }

    /// The `$` rule hinges on this: only a first-level wildcard is kept away
    /// from `$` topics. A valid filter starting with `+` or `#` has that
    /// wildcard as its whole first level.
    fn starts_with_wildcard(self) -> bool {
        self.0.starts_with(['+', '#'])
    }

    /// `topic` must already be a valid topic name.
    pub(crate) fn matches(self, topic: &str) -> bool {
        if self.starts_with_wildcard() && topic.starts_with('$') {
            return false;
        }
        let mut topic_levels = topic.split('/');
        for level in self.0.split('/') {
            match level {
                // `#` also matches the parent level, so running out of topic
                // levels here is still a match.
                "#" => return true,
                "+" => {
                    if topic_levels.next().is_none() {
                        return false;
                    }
                }
                literal => {
                    if topic_levels.next() != Some(literal) {
                        return false;
                    }
                }
            }
        }
        topic_levels.next().is_none()
    }

    pub(crate) fn covers(self, other: Filter<'_>) -> bool {
        if self.starts_with_wildcard() && other.0.starts_with('$') {
            // `other` names a `$` topic literally; `self` cannot match it.
            return false;
        }
        let mut theirs = other.expanded().split('/');
        for ours in self.0.split('/') {
            match ours {
                "#" => return true,
                "+" => match theirs.next() {
                    // Their `#` matches the parent level too, which has no
                    // level here at all (`expanded` handles the exceptions).
                    Some("#") | None => return false,
                    Some(_) => {}
                },
                literal => {
                    if theirs.next() != Some(literal) {
                        return false;
                    }
                }
            }
        }
        theirs.next().is_none()
    }

    pub(crate) fn intersects(self, other: Filter<'_>) -> bool {
        // A first-level wildcard keeps away from `$` topics, so a filter
        // starting with one shares nothing with one that names a `$` level.
        if (self.starts_with_wildcard() && other.0.starts_with('$'))
            || (other.starts_with_wildcard() && self.0.starts_with('$'))
        {
            return false;
        }
        let mut ours = self.0.split('/');
        let mut theirs = other.0.split('/');
        // Whether the common topic so far is the empty string: one level,
        // fixed to "" by a literal. A `#` cannot stand for its parent then.
        let mut levels = 0;
        let mut first_is_empty = false;
        loop {
            let parent_is_topic = !(levels == 1 && first_is_empty);
            match (ours.next(), theirs.next()) {
                (None, None) => return true,
                (Some("#"), None) | (None, Some("#")) => return parent_is_topic,
                (None, Some(_)) | (Some(_), None) => return false,
                (Some("#"), Some(_)) | (Some(_), Some("#")) => return true,
                (Some(a), Some(b)) => {
                    let level = match (a, b) {
                        ("+", "+") => "x",
                        ("+", literal) | (literal, "+") => literal,
                        (a, b) if a == b => a,
                        _ => return false,
                    };
                    if levels == 0 {
                        first_is_empty = level.is_empty();
                    }
                    levels += 1;
                }
            }
        }
    }

    /// `self`, spelled so that no `#` stands where its parent would be the
    /// empty string.
    ///
    /// A `#` also matches its parent: the topic made of the levels before
    /// it. When those levels spell the empty string, which is no topic, the
    /// `#` needs at least one level, so `#` is the same set as `+/#` and `/#`
    /// the same as `/+/#`. Comparing the covered filter in the longer form
    /// lets a `+` in the covering filter line up with that level.
    fn expanded(self) -> &'a str {
        match self.0 {
            "#" => "+/#",
            "/#" => "/+/#",
            filter => filter,
        }
    }
}

/// A SUBSCRIBE filter as the client wrote it: a plain filter, or a shared
/// subscription `$share/{group}/{filter}` to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestedFilter<'a> {
    /// The share group, for a shared subscription.
    pub group: Option<&'a str>,
    /// The filter itself, validated: the topics this subscription delivers.
    pub filter: &'a str,
}

impl<'a> RequestedFilter<'a> {
    /// Splits and validates a SUBSCRIBE filter. A share group must be
    /// non-empty and free of wildcards (MQTT 5 §4.8.2).
    pub fn parse(requested: &'a str) -> Result<Self, FilterError> {
        let Some(shared) = requested.strip_prefix(SHARE_PREFIX) else {
            return Filter::parse(requested).map(|f| RequestedFilter {
                group: None,
                filter: f.0,
            });
        };
        // The length limit applies to the whole string as it is sent.
        if requested.len() > MAX_LEN {
            return Err(FilterError::TooLong {
                len: requested.len(),
            });
        }
        let (group, filter) = shared.split_once('/').ok_or(FilterError::BadShareGroup)?;
        if group.is_empty() || group.contains(['+', '#', '\0']) {
            return Err(FilterError::BadShareGroup);
        }
        Filter::parse(filter).map(|f| RequestedFilter {
            group: Some(group),
            filter: f.0,
        })
    }
}

impl<'a> RequestedFilter<'a> {
    /// The topics this subscription delivers, as a filter to compare.
    pub(crate) fn topics(&self) -> Filter<'a> {
        Filter(self.filter)
    }
}

#[cfg(test)]
mod tests;
