//! The `topic` target: topic names and filters against a reference
//! matcher spelled out level by level.

use super::fixture::SEPARATOR;
use crate::acl::Grants;
use crate::mqtt::{FilterError, QoS, RequestedFilter, TopicFilter};

/// Longest topic or filter, in bytes (MQTT's string length limit).
const MAX_LEN: usize = 65_535;

/// Topic names and filters against the reference matcher below.
///
/// Input: `topic 0xFF filter-a 0xFF filter-b`, each UTF-8.
///
/// Asserts: `TopicFilter::parse` and `RequestedFilter::parse` accept
/// exactly what the reference accepts (and split `$share` the same way);
/// `matches_topic` agrees with the reference on the topic and on topics
/// sampled from both filters; `covers(a, b)` implies that `a` matches every
/// topic sampled from `b`; a filter covers itself; `may_subscribe(b)` and
/// `may_subscribe($share/g/b)` under a grant of `a` are `covers(a, f)` for
/// the filter `f` each requests.
pub fn topic(data: &[u8]) {
    let mut parts = data.splitn(3, |b| *b == SEPARATOR);
    let (Ok(topic), Ok(a), Ok(b)) = (
        std::str::from_utf8(parts.next().unwrap_or_default()),
        std::str::from_utf8(parts.next().unwrap_or_default()),
        std::str::from_utf8(parts.next().unwrap_or_default()),
    ) else {
        return;
    };
    for requested in [a, b] {
        check_requested(requested);
    }
    let parsed_a = TopicFilter::parse(a);
    let parsed_b = TopicFilter::parse(b);
    assert_eq!(parsed_a.is_ok(), reference_valid(a), "parse({a:?})");
    assert_eq!(parsed_b.is_ok(), reference_valid(b), "parse({b:?})");
    let (Ok(fa), Ok(fb)) = (parsed_a, parsed_b) else {
        return;
    };
    assert!(fa.covers(&fa), "{a:?} does not cover itself");
    let mut topics = vec![topic.to_owned()];
    topics.extend(samples(b, a));
    topics.extend(samples(a, b));
    for t in &topics {
        assert_eq!(
            fa.matches_topic(t),
            reference_matches(a, t),
            "matches_topic({a:?}, {t:?})"
        );
        assert_eq!(
            fb.matches_topic(t),
            reference_matches(b, t),
            "matches_topic({b:?}, {t:?})"
        );
    }
    if fa.covers(&fb) {
        for t in samples(b, a) {
            if reference_matches(b, &t) {
                assert!(
                    reference_matches(a, &t),
                    "{a:?} covers {b:?}, yet does not match {t:?}, which {b:?} matches"
                );
            }
        }
    }
    for t in &topics {
        if reference_matches(a, t) && reference_matches(b, t) {
            assert!(fa.intersects(&fb), "{a:?} and {b:?} both match {t:?}");
        }
    }
    assert_eq!(
        fa.intersects(&fb),
        fb.intersects(&fa),
        "intersects({a:?}, {b:?})"
    );
    if fa.covers(&fb) {
        assert!(
            fa.intersects(&fb),
            "{a:?} covers {b:?} without sharing a topic"
        );
    }
    let grants = Grants::new(vec![fa.clone()]);
    let shared = format!("$share/g/{b}");
    // The share prefix must not push the request past the length limit.
    let requests: &[&str] = if shared.len() <= MAX_LEN {
        &[b, &shared]
    } else {
        &[b]
    };
    for &requested in requests {
        // A request is judged by the filter it asks for: `b` itself may be
        // a `$share/...` request.
        let expected = RequestedFilter::parse(requested)
            .ok()
            .and_then(|r| TopicFilter::parse(r.filter).ok())
            .is_some_and(|filter| fa.covers(&filter));
        assert_eq!(
            grants.may_subscribe(requested, QoS::AtLeastOnce),
            expected,
            "may_subscribe({requested:?}) under {a:?}"
        );
    }
}

/// `RequestedFilter::parse` against the reference reading of
/// `$share/{group}/{filter}`.
fn check_requested(requested: &str) {
    let expected: Result<(Option<&str>, &str), ()> = match requested.strip_prefix("$share/") {
        None if reference_valid(requested) => Ok((None, requested)),
        None => Err(()),
        Some(_) if requested.len() > MAX_LEN => Err(()),
        Some(shared) => match shared.split_once('/') {
            Some((group, filter))
                if !group.is_empty()
                    && !group.contains(['+', '#', '\0'])
                    && reference_valid(filter) =>
            {
                Ok((Some(group), filter))
            }
            _ => Err(()),
        },
    };
    let actual = RequestedFilter::parse(requested)
        .map(|r| (r.group, r.filter))
        .map_err(|_: FilterError| ());
    assert_eq!(actual, expected, "RequestedFilter::parse({requested:?})");
}

/// A filter is valid when it is 1 to 65535 bytes without NUL, and every
/// level is `+`, `#` as the last level, or free of both.
fn reference_valid(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_LEN || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, level)| {
        *level == "+" || (*level == "#" && i + 1 == levels.len()) || !level.contains(['+', '#'])
    })
}

/// The MQTT matching rule spelled out level by level.
fn reference_matches(filter: &str, topic: &str) -> bool {
    let topic_valid =
        !topic.is_empty() && topic.len() <= MAX_LEN && !topic.contains(['\0', '+', '#']);
    if !topic_valid {
        return false;
    }
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if (f[0] == "+" || f[0] == "#") && topic.starts_with('$') {
        return false;
    }
    let mut i = 0;
    loop {
        if i == f.len() {
            return i == t.len();
        }
        if f[i] == "#" {
            // Every level before matched, so the topic has at least `i`
            // levels: `#` takes the rest, or none (the parent).
            return true;
        }
        if i == t.len() {
            return false;
        }
        if f[i] != "+" && f[i] != t[i] {
            return false;
        }
        i += 1;
    }
}

/// Topics `filter` may match: each `+` and `#` replaced by a few choices,
/// among them the literal levels of `other` at the same place (the ones
/// most likely to tell two filters apart).
fn samples(filter: &str, other: &str) -> Vec<String> {
    let levels: Vec<&str> = filter.split('/').collect();
    let others: Vec<&str> = other.split('/').collect();
    let mut out = Vec::new();
    for variant in 0..5 {
        let mut topic: Vec<String> = Vec::new();
        for (i, level) in levels.iter().enumerate() {
            let theirs = others.get(i).copied().filter(|l| !l.contains(['+', '#']));
            match *level {
                "+" => topic.push(match variant {
                    0 => theirs.unwrap_or("x").to_owned(),
                    1 => "x".to_owned(),
                    2 => String::new(),
                    3 => "$x".to_owned(),
                    _ => "y".to_owned(),
                }),
                "#" => match variant {
                    // The parent level.
                    0 => {}
                    1 => topic.push("x".to_owned()),
                    2 => topic.extend(others.iter().skip(i).map(|l| (*l).to_owned())),
                    3 => topic.push(String::new()),
                    _ => topic.extend(["x".to_owned(), "y".to_owned()]),
                },
                literal => topic.push(literal.to_owned()),
            }
        }
        out.push(topic.join("/"));
    }
    out
}
