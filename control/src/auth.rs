//! Authentication: who is calling.
//!
//! The token comes from gRPC metadata `authorization`, with or without a
//! "Bearer " prefix (the old SciStream client sends it raw). Validators:
//! - [`TokenTable`]: a static token file (mode 0600 enforced) mapping tokens
//!   to identities, compared in constant time;
//! - [`Introspector`]: OAuth2 token introspection (RFC 7662, as Globus Auth
//!   provides) with client id/secret, a required scope, and a cache that
//!   never outlives the token's `exp`; refusals are cached too (for at most
//!   a minute) and calls with the same token share one introspection call,
//!   so a flood of bad tokens cannot turn into a flood of requests to the
//!   identity provider;
//! - no authentication, chosen explicitly; it logs a warning and ignores any
//!   placeholder token the old client sends.
//!
//! Tokens are never logged: errors and logs name the identity or a reason,
//! and the introspection cache is keyed by the token's SHA-256.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use zeroize::Zeroizing;

use crate::errors::ControlError;
use crate::types::Identity;

/// How the server authenticates callers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuthConfig {
    /// No authentication (local tests only; logs a warning).
    #[default]
    None,
    /// A token file: one "IDENTITY TOKEN" per line, `#` comments; mode 0600.
    TokenFile {
        /// Path of the file.
        path: PathBuf,
    },
    /// OAuth2 token introspection (RFC 7662).
    Introspection(IntrospectionConfig),
}

impl AuthConfig {
    /// The mode's name, as `kind` in the TOML file.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthConfig::None => "none",
            AuthConfig::TokenFile { .. } => "token_file",
            AuthConfig::Introspection(_) => "introspection",
        }
    }
}

/// Settings of the introspection validator.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntrospectionConfig {
    /// The introspection endpoint, e.g. https://auth.globus.org/v2/oauth2/token/introspect.
    pub url: String,
    /// This resource server's client id.
    pub client_id: String,
    /// The client secret (or use `client_secret_file`).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// A 0600 file holding the client secret.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// A scope the token must carry (space-separated `scope` field).
    #[serde(default)]
    pub required_scope: Option<String>,
    /// An audience the token must have been issued for (the answer's `aud`,
    /// one string or a list), e.g. this resource server's name. Without it
    /// and without `required_scope` any active token of the authorization
    /// server is accepted, tokens issued to other services included: the
    /// gateway warns at start.
    #[serde(default)]
    pub required_audience: Option<String>,
    /// Upper bound on how long a positive answer is cached (seconds).
    #[serde(default = "default_cache_secs")]
    pub cache_max_secs: u64,
    /// CA certificates (PEM) trusted for the endpoint besides the web PKI:
    /// a facility's own authorization server.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_cache_secs() -> u64 {
    300
}

impl std::fmt::Debug for IntrospectionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionConfig")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("client_secret_file", &self.client_secret_file)
            .field("required_scope", &self.required_scope)
            .field("required_audience", &self.required_audience)
            .field("cache_max_secs", &self.cache_max_secs)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Extracts the bearer token from `authorization` metadata. Returns `None`
/// when absent or empty.
pub fn bearer_token(md: &MetadataMap) -> Result<Option<Zeroizing<String>>, ControlError> {
    let Some(v) = md.get("authorization") else {
        return Ok(None);
    };
    let s = v.to_str().map_err(|_| ControlError::Unauthenticated {
        reason: "the authorization metadata is not printable ASCII".into(),
    })?;
    let s = s.trim();
    if s.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let tok = match s.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => s[7..].trim(),
        _ => s,
    };
    if tok.is_empty() {
        Ok(None)
    } else {
        Ok(Some(Zeroizing::new(tok.to_owned())))
    }
}

/// Rejects files that group or others can read or write.
pub fn check_private_file(path: &Path, what: &str) -> Result<(), ControlError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| ControlError::io(format!("reading {what} {}", path.display()), e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ControlError::Config {
            reason: format!(
                "{what} {} has mode {mode:04o}; it must be readable by its owner only (run: chmod 600 {})",
                path.display(),
                path.display()
            ),
        });
    }
    Ok(())
}

