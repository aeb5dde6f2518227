use super::*;

fn filter(s: &str) -> TopicFilter {
    match TopicFilter::parse(s) {
        Ok(f) => f,
        Err(e) => panic!("{s:?} should be a valid filter: {e}"),
    }
}

fn covers(ours: &str, theirs: &str) -> bool {
    filter(ours).covers(&filter(theirs))
}

#[test]
fn valid_filters_parse() {
    for s in [
        "a",
        "/",
        "//",
        "a//b",
        "a/",
        "/a",
        "#",
        "+",
        "+/+",
        "a/#",
        "/#",
        "+/a/#",
        "$SYS/#",
        "a/+/b",
        "a b/ü/$x",
    ] {
        assert_eq!(filter(s).as_str(), s);
        assert_eq!(filter(s).to_string(), s);
    }
}

#[test]
fn invalid_filters_say_which_rule() {
    let cases = [
        ("", FilterError::Empty),
        ("a\0b", FilterError::Nul),
        ("#/a", FilterError::MultiLevelNotLast),
        ("a/#/b", FilterError::MultiLevelNotLast),
        ("#/#", FilterError::MultiLevelNotLast),
        ("a#", FilterError::WildcardInLevel { level: 1 }),
        ("##", FilterError::WildcardInLevel { level: 1 }),
        ("+a", FilterError::WildcardInLevel { level: 1 }),
        ("a/b+", FilterError::WildcardInLevel { level: 2 }),
        ("a/#b", FilterError::WildcardInLevel { level: 2 }),
        ("a/+#", FilterError::WildcardInLevel { level: 2 }),
        ("a//x+y/#", FilterError::WildcardInLevel { level: 3 }),
    ];
    for (s, error) in cases {
        assert_eq!(TopicFilter::parse(s), Err(error), "{s:?}");
    }
}

#[test]
fn length_limit_is_65535_bytes() {
    let longest = "a".repeat(MAX_LEN);
    assert!(TopicFilter::parse(&longest).is_ok());
    assert_eq!(validate_topic_name(&longest), Ok(()));
    let too_long = "a".repeat(MAX_LEN + 1);
    assert_eq!(
        TopicFilter::parse(&too_long),
        Err(FilterError::TooLong { len: MAX_LEN + 1 })
    );
    assert_eq!(
        validate_topic_name(&too_long),
        Err(TopicError::TooLong { len: MAX_LEN + 1 })
    );
}

#[test]
fn topic_names() {
    for t in ["a", "/", "a//b", "a/", "/a", "$SYS/x", "ü"] {
        assert_eq!(validate_topic_name(t), Ok(()), "{t:?}");
    }
    assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
    assert_eq!(validate_topic_name("a\0"), Err(TopicError::Nul));
    assert_eq!(validate_topic_name("a/+"), Err(TopicError::Wildcard('+')));
    assert_eq!(validate_topic_name("a+b"), Err(TopicError::Wildcard('+')));
    assert_eq!(validate_topic_name("a/#"), Err(TopicError::Wildcard('#')));
    assert_eq!(validate_topic_name("x#"), Err(TopicError::Wildcard('#')));
}

#[test]
fn multi_level_wildcard_matches_parent_and_below() {
    let f = filter("a/#");
    for t in ["a", "a/", "a/b", "a/b/c", "a//"] {
        assert!(f.matches_topic(t), "{t:?}");
    }
    for t in ["ab", "b", "/a", "b/a"] {
        assert!(!f.matches_topic(t), "{t:?}");
    }
    let all = filter("#");
    for t in ["a", "/", "a/b/c", "x$"] {
        assert!(all.matches_topic(t), "{t:?}");
    }
}

