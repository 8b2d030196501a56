//! Who may do what: API tokens, their roles, and the extractor each operation declares its need with.
//!
//! A token is `tex_` and 64 hex digits (256 random bits); only its SHA-256 is kept (in the `api_tokens`
//! table, or in a token file for provisioning). The [`Registry`] holds every token's hash in memory and
//! reloads them every [`REFRESH_INTERVAL`], so that checking a token costs no database round trip and a
//! revoked one is refused within that interval.
//!
//! Authentication is on as soon as one token exists (and stays on until the process stops, even if every
//! token is revoked: revoking cannot open the server). With no token the server only listens on loopback
//! (see [`crate::startup`]), unless the operator says `--insecure-no-auth`.
//!
//! The edge middleware turns the `Authorization` header into a [`Caller`] (in the request's extensions);
//! each operation takes an [`Auth`] parameter naming the role it needs, which refuses the request (401 or
//! 403) and declares the bearer scheme in the OpenAPI document.

use std::{
    collections::HashMap,
    marker::PhantomData,
    path::PathBuf,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use poem::{IntoResponse, Request, RequestBody};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions,
    registry::{MetaSecurityScheme, Registry as OaiRegistry},
};
use sea_orm::DatabaseConnection;
use sha2::{Digest, Sha256};
use task_executor_shared::{Role, api::Identity, validate};
use tokio_util::sync::CancellationToken;

use crate::{error::ApiError, store::tokens};

/// How often the registry reloads the tokens: a new token works, and a revoked one stops working, within it.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(2);

const TOKEN_PREFIX: &str = "tex_";

/// A new random token: `tex_` and 64 hex digits from the operating system's random source.
pub fn generate_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| anyhow::anyhow!("no random source to make a token with: {e}"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{TOKEN_PREFIX}{hex}"))
}

/// The SHA-256 of a token, in hex: what is stored and compared. (A token has 256 random bits, so a plain
/// hash is enough: there is nothing to guess that a slow hash would protect.)
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A token name: 1-64 of letters, digits, `.`, `_`, `-`.
pub fn valid_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "token name `{name}` must be 1-64 letters, digits, '.', '_' or '-'"
        ));
    }
    Ok(())
}

/// The pattern a `worker` token gets when none is given: its name, then `-` and anything (`gpu-1` → `gpu-1-*`).
pub fn default_worker_pattern(name: &str) -> String {
    format!("{name}-*")
}

/// The holder of a known token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// For `worker` tokens: the worker ids it may act as.
    pub worker_pattern: Option<String>,
}

/// Who sent a request, as the edge found out.
#[derive(Debug, Clone)]
pub enum Caller {
    /// Authentication is off: anyone may do anything.
    Open,
    /// A known token.
    Token(Arc<Principal>),
    /// No `Authorization` header.
    Anonymous,
    /// An `Authorization` header that is not a known bearer token.
    Invalid,
}

impl Caller {
    /// Allows what needs `need`, or says why not (401 without a usable token, 403 for another role).
    pub fn require(&self, need: Role) -> Result<(), ApiError> {
        match self {
            Caller::Open => Ok(()),
            Caller::Token(p) if p.role.allows(need) => Ok(()),
            Caller::Token(p) => Err(ApiError::forbidden(
                "forbidden",
                format!(
                    "token `{}` has role `{}`, which does not allow this (it needs `{need}`{})",
                    p.name,
                    p.role,
                    if need == Role::Admin {
                        ""
                    } else {
                        " or `admin`"
                    }
                ),
            )),
            Caller::Anonymous => Err(ApiError::unauthorized(
                "this operation needs a token: send `Authorization: Bearer <token>`",
            )),
            Caller::Invalid => Err(ApiError::unauthorized(
                "the token is not valid (unknown, revoked or malformed)",
            )),
        }
    }