/// A static table of tokens and identities.
pub struct TokenTable {
    entries: Vec<(Zeroizing<String>, Identity)>,
}

impl TokenTable {
    /// Loads a token file ("IDENTITY TOKEN" per line); refuses files whose
    /// mode is not 0600 (or stricter).
    pub fn load(path: &Path) -> Result<Self, ControlError> {
        check_private_file(path, "token file")?;
        let text =
            Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                ControlError::io(format!("reading token file {}", path.display()), e)
            })?);
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(id), Some(tok), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(ControlError::Config {
                    reason: format!(
                        "token file {} line {}: expected \"IDENTITY TOKEN\"",
                        path.display(),
                        i + 1
                    ),
                });
            };
            entries.push((Zeroizing::new(tok.to_owned()), Identity(id.to_owned())));
        }
        if entries.is_empty() {
            return Err(ControlError::Config {
                reason: format!("token file {} holds no tokens", path.display()),
            });
        }
        Ok(TokenTable { entries })
    }

    /// Looks a token up, comparing against every entry in constant time.
    pub fn lookup(&self, token: &str) -> Option<Identity> {
        let mut found: Option<&Identity> = None;
        for (t, id) in &self.entries {
            let eq: bool = t.as_bytes().ct_eq(token.as_bytes()).into();
            if eq && found.is_none() {
                found = Some(id);
            }
        }
        found.cloned()
    }
}

#[derive(Deserialize)]
struct IntrospectionAnswer {
    active: bool,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    aud: Option<Audience>,
}

/// RFC 7662's `aud`: one audience or several.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, wanted: &str) -> bool {
        match self {
            Audience::One(aud) => aud == wanted,
            Audience::Many(auds) => auds.iter().any(|aud| aud == wanted),
        }
    }
}

/// What the identity provider said of a token: who it is, or why it is
/// refused.
struct CacheEntry {
    answer: Result<Identity, String>,
    until: Instant,
}

/// How long a refusal (inactive, expired, wrong scope) is remembered, at
/// most: a flood of bad tokens costs one introspection call per distinct
/// token per period, not one per call.
const NEGATIVE_CACHE_MAX: Duration = Duration::from_secs(60);
/// Entries the cache holds before it drops expired ones, then refusals.
const CACHE_ENTRIES: usize = 100_000;