#[test]
fn single_level_wildcard_matches_one_level() {
    let f = filter("a/+");
    assert!(f.matches_topic("a/b"));
    assert!(f.matches_topic("a/"));
    assert!(!f.matches_topic("a"));
    assert!(!f.matches_topic("a/b/c"));
    let two = filter("+/+");
    for t in ["/", "a/", "/b", "a/b", "a/$x"] {
        assert!(two.matches_topic(t), "{t:?}");
    }
    assert!(!two.matches_topic("a"));
    assert!(!two.matches_topic("a//"));
    assert!(filter("+").matches_topic("a"));
    assert!(!filter("+").matches_topic("/"));
    assert!(filter("sensors/+/temp").matches_topic("sensors/x/temp"));
    assert!(!filter("sensors/+/temp").matches_topic("sensors/x/hum"));
}

#[test]
fn empty_levels_and_trailing_slash_are_literal() {
    assert!(filter("a//b").matches_topic("a//b"));
    assert!(!filter("a//b").matches_topic("a/b"));
    assert!(filter("a/").matches_topic("a/"));
    assert!(!filter("a/").matches_topic("a"));
    assert!(!filter("a").matches_topic("a/"));
    assert!(filter("/a").matches_topic("/a"));
    assert!(!filter("/a").matches_topic("a"));
    assert!(filter("/+").matches_topic("/"));
}

#[test]
fn first_level_wildcards_skip_dollar_topics() {
    for f in ["#", "+", "+/#", "+/x", "+/+"] {
        for t in ["$SYS", "$SYS/x", "$x/x", "$"] {
            assert!(!filter(f).matches_topic(t), "{f:?} vs {t:?}");
        }
    }
    assert!(filter("$SYS/#").matches_topic("$SYS"));
    assert!(filter("$SYS/#").matches_topic("$SYS/x"));
    assert!(filter("$SYS/+").matches_topic("$SYS/x"));
    assert!(filter("$SYS").matches_topic("$SYS"));
    // Only the first level is special.
    assert!(filter("a/#").matches_topic("a/$SYS"));
    assert!(filter("a/+").matches_topic("a/$x"));
    assert!(filter("#").matches_topic("x$/a"));
}

#[test]
fn invalid_topic_names_match_nothing() {
    for t in ["", "a/+", "a/#", "+", "#", "a\0"] {
        assert!(!filter("#").matches_topic(t), "{t:?}");
    }
    assert!(!filter("a/+").matches_topic("a/+"));
}

#[test]
fn covers_examples() {
    for theirs in [
        "sensors/+/temp",
        "sensors/a",
        "sensors/#",
        "sensors",
        "sensors/+",
    ] {
        assert!(covers("sensors/#", theirs), "{theirs:?}");
    }
    assert!(covers("sensors/+", "sensors/a"));
    assert!(covers("sensors/+", "sensors/+"));
    assert!(!covers("sensors/+", "sensors/#"));
    assert!(!covers("sensors/+", "sensors/a/b"));
    assert!(!covers("sensors/+", "sensors"));
    assert!(covers("temperature", "temperature"));
    assert!(!covers("temperature", "#"));
    assert!(!covers("temperature", "+"));
    assert!(!covers("temperature", "temperature/#"));
    assert!(covers("+/+", "a/+"));
    assert!(!covers("a/+", "+/+"));
    assert!(!covers("sensors/+/temp", "sensors/#"));
    assert!(!covers("a/#", "b/#"));
    assert!(!covers("a/b/#", "a"));
    assert!(covers("a/+/#", "a/b"));
    assert!(!covers("a/+/#", "a/#"));
    assert!(!covers("a//b", "a/+/b"));
    assert!(covers("a/+/b", "a//b"));
}

#[test]
fn hash_covers_everything_but_dollar_topics() {
    for theirs in ["#", "+", "a", "/", "a/b/#", "+/#", "+/$x", "x$/#", "/#"] {
        assert!(covers("#", theirs), "{theirs:?}");
    }
    for theirs in ["$SYS/#", "$SYS", "$x/+", "$"] {
        assert!(!covers("#", theirs), "{theirs:?}");
        assert!(!covers("+/#", theirs), "{theirs:?}");
        assert!(!covers("+", theirs), "{theirs:?}");
    }
    assert!(covers("$SYS/#", "$SYS/+"));
    assert!(covers("$SYS/#", "$SYS"));
    assert!(!covers("$SYS/#", "#"));
}

