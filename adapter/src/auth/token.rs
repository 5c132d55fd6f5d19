//! Auth tokens as etcd's `--auth-token` makes them.
//!
//! - `simple` (the default): 16 random letters, a dot and a number; valid
//!   for `--auth-token-ttl` after its last use. Kept in `etcdsql_auth_token`,
//!   so a token one etcdsql issued works on every other one on the
//!   database; each process caches the tokens it has seen.
//! - `jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256,ttl=5m`: signed
//!   claims `username`, `revision`, `exp`; nothing stored, any process with
//!   the public key verifies them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng;

use crate::backend::sql::Param;
use crate::backend::{Backend, DbError};
use crate::error::Error;

/// A process renews a token's expiry in the table at most this often.
const RENEW_EVERY: Duration = Duration::from_secs(30);
/// etcd's default JWT lifetime.
const JWT_TTL: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub enum TokenConfig {
    /// Lifetime after the last use.
    Simple(Duration),
    Jwt {
        algorithm: Algorithm,
        encoding: Option<EncodingKey>,
        decoding: DecodingKey,
        ttl: Duration,
    },
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenConfig::Simple(ttl) => write!(f, "simple (ttl {ttl:?})"),
            TokenConfig::Jwt { algorithm, ttl, .. } => {
                write!(f, "jwt ({algorithm:?}, ttl {ttl:?})")
            }
        }
    }
}

