//! What an identity may do: actions, roles, repository name patterns and the
//! scopes of the Docker token protocol.

use std::fmt;

use globset::{GlobBuilder, GlobMatcher};

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

/// A repository name pattern: `*` matches within one path component, `**`
/// across components, `?` one character.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    matcher: GlobMatcher,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/*?".contains(c);
        // No longer than the names it matches: patterns are stored and shown.
        if text.len() > berth_oci::MAX_NAME_LEN {
            let start: String = text.chars().take(16).collect();
            return Err(format!(
                "pattern {start:?}…: longer than {} characters",
                berth_oci::MAX_NAME_LEN
            ));
        }
        if text.is_empty() || !text.chars().all(allowed) {
            return Err(format!(
                "pattern {text:?}: use lowercase repository name characters and the wildcards * ** ?"
            ));
        }
        let glob = GlobBuilder::new(text)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("pattern {text:?}: {e}"))?;
        Ok(Pattern {
            text: text.to_string(),
            matcher: glob.compile_matcher(),
        })
    }

    pub fn matches(&self, repo: &str) -> bool {
        self.matcher.is_match(repo)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_stays_in_one_component_and_double_star_crosses() {
        let one = Pattern::parse("team/*").unwrap();
        assert!(one.matches("team/app"));
        assert!(!one.matches("team/app/sub"));
        assert!(!one.matches("teams/app"));
        let any = Pattern::parse("team/**").unwrap();
        assert!(any.matches("team/app/sub"));
        assert!(Pattern::parse("**").unwrap().matches("a/b/c"));
        assert!(Pattern::parse("Team/*").is_err());
        assert!(Pattern::parse("").is_err());
        assert!(Pattern::parse(&"a".repeat(255)).is_ok());
        assert!(Pattern::parse(&format!("{}é", "a".repeat(255))).is_err());
        assert!(Pattern::parse(&"é".repeat(200)).is_err());
    }

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
