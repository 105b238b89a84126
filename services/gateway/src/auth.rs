//! Who may call the gateway: API keys with scopes, sent as
//! `Authorization: Bearer <key>`.
//!
//! Keys are stored as SHA-256 hashes (`sha256:<64 hex digits>`), in
//! `auth.keys` or in the TOML file `auth.keys_file`. SHA-256 rather than a
//! password hash (argon2, bcrypt): a Warren key is 32 random bytes made by
//! `gateway new-key`, so there is nothing for a slow hash to protect
//! against a guess (2^256 tries), and a fast hash keeps the check cheap
//! on every request. A presented key is hashed and compared with every
//! stored hash in constant time (`subtle`), so the answer's timing tells
//! nothing about how close a guess was. The keys themselves are never
//! kept, logged or echoed: a problem document names the key's `name` at
//! most.
//!
//! Scopes: `enqueue` (the `POST` endpoints), `read` (the `GET
//! /v1/tasks...` endpoints) and `admin` (the console; it implies the other
//! two). With no key configured the gateway runs open, which
//! [`Auth::from_settings`] allows only when `http.addr` is a loopback
//! address (a development default, warned about at start-up).

use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::problem::Problem;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Enqueue tasks and upload images (the `POST` endpoints).
    Enqueue,
    /// Read task statuses, listings and event streams.
    Read,
    /// The console: the parking lot, replay and purge. Implies the others.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Enqueue => "enqueue",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

/// `[auth]`: the API keys.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// The keys, hashed: `[{name = "shop", hash = "sha256:...", scopes =
    /// ["enqueue"]}]`.
    pub keys: Vec<KeyEntry>,
    /// A TOML file of more keys, as `[[keys]]` tables of the same fields;
    /// empty for none.
    pub keys_file: String,
}

/// One configured key.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// A name for people and logs (`shop`, `ops-alice`); never the key.
    pub name: String,
    /// `sha256:` and the 64 hex digits of the key's SHA-256.
    pub hash: String,
    pub scopes: Vec<Scope>,
}

impl std::fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyEntry")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

/// Start-up errors of `[auth]`.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no API key is configured (auth.keys, auth.keys_file) and http.addr {addr} is not a loopback address: \
         the gateway would be open to anyone who can reach it. Configure keys (`gateway new-key` makes one), \
         or bind to 127.0.0.1 for development"
    )]
    OpenOnNetwork { addr: String },
    #[error("auth key '{name}': {reason}")]
    BadKey { name: String, reason: String },
    #[error("auth.keys_file {path}: {reason}")]
    KeysFile { path: PathBuf, reason: String },
}

/// A key's identity once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's name; `anonymous` on an open gateway.
    pub name: String,
    pub scopes: Vec<Scope>,
}

impl Caller {
    /// Does it hold `scope` (`admin` holds every scope)?
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }
}

struct StoredKey {
    name: String,
    hash: [u8; 32],
    scopes: Vec<Scope>,
}

/// The configured keys, or none (an open gateway).
pub struct Auth {
    keys: Vec<StoredKey>,
}

impl Auth {
    /// The keys of `settings`; with none, an open gateway, refused unless
    /// `http_addr` is a loopback address.
    pub fn from_settings(settings: &AuthSettings, http_addr: &str) -> Result<Self, AuthError> {
        let mut entries = settings.keys.clone();
        if !settings.keys_file.is_empty() {
            entries.extend(read_keys_file(Path::new(&settings.keys_file))?);
        }
        let mut keys = Vec::with_capacity(entries.len());
        for entry in entries {
            let hash = parse_hash(&entry.hash).map_err(|reason| AuthError::BadKey {
                name: entry.name.clone(),
                reason,
            })?;
            if entry.scopes.is_empty() {
                return Err(AuthError::BadKey {
                    name: entry.name,
                    reason: "it has no scopes (enqueue, read, admin)".into(),
                });
            }
            keys.push(StoredKey {
                name: entry.name,
                hash,
                scopes: entry.scopes,
            });
        }
        if keys.is_empty() && !is_loopback(http_addr) {
            return Err(AuthError::OpenOnNetwork {
                addr: http_addr.to_owned(),
            });
        }
        Ok(Self { keys })
    }

