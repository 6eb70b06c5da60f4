//! Retention policies: which rules apply to which repository.

use berth_meta::lifecycle::PolicyRecord;
use globset::GlobMatcher;

pub use crate::config::Rules;
use crate::pattern::Pattern;

/// A policy ready to be applied.
#[derive(Debug, Clone)]
pub struct Policy {
    pub pattern: Pattern,
    pub rules: Rules,
    pub keep_patterns: Vec<GlobMatcher>,
}

impl Policy {
    pub fn new(pattern: &str, rules: Rules) -> Result<Policy, String> {
        let keep_patterns = rules.compile()?;
        Ok(Policy {
            pattern: Pattern::parse(pattern)?,
            rules,
            keep_patterns,
        })
    }

    pub fn from_record(record: &PolicyRecord) -> Result<Policy, String> {
        let rules: Rules = serde_json::from_str(&record.rules_json)
            .map_err(|e| format!("stored policy {:?} is not valid: {e}", record.pattern))?;
        Policy::new(&record.pattern, rules)
    }

    fn specificity(&self) -> (usize, std::cmp::Reverse<usize>) {
        self.pattern.specificity()
    }
}

/// Every policy; a repository gets the most specific one that matches it.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    by_specificity: Vec<Policy>,
}

impl Policies {
    pub fn new(mut policies: Vec<Policy>) -> Policies {
        policies.sort_by(|a, b| {
            b.specificity()
                .cmp(&a.specificity())
                .then_with(|| a.pattern.as_str().cmp(b.pattern.as_str()))
        });
        Policies {
            by_specificity: policies,
        }
    }

    /// Policies from their stored records; a record that does not parse is
    /// skipped with an error in the log rather than stopping every run.
    pub fn from_records(records: &[PolicyRecord]) -> Policies {
        let policies = records
            .iter()
            .filter_map(|r| match Policy::from_record(r) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::error!(pattern = %r.pattern, error = %e, "ignoring a retention policy");
                    None
                }
            })
            .collect();
        Policies::new(policies)
    }

    pub fn for_repository(&self, repo: &str) -> Option<&Policy> {
        self.by_specificity.iter().find(|p| p.pattern.matches(repo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(pattern: &str) -> Policy {
        Policy::new(
            pattern,
            Rules {
                keep_last: Some(1),
                ..Rules::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn the_most_specific_pattern_wins_and_the_default_catches_the_rest() {
        let all = Policies::new(vec![
            policy("**"),
            policy("team/*"),
            policy("team/app"),
            policy("team/**"),
        ]);
        let of = |repo: &str| all.for_repository(repo).map(|p| p.pattern.as_str().to_string());
        assert_eq!(of("team/app").as_deref(), Some("team/app"));
        assert_eq!(of("team/web").as_deref(), Some("team/*"));
        assert_eq!(of("team/web/x").as_deref(), Some("team/**"));
        assert_eq!(of("other").as_deref(), Some("**"));
        assert!(Policies::default().for_repository("x").is_none());
    }

    #[test]
    fn rules_are_checked() {
        let bad = |rules: Rules| Policy::new("a", rules).unwrap_err();
        assert!(bad(Rules {
            keep_days: Some(0),
            ..Rules::default()
        })
        .contains("keep_days"));
        assert!(bad(Rules {
            keep_patterns: vec!["[".into()],
            ..Rules::default()
        })
        .contains("keep_patterns"));
        assert!(Policy::new("A/B", Rules::default()).is_err());
        let only_floor = Rules {
            keep_min: Some(3),
            untagged: Some(7),
            ..Rules::default()
        };
        assert!(!only_floor.decides_tags());
        let parsed: Result<Rules, _> = serde_json::from_str(r#"{"keep_lats": 3}"#);
        assert!(parsed.is_err(), "unknown rule names are refused");
    }
}
