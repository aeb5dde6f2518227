//! The device's own key pair: read from its file, named by a `kid`, and
//! used to sign client assertions (RFC 7523 §2.2), so that no shared secret
//! has to live on the device; and its public half as the JWK one registers
//! with the provider.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::error::Error;
use super::secret::read_secret_file;

/// How long an assertion is good for: long enough for one request and its
/// retries' clock skew, short because it is a bearer credential while it
/// lives (Auth0 accepts at most 5 minutes and advises 1).
pub const ASSERTION_LIFETIME_SECS: u64 = 60;

/// What `client_assertion_type` says for a JWT assertion (RFC 7523 §2.2).
pub(super) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The device's private key, ready to sign.
pub struct DeviceKey {
    path: PathBuf,
    alg: Algorithm,
    key: EncodingKey,
    kid: String,
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKey")
            .field("path", &self.path)
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl DeviceKey {
    /// Reads a PEM private key: P-256 (PKCS#8) signs ES256, RSA (PKCS#1
    /// or PKCS#8, 2048 bits or more) signs RS256. The `kid` is `kid` when
    /// given, else the key's JWK thumbprint (RFC 7638), which is the `kid`
    /// `jwtgate-provision keygen` writes in the JWK to register.
    pub fn load(path: &Path, kid: Option<String>) -> Result<DeviceKey, Error> {
        let bad = |reason: String| Error::DeviceKey {
            path: path.to_path_buf(),
            reason,
        };
        let pem = read_secret_file(path).map_err(|error| bad(error.to_string()))?;
        let pair = rcgen::KeyPair::from_pem(pem.expose())
            .map_err(|_| bad("it holds no PEM private key (P-256 or RSA)".to_owned()))?;
        let alg = if pair.algorithm() == &rcgen::PKCS_ECDSA_P256_SHA256 {
            Algorithm::ES256
        } else if pair.algorithm() == &rcgen::PKCS_RSA_SHA256 {
            Algorithm::RS256
        } else {
            return Err(bad(
                "its kind of key is not supported: use a P-256 key (ES256, what keygen makes) or RSA (RS256)"
                    .to_owned(),
            ));
        };
        let key = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem.expose().as_bytes()).map_err(|_| {
                bad("an EC key must be PKCS#8 (BEGIN PRIVATE KEY): convert it with `openssl pkcs8 -topk8 -nocrypt`".to_owned())
            })?,
            _ => EncodingKey::from_rsa_pem(pem.expose().as_bytes())
                .map_err(|error| bad(error.to_string()))?,
        };
        let kid = match kid {
            Some(kid) => kid,
            None => thumbprint(&key, alg).map_err(|error| bad(error.to_string()))?,
        };
        Ok(DeviceKey {
            path: path.to_path_buf(),
            alg,
            key,
            kid,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A client assertion for `client_id` addressed to `audience`, issued
    /// now and good for [`ASSERTION_LIFETIME_SECS`], with a `jti` never
    /// used before (128 random bits), so a provider that remembers them
    /// refuses a replay.
    pub fn sign_assertion(&self, client_id: &str, audience: &str) -> Result<String, Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        self.sign_assertion_at(client_id, audience, now, &random_jti()?)
    }

    pub(super) fn sign_assertion_at(
        &self,
        client_id: &str,
        audience: &str,
        now: u64,
        jti: &str,
    ) -> Result<String, Error> {
        let claims = AssertionClaims {
            iss: client_id,
            sub: client_id,
            aud: audience,
            iat: now,
            exp: now + ASSERTION_LIFETIME_SECS,
            jti,
        };
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|error| Error::Sign {
            reason: error.to_string(),
        })
    }
}

/// RFC 7523 §3's claims: the client speaks for itself (`iss` = `sub`).
#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    jti: &'a str,
}

fn random_jti() -> Result<String, Error> {
    let mut bytes = [0_u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Error::Sign {
        reason: "the system's random number generator failed".to_owned(),
    })?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The public half of `key` as a JWK with `kid` (its RFC 7638 thumbprint),
/// `alg` and `use: sig`: what a provider takes to verify the device's
/// assertions.
pub(super) fn public_jwk(key: &EncodingKey, alg: Algorithm) -> Result<Jwk, Error> {
    let failed = |error: jsonwebtoken::errors::Error| Error::Keygen {
        reason: error.to_string(),
    };
    let mut jwk = Jwk::from_encoding_key(key, alg).map_err(failed)?;
    jwk.common.key_id = Some(jwk.thumbprint(ThumbprintHash::SHA256).map_err(failed)?);
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    Ok(jwk)
}

fn thumbprint(key: &EncodingKey, alg: Algorithm) -> Result<String, jsonwebtoken::errors::Error> {
    Jwk::from_encoding_key(key, alg)?.thumbprint(ThumbprintHash::SHA256)
}

#[cfg(test)]
mod tests;