    /// An open gateway: no keys, every caller may do everything.
    pub fn open() -> Self {
        Self { keys: Vec::new() }
    }

    pub fn is_open(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many keys are configured.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// The caller a presented key belongs to, or `None`. Every stored hash
    /// is compared, in constant time.
    pub fn check(&self, key: &str) -> Option<Caller> {
        if self.is_open() {
            return Some(Self::anonymous());
        }
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for stored in &self.keys {
            if bool::from(stored.hash.ct_eq(&presented)) && found.is_none() {
                found = Some(Caller {
                    name: stored.name.clone(),
                    scopes: stored.scopes.clone(),
                });
            }
        }
        found
    }

    fn anonymous() -> Caller {
        Caller {
            name: "anonymous".into(),
            scopes: vec![Scope::Admin],
        }
    }

    /// The caller of a request from its `Authorization: Bearer` header.
    pub fn caller(&self, headers: &axum::http::HeaderMap) -> Result<Caller, Problem> {
        if self.is_open() {
            return Ok(Self::anonymous());
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized(
                "the request has no Authorization header; send `Authorization: Bearer <key>`",
            ));
        };
        let key = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|k| !k.is_empty())
            .ok_or_else(|| unauthorized("the Authorization header is not `Bearer <key>`"))?;
        self.check(key)
            .ok_or_else(|| unauthorized("the key is not one this gateway knows"))
    }
}

/// 401 with `WWW-Authenticate: Bearer`.
pub fn unauthorized(detail: &str) -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "An API key is needed",
        detail,
    )
}

/// 403: a known key without the scope.
pub fn forbidden(caller: &Caller, scope: Scope) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "The key may not do this",
        format!(
            "the key '{}' lacks the scope '{}'",
            caller.name,
            scope.as_str()
        ),
    )
}

/// The scope a request to the JSON API needs, by method and path; `None`
/// for what is open (the OpenAPI document, unknown routes' 404, and the
/// console, which checks its own session).
pub fn required_scope(method: &Method, path: &str) -> Option<Scope> {
    if path == "/v1/images" || (path.starts_with("/v1/tasks") && method == Method::POST) {
        return Some(Scope::Enqueue);
    }
    if path == "/v1" || path.starts_with("/v1/") {
        return Some(if method == Method::GET || method == Method::HEAD {
            Scope::Read
        } else {
            Scope::Enqueue
        });
    }
    None
}

/// The middleware: a request to `/v1/...` needs a key with its scope.
pub async fn authorize(State(auth): State<Arc<Auth>>, request: Request, next: Next) -> Response {
    if let Some(scope) = required_scope(request.method(), request.uri().path()) {
        match auth.caller(request.headers()) {
            Ok(caller) if caller.may(scope) => {}
            Ok(caller) => return forbidden(&caller, scope).into_response(),
            Err(problem) => {
                let mut response = problem.into_response();
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"warren\""),
                );
                return response;
            }
        }
    }
    next.run(request).await
}

fn read_keys_file(path: &Path) -> Result<Vec<KeyEntry>, AuthError> {
    use figment::providers::{Format, Toml};
    let err = |reason: String| AuthError::KeysFile {
        path: path.to_owned(),
        reason,
    };
    if !path.is_file() {
        return Err(err("no such file".into()));
    }
    figment::Figment::from(Toml::file(path))
        .extract::<KeysFile>()
        .map(|f| f.keys)
        .map_err(|e| err(e.to_string()))
}

fn parse_hash(text: &str) -> Result<[u8; 32], String> {
    let hex = text
        .strip_prefix("sha256:")
        .ok_or("its hash does not start with `sha256:` (make one with `gateway hash-key`)")?;
    if hex.len() != 64 {
        return Err(format!(
            "its hash has {} hex digits after `sha256:`, not 64",
            hex.len()
        ));
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| "its hash is not hexadecimal".to_owned())?;
    }
    Ok(out)
}

