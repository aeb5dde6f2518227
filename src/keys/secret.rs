//! HMAC secrets: the base64 text of `{kid}.b64` files, read the way the
//! Node.js code that shares these files reads it, and which algorithms a
//! secret is long enough for.
//!
//! RFC 7518 §3.2 requires an HMAC key at least as long as the hash output.
//! A short secret is often a password, and one captured token is enough to
//! guess it offline; then every token can be forged. So a secret shorter
//! than 32 bytes is no key at all, and one of 32 to 47 bytes verifies HS256
//! only, 48 to 63 bytes HS256 and HS384.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::Algorithm;

/// Ordered by hash size, so the algorithms a secret is long enough for are
/// always a prefix.
pub(super) const HMAC_ALGORITHMS: &[Algorithm] =
    &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// The shortest secret `alg` takes: its hash output, in bytes.
fn min_secret_bytes(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        // HS256; no other family reaches here.
        _ => 32,
    }
}

/// A secret too short for an HMAC algorithm (RFC 7518 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the secret is {len} bytes long; {alg:?} needs at least {needed} (RFC 7518 §3.2)")]
pub struct ShortSecret {
    pub len: usize,
    /// The least demanding algorithm the key was to allow.
    pub alg: Algorithm,
    pub needed: usize,
}

/// The algorithms of `allowed` (all of [`HMAC_ALGORITHMS`], or the one a
/// JWK's `alg` names) that a secret of `len` bytes is long enough for.
pub(super) fn usable_algorithms(
    len: usize,
    allowed: &'static [Algorithm],
) -> Result<&'static [Algorithm], ShortSecret> {
    let usable = allowed
        .iter()
        .take_while(|alg| len >= min_secret_bytes(**alg))
        .count();
    match allowed.first() {
        Some(&alg) if usable == 0 => Err(ShortSecret {
            len,
            alg,
            needed: min_secret_bytes(alg),
        }),
        // `usable` counts a prefix of `allowed`, so the range is in bounds.
        #[allow(clippy::indexing_slicing)]
        _ => Ok(&allowed[..usable]),
    }
}

/// Why the text of a `.b64` file is not a usable secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("no secret: the text is empty")]
    Empty,
    #[error("{ch:?} at byte {offset} is not a base64 character")]
    InvalidCharacter { offset: usize, ch: char },
    #[error("base64 data at byte {offset} follows '=' padding")]
    DataAfterPadding { offset: usize },
    #[error("the base64 text has one character too many or too few (a lone final character)")]
    DanglingCharacter,
    #[error("base64: {0}")]
    Base64(base64::DecodeError),
}

/// Decodes the base64 text of a `.b64` file.
///
/// As lenient as the Node.js code that shares these files (it decodes with
/// `Buffer.from(text, 'base64')`) wherever leniency is unambiguous: the
/// standard and URL-safe alphabets (even mixed), padding or none, whitespace
/// and line breaks anywhere, a byte order mark. Where Node would silently
/// drop input (a character outside both alphabets, data after `=`, a lone
/// final character) this refuses instead, because a secret that decodes to
/// something other than what the operator meant fails every token.
pub fn decode_secret(text: &str) -> Result<Vec<u8>, SecretError> {
    // Padding is stripped before decoding; unused low bits are allowed, as
    // Node allows them.
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_padding_mode(DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );

    let mut symbols = String::with_capacity(text.len());
    let mut padded = false;
    for (offset, ch) in text.char_indices() {
        let symbol = match ch {
            c if c.is_ascii_whitespace() || c == '\u{feff}' => continue,
            '=' => {
                padded = true;
                continue;
            }
            'A'..='Z' | 'a'..='z' | '0'..='9' | '+' | '/' => ch,
            '-' => '+',
            '_' => '/',
            _ => return Err(SecretError::InvalidCharacter { offset, ch }),
        };
        if padded {
            return Err(SecretError::DataAfterPadding { offset });
        }
        symbols.push(symbol);
    }
    if symbols.is_empty() {
        return Err(SecretError::Empty);
    }
    if symbols.len() % 4 == 1 {
        return Err(SecretError::DanglingCharacter);
    }
    LENIENT.decode(&symbols).map_err(SecretError::Base64)
}

#[cfg(test)]
mod tests;