#[test]
fn hash_with_an_empty_parent_needs_a_level() {
    // The parent of these `#` would be the empty topic, which does not
    // exist, so `+/#` = `#` and `/+/#` = `/#`.
    assert!(covers("+/#", "#"));
    assert!(covers("#", "+/#"));
    assert!(covers("+/#", "+/#"));
    assert!(covers("/+/#", "/#"));
    assert!(covers("/#", "/+/#"));
    assert!(covers("+/+/#", "/#"));
    assert!(covers("+/+/#", "/+/#"));
    assert!(!covers("+/+/#", "#"));
    assert!(!covers("+/+/#", "+/#"));
    assert!(!covers("+", "#"));
    assert!(!covers("/+", "/#"));
    // A non-empty parent is a real topic that `+` cannot match.
    assert!(!covers("a/+/#", "a/#"));
    assert!(!covers("//+/#", "//#"));
}

mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::sync::LazyLock;

    /// Deepest generated filter. The oracle enumerates topics up to one
    /// level deeper (see `ALL_TOPICS`).
    const MAX_DEPTH: usize = 4;

    /// Levels shared by filters and topics, small so that they collide
    /// often; `$x` exercises the `$` rule and `""` empty levels.
    const LEVELS: [&str; 4] = ["a", "b", "", "$x"];

    fn level() -> impl Strategy<Value = &'static str> {
        prop::sample::select(&LEVELS[..])
    }

    fn filter_level() -> impl Strategy<Value = &'static str> {
        prop_oneof![3 => level(), 2 => Just("+")]
    }

    /// Valid filters of 1..=MAX_DEPTH levels, often ending in `#`. Short
    /// filters are favoured: equivalences such as `+/#` = `#` live there.
    fn filter_strategy() -> impl Strategy<Value = TopicFilter> {
        prop_oneof![1..=2usize, 1..=MAX_DEPTH]
            .prop_flat_map(|depth| (prop::collection::vec(filter_level(), depth), any::<bool>()))
            .prop_filter_map("not a valid filter", |(mut levels, hash)| {
                if hash {
                    levels.pop();
                    levels.push("#");
                }
                TopicFilter::parse(&levels.join("/")).ok()
            })
    }

    fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(prop_oneof![level(), Just("c")], 1..=MAX_DEPTH + 2)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("empty topic name", |t| !t.is_empty())
    }

    /// Every valid topic name of 1..=MAX_DEPTH + 1 levels over `LEVELS`
    /// plus `c` and `$y`, which no filter mentions.
    ///
    /// This decides `covers` exactly for generated filters:
    /// - Within one level, a filter only tells apart each literal it
    ///   names, "any other level", and (first level only) whether the
    ///   level starts with `$`. `LEVELS` holds every literal a filter can
    ///   name, `c` stands for any other level and `$y` for any other `$`
    ///   level, so every class of level is represented.
    /// - A filter of at most N = `MAX_DEPTH` levels can only match a topic
    ///   of more than N levels through a trailing `#`, which decides from
    ///   the levels before it. So a topic of more than N + 1 levels is
    ///   matched exactly when its first N + 1 levels are, and N + 1 is as
    ///   deep as the enumeration needs to go (N levels would not do: a
    ///   topic of exactly N levels can be matched by a filter without `#`).
    static ALL_TOPICS: LazyLock<Vec<String>> = LazyLock::new(|| {
        let alphabet: Vec<&str> = LEVELS.iter().copied().chain(["c", "$y"]).collect();
        let mut topics = Vec::new();
        let mut layer = vec![String::new()];
        for depth in 1..=MAX_DEPTH + 1 {
            layer = layer
                .iter()
                .flat_map(|prefix| {
                    alphabet.iter().map(move |level| {
                        if depth == 1 {
                            (*level).to_owned()
                        } else {
                            format!("{prefix}/{level}")
                        }
                    })
                })
                .collect();
            topics.extend(layer.iter().filter(|t| !t.is_empty()).cloned());
        }
        topics
    });

    fn covers_by_enumeration(ours: &TopicFilter, theirs: &TopicFilter) -> bool {
        ALL_TOPICS
            .iter()
            .all(|t| !theirs.matches_topic(t) || ours.matches_topic(t))
    }

    /// Random pairs reach few of the cases where `covers` holds; every
    /// filter of up to three levels is few enough to check them all,
    /// comparing each filter's set of matched topics as a bitset.
    #[test]
    fn covers_agrees_with_enumeration_for_every_short_filter() {
        let symbols: Vec<&str> = LEVELS.iter().copied().chain(["+", "#"]).collect();
        let mut candidates: Vec<String> = symbols.iter().map(|s| (*s).to_owned()).collect();
        let mut layer = candidates.clone();
        for _ in 1..3 {
            layer = layer
                .iter()
                .flat_map(|prefix| symbols.iter().map(move |s| format!("{prefix}/{s}")))
                .collect();
            candidates.extend(layer.iter().cloned());
        }
        let filters: Vec<TopicFilter> = candidates
            .iter()
            .filter_map(|s| TopicFilter::parse(s).ok())
            .collect();
        let matched: Vec<Vec<u64>> = filters
            .iter()
            .map(|f| {
                let mut bits = vec![0u64; ALL_TOPICS.len().div_ceil(64)];
                for (i, t) in ALL_TOPICS.iter().enumerate() {
                    if f.matches_topic(t) {
                        bits[i / 64] |= 1 << (i % 64);
                    }
                }
                bits
            })
            .collect();
        for (ours, ours_bits) in filters.iter().zip(&matched) {
            for (theirs, theirs_bits) in filters.iter().zip(&matched) {
                let subset = theirs_bits.iter().zip(ours_bits).all(|(t, o)| t & !o == 0);
                assert_eq!(ours.covers(theirs), subset, "{ours} covers {theirs}");
                let common = theirs_bits.iter().zip(ours_bits).any(|(t, o)| t & o != 0);
                assert_eq!(
                    ours.intersects(theirs),
                    common,
                    "{ours} intersects {theirs}"
                );
            }
        }
    }

    proptest! {
        #[test]
        fn covers_is_sound(
            ours in filter_strategy(),
            theirs in filter_strategy(),
            topics in prop::collection::vec(topic_strategy(), 1..32),
        ) {
            if ours.covers(&theirs) {
                for t in &topics {
                    prop_assert!(!theirs.matches_topic(t) || ours.matches_topic(t), "{t:?}");
                }
            }
        }

        #[test]
        fn every_filter_covers_itself(f in filter_strategy()) {
            prop_assert!(f.covers(&f));
        }

        #[test]
        fn a_topic_name_as_filter_is_exactly_itself(
            topic in topic_strategy(),
            other in topic_strategy(),
            f in filter_strategy(),
        ) {
            let exact = filter(&topic);
            prop_assert!(exact.matches_topic(&topic));
            prop_assert_eq!(exact.matches_topic(&other), topic == other);
            prop_assert_eq!(exact.covers(&filter(&other)), topic == other);
            prop_assert_eq!(exact.covers(&f), f.as_str() == topic);
        }

        #[test]
        fn covers_agrees_with_enumeration(
            ours in filter_strategy(),
            theirs in filter_strategy(),
        ) {
            prop_assert_eq!(ours.covers(&theirs), covers_by_enumeration(&ours, &theirs));
        }

        #[test]
        fn intersects_agrees_with_enumeration(
            ours in filter_strategy(),
            theirs in filter_strategy(),
        ) {
            let common = ALL_TOPICS
                .iter()
                .any(|t| ours.matches_topic(t) && theirs.matches_topic(t));
            prop_assert_eq!(ours.intersects(&theirs), common);
            prop_assert_eq!(theirs.intersects(&ours), common);
        }
    }
}
