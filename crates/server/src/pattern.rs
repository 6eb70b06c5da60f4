//! Repository name patterns, shared by grants, storage routing, namespaces
//! and retention policies.

use std::fmt;

use globset::{GlobBuilder, GlobMatcher};

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

    /// How specific a repository pattern is: more literal characters first, then
    /// fewer wildcards (`team/*` before `team/**`).
    pub fn specificity(&self) -> (usize, std::cmp::Reverse<usize>) {
        let wildcards = self.text.chars().filter(|c| "*?".contains(*c)).count();
        (self.text.len() - wildcards, std::cmp::Reverse(wildcards))
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
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
    fn more_literal_characters_and_fewer_wildcards_are_more_specific() {
        let spec = |p: &str| Pattern::parse(p).unwrap().specificity();
        assert!(spec("team/app") > spec("team/*"));
        assert!(spec("team/*") > spec("team/**"));
        assert!(spec("team/**") > spec("**"));
    }
}
