//! The provider's HTTP side without a network: domains, retries on a busy
//! provider, and the snippets errors quote.

#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn domains() {
    for (domain, base, loopback) in [
        (
            "https://tenant.eu.auth0.com",
            "https://tenant.eu.auth0.com",
            false,
        ),
        (
            "https://tenant.eu.auth0.com/",
            "https://tenant.eu.auth0.com",
            false,
        ),
        ("tenant.eu.auth0.com", "https://tenant.eu.auth0.com", false),
        (
            "https://idp.example/prefix/",
            "https://idp.example/prefix",
            false,
        ),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080", true),
        ("http://localhost:8080", "http://localhost:8080", true),
        ("http://[::1]:8080", "http://[::1]:8080", true),
    ] {
        assert_eq!(
            parse_domain(domain).unwrap(),
            (base.to_owned(), loopback),
            "{domain}"
        );
    }
    for insecure in [
        "http://tenant.eu.auth0.com",
        "http://10.0.0.1:8080",
        "http://[::2]:1",
    ] {
        assert!(
            matches!(parse_domain(insecure), Err(Error::NotHttps { .. })),
            "{insecure}"
        );
    }
    for bad in ["ftp://x", "https://", "https://u:p@x", "https://x/?a=b", ""] {
        assert!(
            matches!(parse_domain(bad), Err(Error::BadDomain { .. })),
            "{bad}"
        );
    }
}

#[test]
fn backoff_doubles_honours_retry_after_and_is_capped() {
    let waits: Vec<_> = (1..=4)
        .map(|attempt| backoff(attempt, None).as_secs())
        .collect();
    assert_eq!(waits, [1, 2, 4, 8]);
    assert_eq!(
        backoff(1, Some(Duration::from_secs(7))),
        Duration::from_secs(7)
    );
    assert_eq!(backoff(1, Some(Duration::from_secs(3600))), MAX_WAIT);
    assert_eq!(backoff(40, None), MAX_WAIT);
}

#[test]
fn busy_answers() {
    let answer = |status, body: &str| Answer {
        url: String::new(),
        status,
        body: body.as_bytes().to_vec(),
        gave_up_after: None,
    };
    assert!(is_busy(&answer(503, "")));
    assert!(is_busy(&answer(429, r#"{"error":"too_many_requests"}"#)));
    assert!(is_busy(&answer(429, "slow down")));
    assert!(!is_busy(&answer(429, r#"{"error":"too_many_attempts"}"#)));
    assert!(!is_busy(&answer(429, r#"{"error":"slow_down"}"#)));
    assert!(!is_busy(&answer(403, "")));
}

#[test]
fn snippets_are_short_and_quoted() {
    let answer = Answer {
        url: String::new(),
        status: 200,
        body: format!("<html>\n{}", "x".repeat(500)).into_bytes(),
        gave_up_after: None,
    };
    let snippet = answer.snippet();
    assert!(snippet.starts_with("\"<html>\\n"), "{snippet}");
    assert!(snippet.ends_with("\"..."), "{snippet}");
    assert!(snippet.len() < SNIPPET_BYTES + 10);
}
