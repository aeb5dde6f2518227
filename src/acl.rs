//! (in progress: the acl helper replaces this file; signatures are the contract)
use std::fmt;

/// A validated MQTT topic filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicFilter(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("empty topic filter")]
    Empty,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("empty topic name")]
    Empty,
}

impl TopicFilter {
    pub fn parse(_s: &str) -> Result<Self, FilterError> {
        todo!()
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn matches_topic(&self, _topic: &str) -> bool {
        todo!()
    }
    pub fn covers(&self, _other: &TopicFilter) -> bool {
        todo!()
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn validate_topic_name(_topic: &str) -> Result<(), TopicError> {
    todo!()
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    filters: Vec<TopicFilter>,
}

impl Grants {
    pub fn new(filters: Vec<TopicFilter>) -> Self {
        Grants { filters }
    }
    pub fn filters(&self) -> &[TopicFilter] {
        &self.filters
    }
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }
    pub fn may_publish(&self, _topic: &str) -> bool {
        todo!()
    }
    pub fn may_subscribe(&self, _filter: &str) -> bool {
        todo!()
    }
}