impl TokenConfig {
    /// Parses etcd's `--auth-token` value.
    /// `simple_ttl`: `--auth-token-ttl`.
    pub fn parse(flag: &str, simple_ttl: Duration) -> Result<TokenConfig, String> {
        let mut parts = flag.split(',');
        match parts.next().unwrap_or_default() {
            "" | "simple" => Ok(TokenConfig::Simple(simple_ttl)),
            "jwt" => {
                let mut opts: HashMap<&str, &str> = HashMap::new();
                for p in parts {
                    let (k, v) = p
                        .split_once('=')
                        .ok_or_else(|| format!("--auth-token: {p:?} is not key=value"))?;
                    opts.insert(k, v);
                }
                let method = opts.get("sign-method").copied().unwrap_or("");
                let algorithm: Algorithm = method
                    .parse()
                    .map_err(|_| format!("--auth-token: unknown sign-method {method:?}"))?;
                let ttl = match opts.get("ttl") {
                    Some(t) => crate::server::parse_duration(t)
                        .map_err(|e| format!("--auth-token: ttl: {e}"))?,
                    None => JWT_TTL,
                };
                let read = |k: &str| -> Result<Option<Vec<u8>>, String> {
                    opts.get(k)
                        .map(|path| {
                            std::fs::read(path)
                                .map_err(|e| format!("--auth-token: reading {k} {path}: {e}"))
                        })
                        .transpose()
                };
                let (public, private) = (read("pub-key")?, read("priv-key")?);
                let bad =
                    |e: jsonwebtoken::errors::Error| format!("--auth-token: {method} key: {e}");
                let (encoding, decoding) = match algorithm {
                    Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                        let secret = private
                            .or(public)
                            .ok_or("--auth-token: an HMAC sign-method needs priv-key")?;
                        (
                            Some(EncodingKey::from_secret(&secret)),
                            DecodingKey::from_secret(&secret),
                        )
                    }
                    Algorithm::ES256 | Algorithm::ES384 => (
                        private
                            .map(|k| EncodingKey::from_ec_pem(&k))
                            .transpose()
                            .map_err(bad)?,
                        DecodingKey::from_ec_pem(&public.ok_or("--auth-token: jwt needs pub-key")?)
                            .map_err(bad)?,
                    ),
                    Algorithm::EdDSA => {
                        return Err(format!(
                            "--auth-token: unsupported signing method {method:?}"
                        ));
                    }
                    _ => (
                        private
                            .map(|k| EncodingKey::from_rsa_pem(&k))
                            .transpose()
                            .map_err(bad)?,
                        DecodingKey::from_rsa_pem(
                            &public.ok_or("--auth-token: jwt needs pub-key")?,
                        )
                        .map_err(bad)?,
                    ),
                };
                Ok(TokenConfig::Jwt {
                    algorithm,
                    encoding,
                    decoding,
                    ttl,
                })
            }
            other => Err(format!(
                "--auth-token: unknown token type {other:?} (simple or jwt)"
            )),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

struct Cached {
    user: String,
    /// Valid here until then (renewed by use).
    until: Instant,
    /// When the table last heard of a use.
    renewed: Instant,
}

pub struct Tokens {
    backend: Arc<dyn Backend>,
    config: TokenConfig,
    cache: Mutex<HashMap<String, Cached>>,
    swept: Mutex<Instant>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ttl_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Tokens {
    pub fn new(backend: Arc<dyn Backend>, config: TokenConfig) -> Tokens {
        Tokens {
            backend,
            config,
            cache: Mutex::default(),
            swept: Mutex::new(Instant::now()),
        }
    }

    /// A token for `user`, authenticated at auth `revision`.
    pub async fn issue(&self, user: &str, revision: u64) -> Result<String, Error> {
        match &self.config {
            TokenConfig::Simple(ttl) => {
                let token = {
                    let mut rng = rand::rng();
                    let letters: String = (0..16)
                        .map(|_| {
                            let c = rng.random_range(0..52u8);
                            char::from(if c < 26 { b'a' + c } else { b'A' + c - 26 })
                        })
                        .collect();
                    format!("{letters}.{}", rng.random_range(1..1_000_000u32))
                };
                self.backend
                    .execute(&self.backend.statement(
                        "INSERT INTO etcdsql_auth_token (token, name, revision, expires_ms) \
                         VALUES (?, ?, ?, ?)",
                        &[
                            Param::Bytes(token.clone().into_bytes()),
                            Param::Bytes(user.as_bytes().to_vec()),
                            Param::Int(revision.cast_signed()),
                            Param::Int(now_ms() + ttl_ms(*ttl)),
                        ],
                    ))
                    .await?;
                let now = Instant::now();
                self.lock().insert(
                    token.clone(),
                    Cached {
                        user: user.to_string(),
                        until: now + *ttl,
                        renewed: now,
                    },
                );
                Ok(token)
            }
            TokenConfig::Jwt {
                algorithm,
                encoding,
                ttl,
                ..
            } => {
                let key = encoding.as_ref().ok_or_else(|| {
                    Error::Internal("--auth-token jwt has no priv-key to sign with".into())
                })?;
                let exp = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
                    + ttl.as_secs();
                let claims = Claims {
                    username: user.to_string(),
                    revision,
                    exp,
                };
                jsonwebtoken::encode(&Header::new(*algorithm), &claims, key)
                    .map_err(|e| Error::Internal(format!("signing a token: {e}")))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The user of a valid token and the auth revision to check it at
    /// (the store's for simple tokens, the signed one for JWT); `None` for
    /// an unknown, expired or forged token.
    pub async fn verify(
        &self,
        token: &str,
        current: u64,
    ) -> Result<Option<(String, u64)>, DbError> {
        match &self.config {
            TokenConfig::Jwt {
                algorithm,
                decoding,
                ..
            } => {
                let mut v = Validation::new(*algorithm);
                v.leeway = 0;
                v.required_spec_claims = ["exp".to_string()].into();
                Ok(jsonwebtoken::decode::<Claims>(token, decoding, &v)
                    .ok()
                    .map(|d| (d.claims.username, d.claims.revision)))
            }
            TokenConfig::Simple(ttl) => {
                let now = Instant::now();
                let renew = {
                    let mut cache = self.lock();
                    match cache.get_mut(token) {
                        Some(c) if c.until > now => {
                            c.until = now + *ttl;
                            let user = c.user.clone();
                            if now.duration_since(c.renewed) < RENEW_EVERY {
                                return Ok(Some((user, current)));
                            }
                            c.renewed = now;
                            Some(user)
                        }
                        _ => None,
                    }
                };
                if let Some(user) = renew {
                    self.backend
                        .execute(&self.backend.statement(
                            "UPDATE etcdsql_auth_token SET expires_ms = ? WHERE token = ?",
                            &[
                                Param::Int(now_ms() + ttl_ms(*ttl)),
                                Param::Bytes(token.as_bytes().to_vec()),
                            ],
                        ))
                        .await?;
                    return Ok(Some((user, current)));
                }
                let rows = self
                    .backend
                    .fetch(&self.backend.statement(
                        "SELECT name, expires_ms FROM etcdsql_auth_token WHERE token = ?",
                        &[Param::Bytes(token.as_bytes().to_vec())],
                    ))
                    .await?;
                let Some(r) = rows.first() else {
                    return Ok(None);
                };
                let left = r.int(1)? - now_ms();
                if left <= 0 {
                    return Ok(None);
                }
                let user = String::from_utf8_lossy(&r.bytes(0)?.unwrap_or_default()).into_owned();
                self.lock().insert(
                    token.to_string(),
                    Cached {
                        user: user.clone(),
                        until: now + Duration::from_millis(left.cast_unsigned()),
                        renewed: now,
                    },
                );
                Ok(Some((user, current)))
            }
        }
    }

    /// Drops what this process cached (an auth change may have ended some
    /// tokens: the table is asked again).
    pub fn forget_cached(&self) {
        self.lock().clear();
    }

    /// Drops expired tokens from the cache, and now and then from the table.
    pub async fn expire(&self) -> Result<(), DbError> {
        let now = Instant::now();
        self.lock().retain(|_, c| c.until > now);
        {
            let mut swept = self.swept.lock().unwrap_or_else(|e| e.into_inner());
            if now.duration_since(*swept) < Duration::from_secs(30)
                || !matches!(self.config, TokenConfig::Simple(_))
            {
                return Ok(());
            }
            *swept = now;
        }
        self.backend
            .execute(&self.backend.statement(
                "DELETE FROM etcdsql_auth_token WHERE expires_ms < ?",
                &[Param::Int(now_ms())],
            ))
            .await
            .map(drop)
    }
}