/// The certificates of a PEM CA file trusted for an authorization server
/// (the gateway's introspection endpoint, `s2uc login`'s server); `what`
/// names the file in errors. An unreadable file, or one without a
/// certificate, is refused by name.
pub(crate) fn read_ca_file(
    path: &std::path::Path,
    what: &str,
) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("reading {what} {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("{what} {} is not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// RFC 7662 token introspection with a cache of answers, positive and
/// negative, and one call in flight per token however many calls wait on it.
pub struct Introspector {
    url: String,
    client_id: String,
    client_secret: Zeroizing<String>,
    required_scope: Option<String>,
    required_audience: Option<String>,
    cache_max: Duration,
    cache: Mutex<HashMap<[u8; 32], CacheEntry>>,
    in_flight: Mutex<HashMap<[u8; 32], Arc<tokio::sync::Mutex<()>>>>,
    http: reqwest::Client,
}

impl Introspector {
    /// Builds the validator (reads the client secret file if configured).
    pub fn new(cfg: &IntrospectionConfig) -> Result<Self, ControlError> {
        let secret = match (&cfg.client_secret, &cfg.client_secret_file) {
            (Some(s), _) => Zeroizing::new(s.clone()),
            (None, Some(p)) => {
                check_private_file(p, "client secret file")?;
                Zeroizing::new(
                    std::fs::read_to_string(p)
                        .map_err(|e| {
                            ControlError::io(format!("reading client secret {}", p.display()), e)
                        })?
                        .trim()
                        .to_owned(),
                )
            }
            (None, None) => {
                return Err(ControlError::Config {
                    reason: "introspection needs client_secret or client_secret_file".into(),
                });
            }
        };
        if cfg.required_scope.is_none() && cfg.required_audience.is_none() {
            tracing::warn!(
                url = %cfg.url,
                "token introspection checks neither a scope nor an audience: any active token of \
                 this authorization server is accepted, including tokens issued to other \
                 services; set required_scope or required_audience"
            );
        }
        if !cfg.url.starts_with("https://") {
            tracing::warn!(url = %cfg.url, "token introspection endpoint is not https; use this only for local tests");
        }
        let mut http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &cfg.ca_file {
            let certs = read_ca_file(path, "the introspection CA file")
                .map_err(|reason| ControlError::Config { reason })?;
            for cert in certs {
                http = http.add_root_certificate(cert);
            }
        }
        let http = http.build().map_err(|e| ControlError::Config {
            reason: format!("cannot build the introspection HTTP client: {e}"),
        })?;
        Ok(Introspector {
            url: cfg.url.clone(),
            client_id: cfg.client_id.clone(),
            client_secret: secret,
            required_scope: cfg.required_scope.clone(),
            required_audience: cfg.required_audience.clone(),
            cache_max: Duration::from_secs(cfg.cache_max_secs),
            cache: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            http,
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], CacheEntry>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Result<Identity, ControlError>> {
        let cache = self.cache();
        let entry = cache.get(key).filter(|e| e.until > Instant::now())?;
        Some(match &entry.answer {
            Ok(identity) => Ok(identity.clone()),
            Err(reason) => Err(ControlError::Unauthenticated {
                reason: reason.clone(),
            }),
        })
    }

    fn remember(&self, key: [u8; 32], answer: Result<Identity, String>, ttl: Duration) {
        let now = Instant::now();
        let mut cache = self.cache();
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, e| e.until > now);
        }
        if cache.len() >= CACHE_ENTRIES {
            // Flooded with distinct bad tokens: refusals go first.
            cache.retain(|_, e| e.answer.is_ok());
        }
        cache.insert(
            key,
            CacheEntry {
                answer,
                until: now + ttl,
            },
        );
    }

    /// Validates a token, from the cache when a live entry exists; callers
    /// with the same token wait for one introspection call.
    pub async fn validate(&self, token: &str) -> Result<Identity, ControlError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(answer) = self.cached(&key) {
            return answer;
        }
        let gate = Arc::clone(
            self.in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key)
                .or_default(),
        );
        let answer = {
            let _turn = gate.lock().await;
            match self.cached(&key) {
                Some(answer) => answer,
                None => self.introspect(key, token).await,
            }
        };
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        answer
    }

    /// Asks the identity provider and caches its answer (refusals for at
    /// most [`NEGATIVE_CACHE_MAX`]; backend failures not at all).
    async fn introspect(&self, key: [u8; 32], token: &str) -> Result<Identity, ControlError> {
        match self.ask(token).await {
            Ok((identity, ttl)) => {
                self.remember(key, Ok(identity.clone()), ttl);
                Ok(identity)
            }
            Err(ControlError::Unauthenticated { reason }) => {
                let ttl = self.cache_max.min(NEGATIVE_CACHE_MAX);
                self.remember(key, Err(reason.clone()), ttl);
                Err(ControlError::Unauthenticated { reason })
            }
            Err(other) => Err(other),
        }
    }

    /// One introspection call: the identity and how long it may be cached.
    async fn ask(&self, token: &str) -> Result<(Identity, Duration), ControlError> {
        let resp = self
            .http
            .post(&self.url)
            .basic_auth(&self.client_id, Some(self.client_secret.as_str()))
            .form(&[("token", token)])
            .send()
            .await
            .map_err(|e| ControlError::AuthBackend {
                reason: format!("POST {}: {}", self.url, e.without_url()),
            })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(ControlError::AuthBackend {
                reason: format!("POST {} answered HTTP {status}", self.url),
            });
        }
        let ans: IntrospectionAnswer =
            resp.json().await.map_err(|e| ControlError::AuthBackend {
                reason: format!("bad JSON from {}: {}", self.url, e.without_url()),
            })?;
        if !ans.active {
            return Err(ControlError::Unauthenticated {
                reason: "the token is not active (expired, revoked or unknown); obtain a new one (s2uc login)".into(),
            });
        }
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut ttl = self.cache_max;
        if let Some(exp) = ans.exp {
            if exp <= unix_now {
                return Err(ControlError::Unauthenticated {
                    reason: "the token has expired; obtain a new one (s2uc login)".into(),
                });
            }
            ttl = ttl.min(Duration::from_secs(exp - unix_now));
        }
        if let Some(req) = &self.required_scope {
            let has = ans
                .scope
                .as_deref()
                .unwrap_or("")
                .split_whitespace()
                .any(|s| s == req);
            if !has {
                return Err(ControlError::Unauthenticated {
                    reason: format!("the token lacks the required scope {req:?}"),
                });
            }
        }
        if let Some(wanted) = &self.required_audience
            && !ans.aud.as_ref().is_some_and(|aud| aud.contains(wanted))
        {
            return Err(ControlError::Unauthenticated {
                reason: format!(
                    "the token was not issued for this gateway (audience {wanted:?} required)"
                ),
            });
        }
        let identity = match ans.username.or(ans.sub) {
            Some(u) if !u.is_empty() => Identity(u),
            _ => {
                return Err(ControlError::AuthBackend {
                    reason: "the introspection answer names no user (no username or sub)".into(),
                });
            }
        };
        Ok((identity, ttl))
    }
}

