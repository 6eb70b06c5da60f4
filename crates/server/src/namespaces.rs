//! Per-namespace switches of tag life: whether `--ttl-`/`--idle-` suffixes
//! count, whether a malformed one is refused at push, and keep-latest. The
//! registry checks pushes against them; the lifecycle jobs apply them.

use crate::config::{InvalidSuffix, LifecycleConfig};
use crate::pattern::Pattern;
use crate::tag_names::{self, SuffixError};

/// Per-namespace switches: suffix rules and keep-latest mode.
#[derive(Debug, Clone)]
pub struct NamespaceRules {
    /// Most specific pattern first.
    namespaces: Vec<(Pattern, Option<bool>, bool)>,
    suffix_rules: bool,
    invalid_suffix: InvalidSuffix,
}

impl NamespaceRules {
    pub fn from_config(config: &LifecycleConfig) -> Result<NamespaceRules, String> {
        let mut namespaces = config
            .namespaces
            .iter()
            .map(|n| Ok((Pattern::parse(&n.pattern)?, n.suffix_rules, n.keep_latest)))
            .collect::<Result<Vec<_>, String>>()?;
        namespaces.sort_by(|a, b| {
            b.0.specificity()
                .cmp(&a.0.specificity())
                .then_with(|| a.0.as_str().cmp(b.0.as_str()))
        });
        Ok(NamespaceRules {
            namespaces,
            suffix_rules: config.suffix_rules,
            invalid_suffix: config.invalid_suffix,
        })
    }

    fn namespace(&self, repo: &str) -> Option<&(Pattern, Option<bool>, bool)> {
        self.namespaces.iter().find(|(p, _, _)| p.matches(repo))
    }

    /// Whether `--ttl-`/`--idle-` suffixes count in `repo`.
    pub fn suffix_rules(&self, repo: &str) -> bool {
        self.namespace(repo)
            .and_then(|(_, suffix, _)| *suffix)
            .unwrap_or(self.suffix_rules)
    }

    /// Whether only the newest plain tag survives in `repo`.
    pub fn keep_latest(&self, repo: &str) -> bool {
        self.namespace(repo).is_some_and(|(_, _, keep)| *keep)
    }

    /// Refuses a push of a tag whose suffix is malformed, when suffixes count
    /// in `repo` and the configuration says to refuse.
    pub fn check_push(&self, repo: &str, tag: &str) -> Result<(), SuffixError> {
        if self.invalid_suffix == InvalidSuffix::Reject && self.suffix_rules(repo) {
            tag_names::suffix_rule(tag)?;
        }
        Ok(())
    }
}

impl Default for NamespaceRules {
    fn default() -> Self {
        NamespaceRules {
            namespaces: Vec::new(),
            suffix_rules: true,
            invalid_suffix: InvalidSuffix::Reject,
        }
    }
}
