//! Who you are and what you may do.
//!
//! Identities come from local users, robot tokens, an external validation
//! service or OIDC ID tokens ([`Auth::login`]); what they may do comes from
//! role grants ([`access`]). The token endpoint turns both into a short-lived
//! JWT ([`token`]) that every `/v2/` request presents.

pub mod access;
mod external;
mod limiter;
pub mod manage;
pub(crate) mod oidc;
pub mod secrets;
pub mod token;
mod verified;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_meta::access::SubjectKind;
use berth_meta::{AccessStore, MetaError};
use subtle::ConstantTimeEq;

use self::access::{Grant, Permissions, Role, Scope};
use self::external::ExternalValidator;
use self::limiter::LoginLimiter;
use self::manage::Accounts;
use self::oidc::OidcVerifier;
use self::token::{AccessClaims, AccessEntry, TokenService};
use self::verified::VerifiedTokens;
use crate::clock::Clock;
use crate::config::{AuthConfig, AuthMode};
use crate::pattern::Pattern;
use crate::text;

/// Why presented credentials were not accepted.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Wrong, unknown, expired, revoked or disabled; the client learns no more.
    Invalid,
    /// The identity provider could not answer; never taken as a pass.
    Unavailable(String),
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("invalid or expired refresh token")]
    InvalidRefreshToken,
    #[error("too many failed logins, retry in {} s", .0.as_secs())]
    TooManyAttempts(Duration),
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] MetaError),
    #[error("{0}")]
    Internal(String),
}

/// What an identity provider said of a user at sign-in, which a browser
/// session keeps (as JSON) because it cannot ask again.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ProviderSaid {
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub groups: Vec<String>,
    /// `PATTERN:ROLE` grants of the provider's claim rules.
    #[serde(default)]
    pub grants: Vec<String>,
}

/// Someone who logged in (or nobody), with what they may do.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The token subject: `alice`, `robot:ci`, `oidc:repo:acme/app:…`, or empty.
    pub subject: String,
    pub permissions: Permissions,
    /// What a refresh token names to find this identity again (`user:NAME` or
    /// `robot:NAME`) and the generation of its credential, so that a new
    /// password or a new robot of the same name voids old refresh tokens.
    refresh: Option<(String, String)>,
}

impl Identity {
    /// `user:alice`-style name for the audit log.
    pub fn actor(&self) -> String {
        actor_of_subject(&self.subject)
    }
}

/// The audit actor for a token subject: `user:NAME` for users, the subject
/// itself for `robot:…` and `oidc:…`.
pub fn actor_of_subject(subject: &str) -> String {
    if subject.is_empty() {
        "anonymous".into()
    } else if subject.starts_with("robot:") || subject.starts_with("oidc:") {
        subject.to_string()
    } else {
        format!("user:{subject}")
    }
}

/// A short digest naming one credential (a password hash, a robot token hash).
fn generation(credential: &str) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(credential.as_bytes())[..8])
}

/// Argon2 checks run at once at most; each takes about 19 MiB and a core.
const PASSWORD_CHECKS_AT_ONCE: usize = 4;

/// What the token endpoint answers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenResponse {
    pub token: String,
    pub access_token: String,
    pub expires_in: u64,
    pub issued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

pub struct Auth {
    pub mode: AuthMode,
    pub service: String,
    pub realm: Option<String>,
    /// The scheme of the token endpoint announced in challenges when no
    /// `realm` is configured and no proxy says `X-Forwarded-Proto`:
    /// `https` when the server itself speaks TLS.
    pub scheme: &'static str,
    tokens: TokenService,
    verified: VerifiedTokens,
    store: Arc<dyn AccessStore>,
    accounts: Accounts,
    clock: Arc<dyn Clock>,
    anonymous: Vec<Grant>,
    admin_groups: Vec<String>,
    external: Option<ExternalValidator>,
    oidc: OidcVerifier,
    limiter: LoginLimiter,
    password_checks: tokio::sync::Semaphore,
}

impl Auth {
    /// Checks what [`Auth::open`] would refuse in `config` without reading
    /// or creating the key file or asking any service: the configured
    /// signing key, the anonymous patterns and the OIDC issuers and rules.
    pub fn check_config(config: &AuthConfig, clock: Arc<dyn Clock>) -> anyhow::Result<()> {
        if let Some(key) = &config.token.key {
            token::check_configured_key(key)?;
        }
        anonymous_grants(config)?;
        OidcVerifier::new(&config.oidc, clock)?;
        Ok(())
    }