enum Kind {
    NoAuth,
    TokenFile(TokenTable),
    Introspection(Box<Introspector>),
}

/// The configured validator.
pub struct Authenticator {
    kind: Kind,
}

impl Authenticator {
    /// Builds the validator from configuration (loads files now, so bad
    /// configuration fails before anything binds).
    pub fn from_config(cfg: &AuthConfig) -> Result<Self, ControlError> {
        let kind = match cfg {
            AuthConfig::None => {
                tracing::warn!(
                    "authentication is DISABLED (no-auth): any caller can create, update and release sessions; use this for local tests only"
                );
                Kind::NoAuth
            }
            AuthConfig::TokenFile { path } => Kind::TokenFile(TokenTable::load(path)?),
            AuthConfig::Introspection(c) => Kind::Introspection(Box::new(Introspector::new(c)?)),
        };
        Ok(Authenticator { kind })
    }

    /// Whether authentication is disabled.
    pub fn is_disabled(&self) -> bool {
        matches!(self.kind, Kind::NoAuth)
    }

    /// Authenticates the caller from its request metadata.
    pub async fn authenticate(&self, md: &MetadataMap) -> Result<Identity, ControlError> {
        if let Kind::NoAuth = self.kind {
            // The old client sends a placeholder token even without auth.
            return Ok(Identity::anonymous());
        }
        let token = bearer_token(md)?.ok_or_else(|| ControlError::Unauthenticated {
            reason:
                "no token: send it in metadata `authorization` (\"Bearer TOKEN\" or the raw token)"
                    .into(),
        })?;
        match &self.kind {
            Kind::NoAuth => Ok(Identity::anonymous()),
            Kind::TokenFile(t) => t
                .lookup(&token)
                .ok_or_else(|| ControlError::Unauthenticated {
                    reason: "the token is not in this gateway's token file".into(),
                }),
            Kind::Introspection(i) => i.validate(&token).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn md(v: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", v.parse().unwrap());
        m
    }

    #[test]
    fn bearer_prefix_optional() {
        assert_eq!(
            bearer_token(&md("Bearer abc")).unwrap().unwrap().as_str(),
            "abc"
        );
        assert_eq!(
            bearer_token(&md("bearer abc")).unwrap().unwrap().as_str(),
            "abc"
        );
        assert_eq!(bearer_token(&md("abc")).unwrap().unwrap().as_str(), "abc");
        assert!(bearer_token(&md("Bearer ")).unwrap().is_none());
        assert!(bearer_token(&MetadataMap::new()).unwrap().is_none());
    }

    #[test]
    fn token_file_mode_and_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens");
        let mut f = std::fs::File::create(&p).unwrap();
        writeln!(f, "# comment\nalice tok-a\nbob tok-b").unwrap();
        drop(f);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = TokenTable::load(&p).err().expect("0644 must be refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = TokenTable::load(&p).unwrap();
        assert_eq!(t.lookup("tok-a"), Some(Identity("alice".into())));
        assert_eq!(t.lookup("tok-b"), Some(Identity("bob".into())));
        assert_eq!(t.lookup("tok-"), None);
        assert_eq!(t.lookup(""), None);
    }
}
