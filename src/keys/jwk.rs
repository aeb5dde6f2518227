//! JWK sets (RFC 7517): each usable key of a `{name}.json` file becomes a
//! [`Key`], checked (curve points, RSA sizes, base64) when it is loaded, so
//! that a broken key is reported once rather than failing every CONNECT.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use aws_lc_rs::error::KeyRejected;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ED25519, EcdsaVerificationAlgorithm,
    ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD_INDIFFERENT;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::secret::{HMAC_ALGORITHMS, ShortSecret};
use super::set::Key;

/// The RSA moduli aws-lc verifies signatures with.
const RSA_MODULUS_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

const RSA_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// A file that is not a JWK set at all.
#[derive(Debug, thiserror::Error)]
#[error("not a JWK set ({{\"keys\": [...]}}): {0}")]
pub struct JwksError(#[source] serde_json::Error);

/// A key of a JWK set that was left out, and why.
#[derive(Debug)]
pub struct SkippedJwk {
    /// Position in the `keys` array, from 0.
    pub index: usize,
    pub kid: Option<String>,
    pub error: JwkError,
}

impl fmt::Display for SkippedJwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kid {
            Some(kid) => write!(f, "key #{} (kid {kid:?}): {}", self.index, self.error),
            None => write!(f, "key #{}: {}", self.index, self.error),
        }
    }
}