    /// Whether a request may act as worker `worker_id`: a `worker` token only for ids matching its pattern.
    pub fn may_act_as(&self, worker_id: &str) -> Result<(), ApiError> {
        match self {
            Caller::Token(p) if p.role == Role::Worker => {
                let pattern = p.worker_pattern.as_deref().unwrap_or("");
                if validate::glob_matches(pattern, worker_id) {
                    Ok(())
                } else {
                    Err(ApiError::forbidden(
                        "worker_not_allowed",
                        format!(
                            "token `{}` may act only as workers matching `{pattern}`, not `{worker_id}`",
                            p.name
                        ),
                    ))
                }
            }
            _ => Ok(()),
        }
    }

    /// The token's name, which a task it creates records as `created_by`.
    pub fn token_name(&self) -> Option<&str> {
        match self {
            Caller::Token(p) => Some(&p.name),
            _ => None,
        }
    }

    pub fn identity(&self) -> Identity {
        match self {
            Caller::Token(p) => Identity {
                auth_enabled: true,
                name: Some(p.name.clone()),
                role: Some(p.role),
                worker_pattern: p.worker_pattern.clone(),
            },
            _ => Identity {
                auth_enabled: false,
                name: None,
                role: None,
                worker_pattern: None,
            },
        }
    }
}

/// Every known token's hash, with its holder.
type Table = HashMap<String, Arc<Principal>>;

/// The tokens the server accepts: those in the database and in the token file, reloaded every
/// [`REFRESH_INTERVAL`].
pub struct Registry {
    /// `--insecure-no-auth`: never ask for tokens.
    insecure: bool,
    enabled: AtomicBool,
    tokens: RwLock<Arc<Table>>,
    file: Option<PathBuf>,
    /// The token file's tokens as last read well.
    from_file: RwLock<Table>,
}

impl Registry {
    pub fn new(insecure: bool, file: Option<PathBuf>) -> Self {
        Registry {
            insecure,
            enabled: AtomicBool::new(false),
            tokens: RwLock::new(Arc::new(Table::new())),
            file,
            from_file: RwLock::new(Table::new()),
        }
    }

    /// Whether the server runs without tokens because none exists (not by `--insecure-no-auth`): then it
    /// listens on loopback and must answer only requests addressed to a loopback name.
    pub fn open_on_loopback(&self) -> bool {
        !self.insecure && !self.enabled()
    }

    /// Whether requests need a token.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Reloads the tokens from the database and the token file; returns how many are known, or the token
    /// file's error (after applying the rest). Authentication turns on with the first token and stays on.
    pub async fn refresh(&self, db: &DatabaseConnection) -> anyhow::Result<usize> {
        // Each source on its own: a broken token file keeps its last good tokens without holding back the
        // database's (a revocation there still takes effect within the interval).
        let mut file_error = None;
        if let Some(path) = &self.file {
            let read = match tokio::fs::read_to_string(path).await {
                Ok(text) => parse_token_file(&text)
                    .map_err(|e| anyhow::anyhow!("token file {}: {e}", path.display())),
                Err(e) => Err(anyhow::anyhow!(
                    "cannot read the token file {}: {e}",
                    path.display()
                )),
            };
            match read {
                Ok(list) => {
                    *self.from_file.write().unwrap_or_else(|e| e.into_inner()) =
                        list.into_iter().map(|(h, p)| (h, Arc::new(p))).collect();
                }
                Err(e) => file_error = Some(e),
            }
        }
        let mut table: Table = self
            .from_file
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for t in tokens::list(db).await? {
            table.insert(
                t.token_hash,
                Arc::new(Principal {
                    name: t.name,
                    role: t.role,
                    worker_pattern: t.worker_pattern,
                }),
            );
        }
        let n = table.len();
        *self.tokens.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
        if n > 0 && !self.insecure && !self.enabled.swap(true, Ordering::AcqRel) {
            tracing::info!(
                tokens = n,
                "authentication is on: every request but /health, /ready, /docs and /openapi.json needs a token"
            );
        }
        match file_error {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// Reloads the tokens every [`REFRESH_INTERVAL`] until `stop`; a failed reload keeps the tokens known.
    pub async fn run(self: Arc<Self>, db: DatabaseConnection, stop: CancellationToken) {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(REFRESH_INTERVAL) => {}
            }
            match self.refresh(&db).await {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("tokens reloaded again");
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %format!("{e:#}"), "cannot reload the tokens: the ones known stay in force");
                }
                Err(_) => {}
            }
        }
    }

    /// Who sent a request with this `Authorization` header.
    pub fn caller(&self, authorization: Option<&str>) -> Caller {
        if !self.enabled() {
            return Caller::Open;
        }
        let Some(value) = authorization else {
            return Caller::Anonymous;
        };
        let Some((scheme, token)) = value.trim().split_once(' ') else {
            return Caller::Invalid;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Caller::Invalid;
        }
        let table = self
            .tokens
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match table.get(&hash_token(token.trim())) {
            Some(p) => Caller::Token(p.clone()),
            None => Caller::Invalid,
        }
    }
}