/// The stored form of `key`: `sha256:<hex>`.
pub fn hash_key(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A new random key: `wk_` and 64 hex digits (32 bytes from the OS's
/// generator).
pub fn new_key() -> String {
    let bytes: [u8; 32] = rand::random();
    let mut out = String::from("wk_");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Is `addr` (`host:port`) only ever a loopback address?
pub fn is_loopback(addr: &str) -> bool {
    match addr.to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.collect();
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => false,
    }
}

#[cfg(test)]
// A failing unwrap is how a test reports failure.
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn settings(key: &str, scopes: Vec<Scope>) -> AuthSettings {
        AuthSettings {
            keys: vec![KeyEntry {
                name: "shop".into(),
                hash: hash_key(key),
                scopes,
            }],
            keys_file: String::new(),
        }
    }

    #[test]
    fn a_key_is_found_by_its_hash_and_carries_its_scopes() {
        let auth = Auth::from_settings(&settings("wk_1", vec![Scope::Read]), "0.0.0.0:80").unwrap();
        let caller = auth.check("wk_1").unwrap();
        assert_eq!(caller.name, "shop");
        assert!(caller.may(Scope::Read) && !caller.may(Scope::Enqueue));
        assert!(auth.check("wk_2").is_none());
        assert!(auth.check("").is_none());
        let admin = Caller {
            name: "a".into(),
            scopes: vec![Scope::Admin],
        };
        assert!(admin.may(Scope::Enqueue) && admin.may(Scope::Read));
    }

    #[test]
    fn no_keys_is_allowed_on_loopback_only() {
        let none = AuthSettings::default();
        assert!(Auth::from_settings(&none, "127.0.0.1:0").unwrap().is_open());
        assert!(Auth::from_settings(&none, "[::1]:8080").unwrap().is_open());
        assert!(Auth::from_settings(&none, "localhost:8080").is_ok());
        for addr in ["0.0.0.0:8080", "[::]:8080", "192.0.2.1:80"] {
            let e = Auth::from_settings(&none, addr).err().unwrap();
            assert!(matches!(e, AuthError::OpenOnNetwork { .. }), "{addr}: {e}");
        }
    }

    #[test]
    fn bad_hashes_and_scopeless_keys_are_refused_by_name() {
        for (hash, scopes) in [
            ("abc".to_owned(), vec![Scope::Read]),
            (format!("sha256:{}", "g".repeat(64)), vec![Scope::Read]),
            (hash_key("x"), vec![]),
        ] {
            let s = AuthSettings {
                keys: vec![KeyEntry {
                    name: "k".into(),
                    hash,
                    scopes,
                }],
                keys_file: String::new(),
            };
            let e = Auth::from_settings(&s, "127.0.0.1:0").err().unwrap();
            assert!(e.to_string().starts_with("auth key 'k'"), "{e}");
        }
    }

    #[test]
    fn a_keys_file_adds_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(
            &path,
            format!(
                "[[keys]]\nname = \"ops\"\nhash = \"{}\"\nscopes = [\"admin\"]\n",
                hash_key("wk_ops")
            ),
        )
        .unwrap();
        let s = AuthSettings {
            keys: vec![],
            keys_file: path.display().to_string(),
        };
        let auth = Auth::from_settings(&s, "0.0.0.0:1").unwrap();
        assert_eq!(auth.check("wk_ops").unwrap().name, "ops");
    }

    #[test]
    fn routes_need_their_scope() {
        assert_eq!(
            required_scope(&Method::POST, "/v1/tasks/email"),
            Some(Scope::Enqueue)
        );
        assert_eq!(
            required_scope(&Method::POST, "/v1/images"),
            Some(Scope::Enqueue)
        );
        assert_eq!(
            required_scope(&Method::GET, "/v1/tasks/x/events"),
            Some(Scope::Read)
        );
        assert_eq!(required_scope(&Method::GET, "/openapi.json"), None);
        assert_eq!(required_scope(&Method::GET, "/console"), None);
    }

    #[test]
    fn a_new_key_hashes_to_the_stored_form() {
        let key = new_key();
        assert!(key.starts_with("wk_") && key.len() == 67);
        assert_ne!(key, new_key());
        assert_eq!(parse_hash(&hash_key(&key)).unwrap().len(), 32);
        // The well-known SHA-256 of "abc".
        assert_eq!(
            hash_key("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