/// Why one JWK was left out.
#[derive(Debug, thiserror::Error)]
pub enum JwkError {
    #[error("not a JWK: {0}")]
    NotAJwk(#[source] serde_json::Error),
    #[error("\"use\" is {0:?}, not \"sig\"")]
    NotForSignatures(String),
    #[error("\"key_ops\" does not include \"verify\"")]
    NoVerifyOperation,
    #[error("\"kid\" is empty")]
    EmptyKid,
    #[error("unsupported key type {0:?} (supported: RSA, EC, OKP, oct)")]
    UnsupportedKeyType(String),
    #[error("unsupported {kty} curve {crv:?}")]
    UnsupportedCurve { kty: &'static str, crv: String },
    #[error("missing parameter {0:?}")]
    MissingParameter(&'static str),
    #[error("parameter {param:?} is not base64url: {error}")]
    BadBase64 {
        param: &'static str,
        error: base64::DecodeError,
    },
    #[error("parameter {param:?} is {found} bytes long, {expected} expected")]
    WrongLength {
        param: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("unsupported signature algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("\"alg\" is {alg:?}, not usable with this {kind} key")]
    AlgorithmMismatch { alg: Algorithm, kind: &'static str },
    #[error("the RSA modulus has {0} bits; 2048 to 8192 are supported")]
    RsaKeySize(usize),
    #[error("the secret \"k\" is empty")]
    EmptySecret,
    #[error(transparent)]
    ShortSecret(ShortSecret),
    #[error("not a valid public key: {0}")]
    InvalidPublicKey(#[source] KeyRejected),
}

/// The keys of one JWK set, and those of its keys that were left out.
#[derive(Debug)]
pub struct ParsedJwks {
    pub keys: Vec<Key>,
    pub skipped: Vec<SkippedJwk>,
}

/// Parses the text of a JWK set file. `source` is recorded in each key and
/// its stem names keys without `kid` (`{stem}#{index}`); nothing is read
/// from it.
///
/// A key that cannot be used is skipped and reported, never fatal; only
/// text that is not a `{"keys": [...]}` object is an error.
pub fn parse_jwks(text: &str, source: &Path) -> Result<ParsedJwks, JwksError> {
    #[derive(Deserialize)]
    struct RawJwks {
        keys: Vec<serde_json::Value>,
    }

    let raw: RawJwks = serde_json::from_str(text).map_err(JwksError)?;
    let stem = source
        .file_stem()
        .map(|stem| stem.to_string_lossy())
        .unwrap_or_default();
    let mut parsed = ParsedJwks {
        keys: Vec::with_capacity(raw.keys.len()),
        skipped: Vec::new(),
    };
    for (index, value) in raw.keys.iter().enumerate() {
        let jwk = match RawJwk::deserialize(value) {
            Ok(jwk) => jwk,
            Err(error) => {
                parsed.skipped.push(SkippedJwk {
                    index,
                    kid: kid_of(value),
                    error: JwkError::NotAJwk(error),
                });
                continue;
            }
        };
        match jwk.to_key(|| format!("{stem}#{index}"), source) {
            Ok(key) => parsed.keys.push(key),
            Err(error) => parsed.skipped.push(SkippedJwk {
                index,
                kid: jwk.kid,
                error,
            }),
        }
    }
    Ok(parsed)
}

/// The `kid` of a JWK that did not parse, to name it in the report.
fn kid_of(value: &serde_json::Value) -> Option<String> {
    value.get("kid")?.as_str().map(str::to_owned)
}

/// The members of a JWK this loader reads; the rest (`x5c`, private key
/// members, ...) is ignored.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default, rename = "use")]
    public_key_use: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    k: Option<String>,
}

impl RawJwk {
    fn to_key(&self, default_id: impl FnOnce() -> String, source: &Path) -> Result<Key, JwkError> {
        if let Some(public_key_use) = &self.public_key_use
            && public_key_use != "sig"
        {
            return Err(JwkError::NotForSignatures(public_key_use.clone()));
        }
        if let Some(key_ops) = &self.key_ops
            && !key_ops.iter().any(|op| op == "verify")
        {
            return Err(JwkError::NoVerifyOperation);
        }
        let id = match &self.kid {
            Some(kid) if kid.is_empty() => return Err(JwkError::EmptyKid),
            Some(kid) => kid.clone(),
            None => default_id(),
        };
        let alg = self
            .alg
            .as_deref()
            .map(|alg| {
                Algorithm::from_str(alg).map_err(|_| JwkError::UnsupportedAlgorithm(alg.to_owned()))
            })
            .transpose()?;

        match self.kty.as_str() {
            "RSA" => {
                let algorithms = restrict(RSA_ALGORITHMS, alg, "RSA")?;
                let n = strip_leading_zeros(self.param("n", &self.n)?);
                let e = strip_leading_zeros(self.param("e", &self.e)?);
                let bits = bit_length(&n);
                if !RSA_MODULUS_BITS.contains(&bits) {
                    return Err(JwkError::RsaKeySize(bits));
                }
                RsaPublicKeyComponents { n: &n, e: &e }
                    .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
                    .map_err(JwkError::InvalidPublicKey)?;
                let decoding = DecodingKey::from_rsa_raw_components(&n, &e);
                Ok(Key::public(id, source, algorithms, decoding))
            }
            "EC" => {
                let (curve, kind, len) = match self.crv.as_deref() {
                    Some("P-256") => (Curve::P256, "EC P-256", 32),
                    Some("P-384") => (Curve::P384, "EC P-384", 48),
                    other => return Err(unsupported_curve("EC", other)),
                };
                let algorithms = restrict(curve.algorithms(), alg, kind)?;
                let x = self.sized_param("x", &self.x, len)?;
                let y = self.sized_param("y", &self.y, len)?;
                // jsonwebtoken verifies EC signatures against the
                // uncompressed SEC1 point, which it keeps in its "DER" slot.
                let point = [&[0x04][..], &x, &y].concat();
                ParsedPublicKey::new(curve.verification(), &point)
                    .map_err(JwkError::InvalidPublicKey)?;
                Ok(Key::public(
                    id,
                    source,
                    algorithms,
                    DecodingKey::from_ec_der(&point),
                ))
            }
            "OKP" => {
                if self.crv.as_deref() != Some("Ed25519") {
                    return Err(unsupported_curve("OKP", self.crv.as_deref()));
                }
                let algorithms = restrict(&[Algorithm::EdDSA], alg, "Ed25519")?;
                let x = self.sized_param("x", &self.x, 32)?;
                ParsedPublicKey::new(&ED25519, &x).map_err(JwkError::InvalidPublicKey)?;
                // As for EC: the raw public key, in the "DER" slot.
                Ok(Key::public(
                    id,
                    source,
                    algorithms,
                    DecodingKey::from_ed_der(&x),
                ))
            }
            "oct" => {
                let algorithms = restrict(HMAC_ALGORITHMS, alg, "oct")?;
                let secret = self.param("k", &self.k)?;
                if secret.is_empty() {
                    return Err(JwkError::EmptySecret);
                }
                Key::hmac(id, source, &secret, algorithms).map_err(JwkError::ShortSecret)
            }
            other => Err(JwkError::UnsupportedKeyType(other.to_owned())),
        }
    }

    fn param(&self, name: &'static str, value: &Option<String>) -> Result<Vec<u8>, JwkError> {
        let value = value.as_deref().ok_or(JwkError::MissingParameter(name))?;
        URL_SAFE_NO_PAD_INDIFFERENT
            .decode(value)
            .map_err(|error| JwkError::BadBase64 { param: name, error })
    }

    fn sized_param(
        &self,
        name: &'static str,
        value: &Option<String>,
        expected: usize,
    ) -> Result<Vec<u8>, JwkError> {
        let bytes = self.param(name, value)?;
        if bytes.len() != expected {
            return Err(JwkError::WrongLength {
                param: name,
                expected,
                found: bytes.len(),
            });
        }
        Ok(bytes)
    }
}

#[derive(Clone, Copy)]
enum Curve {
    P256,
    P384,
}

impl Curve {
    fn algorithms(self) -> &'static [Algorithm] {
        match self {
            Curve::P256 => &[Algorithm::ES256],
            Curve::P384 => &[Algorithm::ES384],
        }
    }

    fn verification(self) -> &'static EcdsaVerificationAlgorithm {
        match self {
            Curve::P256 => &ECDSA_P256_SHA256_FIXED,
            Curve::P384 => &ECDSA_P384_SHA384_FIXED,
        }
    }
}

fn unsupported_curve(kty: &'static str, crv: Option<&str>) -> JwkError {
    match crv {
        Some(crv) => JwkError::UnsupportedCurve {
            kty,
            crv: crv.to_owned(),
        },
        None => JwkError::MissingParameter("crv"),
    }
}

/// The algorithms a key may verify: the one its `alg` names, which must
/// suit the key, or else every algorithm the key type supports.
fn restrict(
    supported: &'static [Algorithm],
    alg: Option<Algorithm>,
    kind: &'static str,
) -> Result<&'static [Algorithm], JwkError> {
    let Some(alg) = alg else {
        return Ok(supported);
    };
    supported
        .iter()
        .find(|candidate| **candidate == alg)
        .map(std::slice::from_ref)
        .ok_or(JwkError::AlgorithmMismatch { alg, kind })
}

/// RFC 7518 forbids leading zero octets in `n` and `e`, but some
/// producers emit them (a sign byte from a DER integer), and aws-lc
/// refuses them; the value is the same without.
fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|byte| **byte == 0).count();
    bytes.drain(..zeros);
    bytes
}

fn bit_length(big_endian: &[u8]) -> usize {
    match big_endian.first() {
        Some(first) => (big_endian.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
        None => 0,
    }
}

#[cfg(test)]
mod tests;