/// Reads a token file: one token a line, `NAME ROLE SECRET [WORKER_PATTERN]`, where SECRET is the token or
/// `sha256:` and its SHA-256 in hex; blank lines and lines starting with `#` are skipped.
pub fn parse_token_file(text: &str) -> Result<Vec<(String, Principal)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |e: String| format!("line {}: {e}", i + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [name, role, secret, rest @ ..] = fields.as_slice() else {
            return Err(at("expected `NAME ROLE SECRET [WORKER_PATTERN]`".to_owned()));
        };
        valid_name(name).map_err(at)?;
        let role: Role = role.parse().map_err(|_| {
            at(format!(
                "unknown role `{role}` (read, submit, worker or admin)"
            ))
        })?;
        let hash = match secret.strip_prefix("sha256:") {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                h.to_ascii_lowercase()
            }
            Some(_) => return Err(at("a `sha256:` secret must be 64 hex digits".to_owned())),
            None => hash_token(secret),
        };
        let worker_pattern = match (role, rest) {
            (Role::Worker, []) => Some(default_worker_pattern(name)),
            (Role::Worker, [p]) => {
                validate::worker_pattern(p).map_err(at)?;
                Some((*p).to_owned())
            }
            (_, []) => None,
            _ => {
                return Err(at(
                    "only a `worker` token takes a WORKER_PATTERN, and only one".to_owned(),
                ));
            }
        };
        out.push((
            hash,
            Principal {
                name: (*name).to_owned(),
                role,
                worker_pattern,
            },
        ));
    }
    Ok(out)
}

/// What an operation needs: a role, any valid token, or nothing ([`Anyone`]).
pub trait Need: Send + Sync + 'static {
    const ROLE: Option<Role>;
    /// Without a role: whether a request without a token is let in.
    const OPEN: bool;
}

