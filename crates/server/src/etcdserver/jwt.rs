//! `--auth-token=jwt`: stateless signed tokens in etcd's format (claims `username`, `revision`,
//! `exp`), so a token one member signs is valid on every member holding the public key, and
//! tokens are interchangeable with etcd's for the same keys.

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::JwtOptions;
use crate::error::{Error, Result};

#[derive(Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// Signs and verifies tokens with the configured keys.
pub struct Jwt {
    alg: Algorithm,
    encoding: Option<EncodingKey>,
    decoding: DecodingKey,
    ttl_secs: u64,
}

fn read(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::Config(format!("auth-token key {}: {e}", path.display())))
}

fn bad_key(e: jsonwebtoken::errors::Error) -> Error {
    Error::Config(format!("auth-token key: {e}"))
}

impl Jwt {
    pub fn new(o: &JwtOptions) -> Result<Jwt> {
        let alg = Algorithm::from_str(&o.sign_method)
            .map_err(|_| Error::Config(format!("unknown JWT sign-method {:?}", o.sign_method)))?;
        let private = o.priv_key.as_deref().map(read).transpose()?;
        let public = o.pub_key.as_deref().map(read).transpose()?;
        let (encoding, decoding) = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                // etcd uses the priv-key file's bytes as the shared secret.
                let secret = private.or(public).unwrap_or_default();
                (
                    Some(EncodingKey::from_secret(&secret)),
                    DecodingKey::from_secret(&secret),
                )
            }
            _ => {
                let enc = private
                    .as_deref()
                    .map(|k| match alg {
                        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(k),
                        Algorithm::EdDSA => EncodingKey::from_ed_pem(k),
                        _ => EncodingKey::from_rsa_pem(k),
                    })
                    .transpose()
                    .map_err(bad_key)?;
                let public = public.ok_or_else(|| {
                    Error::Config("auth-token jwt needs a pub-key to verify tokens".into())
                })?;
                let dec = match alg {
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&public),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(&public),
                    _ => DecodingKey::from_rsa_pem(&public),
                }
                .map_err(bad_key)?;
                (enc, dec)
            }
        };
        Ok(Jwt {
            alg,
            encoding,
            decoding,
            ttl_secs: o.ttl.as_secs(),
        })
    }

    /// A token for `username` at auth revision `revision`; a verify-only member cannot sign
    /// (etcd then fails the Authenticate too).
    pub fn sign(&self, username: &str, revision: u64) -> Result<String> {
        let key = self.encoding.as_ref().ok_or(Error::AuthFailed)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let claims = Claims {
            username: username.to_string(),
            revision,
            exp: now + self.ttl_secs,
        };
        jsonwebtoken::encode(&Header::new(self.alg), &claims, key)
            .map_err(|e| Error::Fatal(format!("signing a JWT: {e}")))
    }

    /// The user of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Option<String> {
        let mut v = Validation::new(self.alg);
        v.leeway = 0;
        v.required_spec_claims = ["exp".to_string()].into_iter().collect();
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .ok()
            .map(|t| t.claims.username)
    }
}