    pub fn open(
        config: &AuthConfig,
        data_dir: &Path,
        store: Arc<dyn AccessStore>,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Auth> {
        let key_file = config
            .token
            .key_file
            .clone()
            .unwrap_or_else(|| data_dir.join("token.key"));
        let secret = if config.mode == AuthMode::Token {
            token::load_secret(config.token.key.as_deref(), &key_file)?
        } else {
            // No token is ever issued or accepted; a throwaway key keeps one code path.
            let mut key = vec![0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
            key
        };
        let anonymous = anonymous_grants(config)?;
        let external = match &config.external.url {
            Some(url) if !url.is_empty() => Some(ExternalValidator::new(
                url,
                Duration::from_secs(config.external.cache_secs),
                Duration::from_secs(config.external.timeout_secs.max(1)),
                clock.clone(),
            )?),
            _ => None,
        };
        Ok(Auth {
            mode: config.mode,
            service: config.service.clone(),
            realm: config.realm.clone(),
            scheme: "http",
            tokens: TokenService::new(
                &secret,
                &config.service,
                Duration::from_secs(config.token.lifetime_secs.max(1)),
                Duration::from_secs(config.token.refresh_lifetime_secs.max(1)),
                clock.clone(),
            ),
            verified: VerifiedTokens::default(),
            accounts: Accounts::new(store.clone(), clock.clone()),
            store,
            anonymous,
            admin_groups: config.admin_groups.clone(),
            external,
            oidc: OidcVerifier::new(&config.oidc, clock.clone())?,
            clock,
            limiter: LoginLimiter::new(
                config.login_limit.failures,
                Duration::from_secs(config.login_limit.window_secs),
            ),
            password_checks: tokio::sync::Semaphore::new(PASSWORD_CHECKS_AT_ONCE),
        })
    }

    /// Users, robot tokens, grants and the audit log, to read and change.
    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// Nobody: what anonymous access allows.
    pub fn anonymous(&self) -> Identity {
        Identity {
            subject: String::new(),
            permissions: Permissions {
                admin: false,
                grants: self.anonymous.clone(),
            },
            refresh: None,
        }
    }

    /// Checks credentials, limited per source address and, for passwords,
    /// per account. An attempt takes its allowance before it is checked (so
    /// concurrent attempts cannot overrun the limit) and gets it back when it
    /// succeeds or the identity provider could not answer.
    pub async fn login(&self, addr: IpAddr, login: &str, password: &str) -> Result<Identity, AuthError> {
        let mut keys = vec![limiter::address_key(addr)];
        if self.is_password(password) {
            keys.push(limiter::account_key(login));
        }
        self.limiter.take(&keys).map_err(AuthError::TooManyAttempts)?;
        match self.authenticate(login, password).await {
            Ok(identity) => {
                self.limiter.refund(&keys);
                Ok(identity)
            }
            Err(Failure::Invalid) => {
                tracing::info!(login = ?login, %addr, "login failed");
                Err(AuthError::InvalidCredentials)
            }
            Err(Failure::Unavailable(why)) => {
                self.limiter.refund(&keys);
                Err(AuthError::Unavailable(why))
            }
        }
    }

    /// Whether `password` is a password (rather than a robot token or an ID
    /// token, for which the login name means nothing).
    fn is_password(&self, password: &str) -> bool {
        !password.starts_with(secrets::ROBOT_TOKEN_PREFIX)
            && !oidc::unverified_issuer(password).is_some_and(|iss| self.oidc.knows(&iss))
    }

    async fn check_password(&self, hash: Option<String>, password: &str) -> bool {
        let Ok(_permit) = self.password_checks.acquire().await else {
            return false;
        };
        let password = password.to_string();
        tokio::task::spawn_blocking(move || match hash {
            Some(hash) => secrets::verify_password(&hash, &password),
            None => {
                secrets::verify_against_nothing(&password);
                false
            }
        })
        .await
        .unwrap_or(false)
    }

    async fn authenticate(&self, login: &str, password: &str) -> Result<Identity, Failure> {
        // A login that no account can have is refused before a store or an
        // identity provider sees it (see `crate::text`).
        if password.is_empty() || text::printable(login, text::MAX_NAME_BYTES).is_err() {
            return Err(Failure::Invalid);
        }
        if let Some(iss) = oidc::unverified_issuer(password) {
            if self.oidc.knows(&iss) {
                let who = self.oidc.verify(password).await?;
                vouched_name("OIDC", &who.name)?;
                let admin = who.admin || self.in_admin_group(&who.groups);
                let mut grants = who.grants;
                grants.extend(self.stored_grants(&group_subjects(&who.groups)).await?);
                return Ok(self.identity(format!("oidc:{}", who.name), admin, grants, None));
            }
        }
        if password.starts_with(secrets::ROBOT_TOKEN_PREFIX) {
            return self.robot(password).await;
        }
        let user = self.store.user(login).await.map_err(store_failure)?;
        if let Some(user) = user {
            if !self.check_password(Some(user.password_hash.clone()), password).await || user.disabled {
                return Err(Failure::Invalid);
            }
            return self.local_user(user).await;
        }
        if let Some(external) = &self.external {
            let who = external.validate(login, password).await?;
            vouched_name("external", who.name())?;
            // A local user's name is never taken by an outside account, whichever
            // of its id, username or email it logged in with.
            if self.store.user(who.name()).await.map_err(store_failure)?.is_some() {
                tracing::warn!(name = ?who.name(), "external account refused: a local user has its name");
                return Err(Failure::Invalid);
            }
            let mut subjects = group_subjects(&who.groups);
            subjects.push((SubjectKind::User, who.name().to_string()));
            let grants = self.stored_grants(&subjects).await?;
            let admin = self.in_admin_group(&who.groups);
            return Ok(self.identity(who.name().to_string(), admin, grants, None));
        }
        self.check_password(None, password).await;
        Err(Failure::Invalid)
    }

    async fn local_user(&self, user: berth_meta::access::UserRecord) -> Result<Identity, Failure> {
        let grants = self.stored_grants(&[(SubjectKind::User, user.name.clone())]).await?;
        let refresh = Some((format!("user:{}", user.name), generation(&user.password_hash)));
        Ok(self.identity(user.name, user.admin, grants, refresh))
    }

    async fn robot_identity(&self, robot: berth_meta::access::RobotRecord) -> Result<Identity, Failure> {
        if let Some(user) = robot.created_by.strip_prefix(manage::PERSONAL_TOKEN_MARK) {
            // A personal access token: the user, as they are now.
            let user = self.store.user(user).await.map_err(store_failure)?;
            let user = user.filter(|u| !u.disabled).ok_or(Failure::Invalid)?;
            // Only the user's own grants: a single sign-on user's groups and
            // claim-rule grants come from the provider at sign-in, which a
            // token never sees.
            let grants = self.stored_grants(&[(SubjectKind::User, user.name.clone())]).await?;
            let refresh = Some((format!("robot:{}", robot.name), generation(&robot.token_hash)));
            return Ok(self.identity(user.name, user.admin, grants, refresh));
        }
        let grants = self.stored_grants(&[(SubjectKind::Robot, robot.name.clone())]).await?;
        let refresh = Some((format!("robot:{}", robot.name), generation(&robot.token_hash)));
        Ok(self.identity(format!("robot:{}", robot.name), false, grants, refresh))
    }

    async fn robot(&self, token: &str) -> Result<Identity, Failure> {
        let hash = secrets::robot_token_hash(token);
        let robot = self
            .store
            .robot_by_token_hash(&hash)
            .await
            .map_err(store_failure)?
            .ok_or(Failure::Invalid)?;
        let now_ms = self.clock.now_ms();
        let equal: bool = robot.token_hash.as_bytes().ct_eq(hash.as_bytes()).into();
        let expired = robot.expires_ms.is_some_and(|e| e <= now_ms);
        if !equal || robot.revoked_ms.is_some() || expired {
            return Err(Failure::Invalid);
        }
        if let Err(e) = self.store.touch_robot(&robot.name, now_ms).await {
            tracing::warn!(robot = %robot.name, error = %e, "recording a robot's last use failed");
        }
        self.robot_identity(robot).await
    }

    /// The identity a refresh token stands for, checked again against the
    /// store: a disabled user, a changed password, or a revoked (or replaced)
    /// robot gets nothing.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Identity, AuthError> {
        let invalid = || AuthError::InvalidRefreshToken;
        let claims = self.tokens.verify_refresh(refresh_token).map_err(|_| invalid())?;
        let to_error = |f: Failure| match f {
            Failure::Invalid => invalid(),
            Failure::Unavailable(why) => AuthError::Unavailable(why),
        };
        if let Some(name) = claims.sub.strip_prefix("user:") {
            let user = self.store.user(name).await?.ok_or_else(invalid)?;
            if user.disabled || generation(&user.password_hash) != claims.gen {
                return Err(invalid());
            }
            return self.local_user(user).await.map_err(to_error);
        }
        if let Some(name) = claims.sub.strip_prefix("robot:") {
            let robot = self.store.robot(name).await?;
            let now_ms = self.clock.now_ms();
            return match robot {
                Some(r)
                    if r.revoked_ms.is_none()
                        && r.expires_ms.is_none_or(|e| e > now_ms)
                        && generation(&r.token_hash) == claims.gen =>
                {
                    self.robot_identity(r).await.map_err(to_error)
                }
                _ => Err(invalid()),
            };
        }
        Err(invalid())
    }

    /// The identity a browser session stands for, checked again against the
    /// store on every request: a user who was disabled or deleted gets
    /// nothing. What the identity provider said at sign-in (administrator,
    /// groups, the grants of its claim rules) is kept by the session for
    /// single sign-on and externally validated users; their stored grants
    /// are read again.
    pub async fn session_identity(&self, subject: &str, said: &ProviderSaid) -> Result<Option<Identity>, AuthError> {
        if text::name(subject).is_err() {
            return Ok(None);
        }
        let provider_grants = || -> Vec<Grant> { said.grants.iter().filter_map(|g| Grant::parse(g).ok()).collect() };
        if let Some(user) = self.store.user(subject).await? {
            if user.disabled {
                return Ok(None);
            }
            if user.password_hash != secrets::SSO_PASSWORD_HASH {
                return self.local_user(user).await.map(Some).map_err(failure_error);
            }
            let mut subjects = group_subjects(&said.groups);
            subjects.push((SubjectKind::User, user.name.clone()));
            let mut grants = self.stored_grants(&subjects).await.map_err(failure_error)?;
            grants.extend(provider_grants());
            let admin = user.admin || said.admin || self.in_admin_group(&said.groups);
            return Ok(Some(self.identity(user.name, admin, grants, None)));
        }
        if self.external.is_none() {
            return Ok(None);
        }
        let mut subjects = group_subjects(&said.groups);
        subjects.push((SubjectKind::User, subject.to_string()));
        let mut grants = self.stored_grants(&subjects).await.map_err(failure_error)?;
        grants.extend(provider_grants());
        let admin = said.admin || self.in_admin_group(&said.groups);
        Ok(Some(self.identity(subject.to_string(), admin, grants, None)))
    }

    /// Verifies an ID token a single sign-on brought back: the issuer must
    /// be one of `auth.oidc`, whose rules decide what its users may do.
    pub async fn verify_sso(&self, id_token: &str) -> Result<oidc::OidcIdentity, AuthError> {
        let mut who = self.oidc.verify(id_token).await.map_err(failure_error)?;
        vouched_name("OIDC", &who.name).map_err(failure_error)?;
        who.admin = who.admin || self.in_admin_group(&who.groups);
        Ok(who)
    }

    fn identity(
        &self,
        subject: String,
        admin: bool,
        mut grants: Vec<Grant>,
        refresh: Option<(String, String)>,
    ) -> Identity {
        grants.extend(self.anonymous.iter().cloned());
        Identity {
            subject,
            permissions: Permissions { admin, grants },
            refresh,
        }
    }

    fn in_admin_group(&self, groups: &[String]) -> bool {
        groups.iter().any(|g| self.admin_groups.contains(g))
    }

    async fn stored_grants(&self, subjects: &[(SubjectKind, String)]) -> Result<Vec<Grant>, Failure> {
        let records = self.store.grants_for(subjects).await.map_err(store_failure)?;
        Ok(records
            .into_iter()
            .filter_map(|r| match Grant::new(&r.pattern, &r.role) {
                Ok(grant) => Some(grant),
                Err(e) => {
                    tracing::warn!(grant = r.id, error = %e, "stored grant ignored");
                    None
                }
            })
            .collect())
    }

    /// The `access` claim for `identity`: for each scope asked, the actions
    /// asked that the identity may do. Scopes it may do nothing of are left out.
    pub fn grant(&self, identity: &Identity, scopes: &[Scope]) -> Vec<AccessEntry> {
        let perms = &identity.permissions;
        let mut entries: Vec<AccessEntry> = Vec::new();
        for scope in scopes {
            let entry = match scope {
                Scope::Catalog => AccessEntry {
                    kind: "registry".into(),
                    name: "catalog".into(),
                    actions: vec!["*".into()],
                },
                Scope::Repository { name, actions } => {
                    let allowed = if name == "*" {
                        // The wildcard is for administrators only.
                        if perms.admin {
                            *actions
                        } else {
                            access::Actions::NONE
                        }
                    } else if name.parse::<berth_oci::RepoName>().is_ok() {
                        actions.intersect(perms.allowed(name))
                    } else {
                        access::Actions::NONE
                    };
                    if allowed.is_empty() {
                        continue;
                    }
                    AccessEntry {
                        kind: "repository".into(),
                        name: name.clone(),
                        actions: allowed.names(),
                    }
                }
            };
            match entries
                .iter_mut()
                .find(|e| e.kind == entry.kind && e.name == entry.name)
            {
                Some(existing) => {
                    for a in entry.actions {
                        if !existing.actions.contains(&a) {
                            existing.actions.push(a);
                        }
                    }
                }
                None => entries.push(entry),
            }
        }
        entries
    }

    /// Signs an access token (and a refresh token when asked for one and the
    /// identity can be checked again later: local users and robots). Refresh
    /// grants pass `offline = false`, so a refresh token is never renewed and
    /// ends `refresh_lifetime_secs` after the login that made it.
    pub fn issue(&self, identity: &Identity, scopes: &[Scope], offline: bool) -> Result<TokenResponse, AuthError> {
        let access = self.grant(identity, scopes);
        let catalog = access.iter().any(|e| e.kind == "registry");
        let cat = if catalog && !identity.permissions.admin {
            identity.permissions.pull_patterns()
        } else {
            Vec::new()
        };
        let (token, issued) = self
            .tokens
            .issue(&identity.subject, access, identity.permissions.admin, cat)
            .map_err(|e| AuthError::Internal(e.to_string()))?;
        let refresh_token = match identity.refresh.as_ref().filter(|_| offline) {
            Some((sub, gen)) => Some(
                self.tokens
                    .issue_refresh(sub, gen)
                    .map_err(|e| AuthError::Internal(e.to_string()))?,
            ),
            None => None,
        };
        Ok(TokenResponse {
            access_token: token.clone(),
            token,
            expires_in: self.tokens.lifetime().as_secs(),
            issued_at: crate::clock::rfc3339(issued),
            refresh_token,
        })
    }

    /// The claims of a bearer token this registry issued.
    pub fn verify(&self, token: &str) -> Option<Arc<AccessClaims>> {
        let now_secs = token::secs_of(self.clock.now_ms());
        if let Some(claims) = self.verified.get(token, now_secs) {
            return Some(claims);
        }
        let claims = Arc::new(self.tokens.verify(token).ok()?);
        self.verified.insert(token, claims.clone(), now_secs);
        Some(claims)
    }
}

/// The grant subjects of an identity provider's groups; a group whose name no
/// grant can hold (see `crate::text`) has no grants and is left out.
fn group_subjects(groups: &[String]) -> Vec<(SubjectKind, String)> {
    groups
        .iter()
        .filter(|g| text::name(g).is_ok())
        .map(|g| (SubjectKind::Group, g.clone()))
        .collect()
}

fn failure_error(f: Failure) -> AuthError {
    match f {
        Failure::Invalid => AuthError::InvalidCredentials,
        Failure::Unavailable(why) => AuthError::Unavailable(why),
    }
}

fn store_failure(e: MetaError) -> Failure {
    if e.is_bad_input() {
        // A backstop: names are checked before they are looked up.
        tracing::warn!(error = %e, "the metadata database refused a name to look up");
        return Failure::Invalid;
    }
    tracing::error!(error = %e, "reading access facts failed");
    Failure::Unavailable("the registry cannot read its access facts".into())
}

/// Refuses an identity whose name, vouched for by an identity provider, the
/// registry cannot keep (in audit entries, grants and `pushed_by`).
fn vouched_name(provider: &str, name: &str) -> Result<(), Failure> {
    text::name(name).map(drop).map_err(|e| {
        tracing::warn!(provider, name = ?name, "identity refused: its name {e}");
        Failure::Invalid
    })
}

/// The pull grants `auth.anonymous` gives everyone.
fn anonymous_grants(config: &AuthConfig) -> anyhow::Result<Vec<Grant>> {
    config
        .anonymous
        .iter()
        .map(|p| {
            Pattern::parse(p).map(|pattern| Grant {
                pattern,
                role: Role::Pull,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("auth.anonymous: {e}"))
}