macro_rules! needs {
    ($($(#[$doc:meta])* $name:ident => $role:expr, $open:expr;)+) => {$(
        $(#[$doc])*
        pub struct $name;
        impl Need for $name {
            const ROLE: Option<Role> = $role;
            const OPEN: bool = $open;
        }
    )+};
}

needs! {
    /// A `read` token (or `submit`, `admin`).
    Read => Some(Role::Read), false;
    /// A `submit` token (or `admin`).
    Submit => Some(Role::Submit), false;
    /// A `worker` token (for a worker id matching its pattern) or `admin`.
    Work => Some(Role::Worker), false;
    /// An `admin` token.
    Admin => Some(Role::Admin), false;
    /// Any valid token, whatever its role.
    AnyToken => None, false;
    /// Nothing: open to all, a token only adds what its role may see.
    Anyone => None, true;
}

/// The caller of an operation that needs `N`: as a parameter of an operation, it refuses a caller without
/// the role (before the body is looked at) and declares the bearer scheme in the OpenAPI document.
pub struct Auth<N: Need>(pub Caller, PhantomData<N>);

impl<N: Need> std::ops::Deref for Auth<N> {
    type Target = Caller;
    fn deref(&self) -> &Caller {
        &self.0
    }
}

/// The name of the scheme in the OpenAPI document.
const SCHEME: &str = "bearerAuth";

impl<'a, N: Need> ApiExtractor<'a> for Auth<N> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::SecurityScheme];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut OaiRegistry) {
        registry.create_security_scheme(
            SCHEME,
            MetaSecurityScheme {
                ty: "http",
                description: Some(
                    "An API token (`api-server token create`), as `Authorization: Bearer <token>`. Roles: \
                     `read`, `submit`, `worker`, `admin`. A server without tokens listens on loopback only and \
                     asks for none.",
                ),
                name: None,
                key_in: None,
                scheme: Some("bearer"),
                bearer_format: Some("tex_ and 64 hex digits"),
                flows: None,
                openid_connect_url: None,
            },
        );
    }

    fn security_schemes() -> Vec<&'static str> {
        vec![SCHEME]
    }

    fn has_security_fallback() -> bool {
        N::OPEN
    }

    async fn from_request(
        request: &'a Request,
        _body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let caller = request
            .extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller::Anonymous);
        let allowed = match (N::ROLE, &caller) {
            (Some(role), _) => caller.require(role),
            (None, Caller::Anonymous | Caller::Invalid) if !N::OPEN => caller.require(Role::Read),
            (None, _) => Ok(()),
        };
        allowed.map_err(|e| poem::Error::from_response(e.into_response()))?;
        Ok(Auth(caller, PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let a = generate_token().unwrap();
        let b = generate_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("tex_") && a.len() == 68, "{a}");
        let h = hash_token(&a);
        assert_eq!(h.len(), 64);
        assert!(!h.contains(&a[4..]));
        assert_eq!(h, hash_token(&a));
    }

    #[test]
    fn token_files_parse() {
        let token = "tex_abc";
        let text = format!(
            "# provisioned\n\nadmin admin {token}\ngpu-1 worker sha256:{}\ngpu-2 worker tex_x gpu-2-*\nci submit tex_y\n",
            hash_token("tex_w").to_ascii_uppercase()
        );
        let parsed = parse_token_file(&text).unwrap();
        assert_eq!(parsed.len(), 4);
        assert_eq!(parsed[0].0, hash_token(token));
        assert_eq!(parsed[0].1.role, Role::Admin);
        assert_eq!(parsed[1].0, hash_token("tex_w"));
        assert_eq!(parsed[1].1.worker_pattern.as_deref(), Some("gpu-1-*"));
        assert_eq!(parsed[2].1.worker_pattern.as_deref(), Some("gpu-2-*"));
        assert_eq!(parsed[3].1.worker_pattern, None);
        for bad in [
            "a b",
            "a reader tex_1",
            "a read tex_1 pattern",
            "a worker sha256:12",
            "bad/name read tex_1",
            "a worker tex_1 p q",
        ] {
            assert!(parse_token_file(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_and_patterns() {
        let worker = Caller::Token(Arc::new(Principal {
            name: "gpu-1".into(),
            role: Role::Worker,
            worker_pattern: Some("gpu-1-*".into()),
        }));
        assert!(worker.require(Role::Worker).is_ok());
        assert!(matches!(
            worker.require(Role::Read),
            Err(ApiError::Forbidden(_))
        ));
        assert!(worker.may_act_as("gpu-1-a").is_ok());
        assert!(matches!(
            worker.may_act_as("gpu-2-a"),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            Caller::Anonymous.require(Role::Read),
            Err(ApiError::Unauthorized(..))
        ));
        assert!(Caller::Open.require(Role::Admin).is_ok());
        assert!(Caller::Open.may_act_as("anything").is_ok());
    }
}
