//! What an identity may do: actions, roles, grants on repository patterns and the
//! scopes of the Docker token protocol.

use std::fmt;

use std::sync::Arc;

use super::token::AccessClaims;
use crate::pattern::Pattern;

/// An action on a repository, as named in token scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Action::Pull => 1,
            Action::Push => 2,
            Action::Delete => 4,
        }
    }
}

/// A set of actions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const ALL: Actions = Actions(7);

    pub fn of(actions: &[Action]) -> Actions {
        Actions(actions.iter().fold(0, |bits, a| bits | a.bit()))
    }

    /// Actions named in a scope; `*` means all, unknown names are ignored.
    pub fn parse_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Actions {
        let mut set = Actions::NONE;
        for name in names {
            match name.trim() {
                "*" => set = Actions::ALL,
                "pull" => set = set.union(Actions::of(&[Action::Pull])),
                "push" => set = set.union(Actions::of(&[Action::Push])),
                "delete" => set = set.union(Actions::of(&[Action::Delete])),
                _ => {}
            }
        }
        set
    }

    pub fn contains(self, action: Action) -> bool {
        self.0 & action.bit() != 0
    }

    pub fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }

    pub fn intersect(self, other: Actions) -> Actions {
        Actions(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn names(self) -> Vec<String> {
        Action::ALL
            .iter()
            .filter(|a| self.contains(**a))
            .map(|a| a.as_str().to_string())
            .collect()
    }
}

/// A role given on a pattern. Each role includes pull, because a client that
/// pushes or deletes must also read what it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Pull,
    Push,
    Delete,
    /// Everything on the matching repositories (not administration of Berth).
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "pull" => Some(Role::Pull),
            "push" => Some(Role::Push),
            "delete" => Some(Role::Delete),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Pull => "pull",
            Role::Push => "push",
            Role::Delete => "delete",
            Role::Admin => "admin",
        }
    }

    pub fn actions(self) -> Actions {
        match self {
            Role::Pull => Actions::of(&[Action::Pull]),
            Role::Push => Actions::of(&[Action::Pull, Action::Push]),
            Role::Delete => Actions::of(&[Action::Pull, Action::Delete]),
            Role::Admin => Actions::ALL,
        }
    }
}

/// A role on a pattern.
#[derive(Debug, Clone)]
pub struct Grant {
    pub pattern: Pattern,
    pub role: Role,
}

impl Grant {
    pub fn new(pattern: &str, role: &str) -> Result<Grant, String> {
        let role = Role::parse(role).ok_or_else(|| format!("role {role:?}: use pull, push, delete or admin"))?;
        Ok(Grant {
            pattern: Pattern::parse(pattern)?,
            role,
        })
    }

    /// `PATTERN:ROLE`, as on the command line.
    pub fn parse(spec: &str) -> Result<Grant, String> {
        let (pattern, role) = spec
            .rsplit_once(':')
            .ok_or_else(|| format!("grant {spec:?}: write PATTERN:ROLE, such as team/*:push"))?;
        Grant::new(pattern, role)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.pattern, self.role.as_str())
    }
}

/// Everything one identity may do.
#[derive(Debug, Clone, Default)]
pub struct Permissions {
    /// Administrators may do everything, on every repository and the admin API.
    pub admin: bool,
    pub grants: Vec<Grant>,
}

impl Permissions {
    pub fn allowed(&self, repo: &str) -> Actions {
        if self.admin {
            return Actions::ALL;
        }
        self.grants
            .iter()
            .filter(|g| g.pattern.matches(repo))
            .fold(Actions::NONE, |set, g| set.union(g.role.actions()))
    }

    /// Patterns on which the identity may pull, for filtering the catalog.
    pub fn pull_patterns(&self) -> Vec<String> {
        let mut patterns: Vec<String> = self.grants.iter().map(|g| g.pattern.as_str().to_string()).collect();
        patterns.sort();
        patterns.dedup();
        patterns
    }
}

/// A scope asked for at the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Repository { name: String, actions: Actions },
    Catalog,
}

impl Scope {
    /// `repository:NAME:ACTIONS` or `registry:catalog:*`; other scopes (and
    /// resource types such as `repository(plugin)`) are not understood and
    /// give `None`, so they are left out of the token as the spec says.
    pub fn parse(s: &str) -> Option<Scope> {
        let (kind, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        match kind {
            "repository" if !name.is_empty() => Some(Scope::Repository {
                name: name.to_string(),
                actions: Actions::parse_names(actions.split(',')),
            }),
            "registry" if name == "catalog" => Some(Scope::Catalog),
            _ => None,
        }
    }
}

/// What the caller of a `/v2/` request may do.
pub enum Access {
    /// `auth.mode = "none"`: everything.
    Open,
    Token(Arc<AccessClaims>),
}

impl Access {
    pub fn may(&self, repo: &str, action: Action) -> bool {
        match self {
            Access::Open => true,
            Access::Token(claims) => claims.allows(repo, action.as_str()),
        }
    }

    /// Whether the catalog may list `repo`: pullable by the holder.
    pub fn may_list(&self) -> impl Fn(&str) -> bool + '_ {
        let everything = self.sees_everything();
        let patterns: Vec<Pattern> = match self {
            Access::Token(claims) if !everything => claims.cat.iter().filter_map(|p| Pattern::parse(p).ok()).collect(),
            _ => Vec::new(),
        };
        move |repo| everything || patterns.iter().any(|p| p.matches(repo))
    }

    /// The token's subject, for `pushed_by`; `None` without auth.
    pub fn subject(&self) -> Option<&str> {
        match self {
            Access::Open => None,
            Access::Token(claims) => Some(claims.sub.as_str()).filter(|s| !s.is_empty()),
        }
    }

    /// Whether the holder may read every repository (so no per-repository check is needed).
    pub fn sees_everything(&self) -> bool {
        match self {
            Access::Open => true,
            Access::Token(claims) => claims.adm,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_pull_and_admin_includes_everything() {
        let perms = Permissions {
            admin: false,
            grants: vec![
                Grant::parse("team/*:push").unwrap(),
                Grant::parse("team/old:delete").unwrap(),
            ],
        };
        assert_eq!(perms.allowed("team/app").names(), ["pull", "push"]);
        assert_eq!(perms.allowed("team/old").names(), ["pull", "push", "delete"]);
        assert!(perms.allowed("other/app").is_empty());
        let admin = Permissions {
            admin: true,
            grants: vec![],
        };
        assert_eq!(admin.allowed("x"), Actions::ALL);
        assert!(Grant::parse("team/*").is_err());
        assert!(Grant::parse("team/*:write").is_err());
    }

    #[test]
    fn scopes_parse_as_docker_sends_them() {
        assert_eq!(
            Scope::parse("repository:team/app:pull,push"),
            Some(Scope::Repository {
                name: "team/app".into(),
                actions: Actions::of(&[Action::Pull, Action::Push])
            })
        );
        assert_eq!(
            Scope::parse("repository:team/app:*"),
            Some(Scope::Repository {
                name: "team/app".into(),
                actions: Actions::ALL
            })
        );
        assert_eq!(Scope::parse("registry:catalog:*"), Some(Scope::Catalog));
        assert_eq!(Scope::parse("repository(plugin):x:pull"), None);
        assert_eq!(Scope::parse("nonsense"), None);
        let unknown_action = Scope::parse("repository:a:fly").unwrap();
        assert_eq!(
            unknown_action,
            Scope::Repository {
                name: "a".into(),
                actions: Actions::NONE
            }
        );
    }
}
