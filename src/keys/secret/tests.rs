// Tests panic on purpose when a fixture cannot be set up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};

#[test]
fn secret_in_every_base64_flavour() {
    let secret: Vec<u8> = (0u8..=255).rev().take(40).collect();
    let standard = STANDARD.encode(&secret);
    assert!(standard.contains('+') || standard.contains('/'));
    let wrapped: String = standard
        .as_bytes()
        .chunks(16)
        .map(|line| format!("  {}\r\n", String::from_utf8_lossy(line)))
        .collect();
    for text in [
        standard.clone(),
        URL_SAFE.encode(&secret),
        URL_SAFE_NO_PAD.encode(&secret),
        STANDARD_NO_PAD.encode(&secret),
        format!("\u{feff}{standard}\n"),
        format!("\n\t{standard}  \n\n"),
        wrapped,
    ] {
        assert_eq!(decode_secret(&text), Ok(secret.clone()), "{text:?}");
    }
}

#[test]
fn secret_with_unused_bits_decodes_like_node() {
    // "QR" carries one byte (0x41) plus 4 unused bits that are not zero.
    assert_eq!(decode_secret("QR=="), Ok(vec![0x41]));
}

#[test]
fn bad_secrets_say_why() {
    assert_eq!(decode_secret(""), Err(SecretError::Empty));
    assert_eq!(decode_secret(" \n=\n"), Err(SecretError::Empty));
    assert_eq!(
        decode_secret("abcd!efg"),
        Err(SecretError::InvalidCharacter { offset: 4, ch: '!' })
    );
    assert_eq!(
        decode_secret("QQ==QUFB"),
        Err(SecretError::DataAfterPadding { offset: 4 })
    );
    assert_eq!(decode_secret("QUFBQ"), Err(SecretError::DanglingCharacter));
}

#[test]
fn a_secret_allows_the_algorithms_it_is_long_enough_for() {
    use Algorithm::{HS256, HS384, HS512};
    let usable = |len| usable_algorithms(len, HMAC_ALGORITHMS);
    let short = |len, alg, needed| Err(ShortSecret { len, alg, needed });
    assert_eq!(usable(0), short(0, HS256, 32));
    assert_eq!(usable(31), short(31, HS256, 32));
    assert_eq!(usable(32), Ok(&[HS256][..]));
    assert_eq!(usable(47), Ok(&[HS256][..]));
    assert_eq!(usable(48), Ok(&[HS256, HS384][..]));
    assert_eq!(usable(63), Ok(&[HS256, HS384][..]));
    assert_eq!(usable(64), Ok(HMAC_ALGORITHMS));
    // A key restricted to one algorithm has it or nothing.
    assert_eq!(usable_algorithms(63, &[HS512]), short(63, HS512, 64));
    assert_eq!(usable_algorithms(48, &[HS384]), Ok(&[HS384][..]));
    assert_eq!(
        usable(16).unwrap_err().to_string(),
        "the secret is 16 bytes long; HS256 needs at least 32 (RFC 7518 §3.2)"
    );
}
