//! The planner: given one repository's tags and manifests, the rules that
//! apply to it and the time, which tags and manifests go, and why.
//!
//! It is a pure function of its inputs, so a preview and a run made at the
//! same moment decide the same, and tests need no clock but a number.

use std::collections::{HashMap, HashSet};

use berth_meta::lifecycle::{ManifestState, PlannedRemoval, Removal, RepoState, TagState};
use berth_oci::Digest;

use super::policy::Policy;
use crate::tag_names::{signature_subject, suffix_rule, SuffixRule};

const DAY_MS: i64 = 86_400_000;

/// What applies to one repository.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    pub now_ms: i64,
    /// Whether `--ttl-`/`--idle-` suffixes are honoured here.
    pub suffix_rules: bool,
    /// Whether only the newest plain tag survives here.
    pub keep_latest: bool,
    /// The retention policy, when retention rules are part of this plan.
    pub policy: Option<&'a Policy>,
}

/// What happens to one tag, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct TagDecision {
    pub tag: TagState,
    pub keep: bool,
    /// The rule that decided: `ttl`, `idle`, `keep_latest`, `keep_last`,
    /// `keep_days`, `keep_pulled_within`, `keep_patterns`, `keep_min`,
    /// `retention`, `follows_subject` or `no_policy`.
    pub rule: &'static str,
    pub reason: String,
    /// When the deciding rule stops keeping the tag (or, for a deletion,
    /// when it became due), if that is a fixed time.
    pub expires_ms: Option<i64>,
    /// The subject a `follows_subject` tag lives and dies with.
    pub follows: Option<Digest>,
}

/// A manifest that goes, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestDeletion {
    pub digest: Digest,
    pub rule: &'static str,
    pub reason: String,
}

/// Everything decided for one repository.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoPlan {
    pub repo: String,
    pub tags: Vec<TagDecision>,
    pub manifests: Vec<ManifestDeletion>,
}

/// One line of a preview: a tag kept or deleted, or a manifest deleted.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
#[schema(as = PlanEntry)]
pub struct Entry {
    pub repository: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    pub digest: String,
    /// `keep` or `delete`.
    pub action: &'static str,
    pub rule: &'static str,
    pub reason: String,
    /// Unix milliseconds when the deciding rule stops keeping it, if fixed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
}

impl RepoPlan {
    /// The plan as preview lines: tags by name, then manifests deleted.
    pub fn entries(&self, deleted_only: bool) -> Vec<Entry> {
        let tags = self.tags.iter().filter(|t| !deleted_only || !t.keep).map(|t| Entry {
            repository: self.repo.clone(),
            tag: Some(t.tag.name.clone()),
            digest: t.tag.digest.to_string(),
            action: if t.keep { "keep" } else { "delete" },
            rule: t.rule,
            reason: t.reason.clone(),
            expires_ms: t.expires_ms,
        });
        let manifests = self.manifests.iter().map(|m| Entry {
            repository: self.repo.clone(),
            tag: None,
            digest: m.digest.to_string(),
            action: "delete",
            rule: m.rule,
            reason: m.reason.clone(),
            expires_ms: None,
        });
        tags.chain(manifests).collect()
    }

    /// The removals to apply, each with the state it was decided on: the
    /// tags the rules delete first; then each manifest after whatever listed
    /// it or was its subject, a subject's follower tags right after it (they
    /// go only once it is gone), and a follower's manifest after its tags.
    pub fn removals(&self, state: &RepoState) -> Vec<PlannedRemoval> {
        let tag_removal = |d: &TagDecision| PlannedRemoval {
            removal: Removal::Tag {
                name: d.tag.name.clone(),
                digest: d.tag.digest.clone(),
                pushed_ms: d.tag.pushed_ms,
                last_pulled_ms: d.tag.last_pulled_ms,
                follows: d.follows.clone(),
            },
            rule: d.rule.to_string(),
            reason: d.reason.clone(),
        };
        let deleted = self.tags.iter().filter(|d| !d.keep);
        let mut out: Vec<PlannedRemoval> = deleted
            .clone()
            .filter(|d| d.follows.is_none())
            .map(tag_removal)
            .collect();
        let mut followers: HashMap<&Digest, Vec<&TagDecision>> = HashMap::new();
        for d in deleted.filter(|d| d.follows.is_some()) {
            if let Some(subject) = &d.follows {
                followers.entry(subject).or_default().push(d);
            }
        }
        let by_digest: HashMap<&Digest, &ManifestState> = state.manifests.iter().map(|m| (&m.digest, m)).collect();
        let going: HashSet<&Digest> = self.manifests.iter().map(|m| &m.digest).collect();
        // Parents (indexes listing it, its subject, the subject a tag of it
        // follows) that are going too.
        let mut waits_for: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
        for m in &state.manifests {
            for child in &m.children {
                if going.contains(&m.digest) && going.contains(child) {
                    waits_for.entry(child).or_default().push(&m.digest);
                }
            }
            if let Some(subject) = &m.subject {
                if going.contains(subject) && going.contains(&m.digest) {
                    waits_for.entry(&m.digest).or_default().push(subject);
                }
            }
        }
        for (subject, tags) in &followers {
            for t in tags {
                if going.contains(subject) && going.contains(&t.tag.digest) {
                    waits_for.entry(&t.tag.digest).or_default().push(subject);
                }
            }
        }
        let mut emitted: HashSet<&Digest> = HashSet::new();
        let mut pending: Vec<&ManifestDeletion> = self.manifests.iter().collect();
        while !pending.is_empty() {
            let before = pending.len();
            let mut rest = Vec::new();
            for d in pending {
                let ready = waits_for
                    .get(&d.digest)
                    .is_none_or(|parents| parents.iter().all(|p| emitted.contains(p)));
                if !ready {
                    rest.push(d);
                    continue;
                }
                let Some(m) = by_digest.get(&d.digest) else {
                    continue;
                };
                emitted.insert(&d.digest);
                out.push(PlannedRemoval {
                    removal: Removal::Manifest {
                        digest: d.digest.clone(),
                        pushed_ms: m.pushed_ms,
                        last_pulled_ms: m.last_pulled_ms,
                        untouched_since: (d.rule == "untagged").then_some(m.touched_ms + 1),
                        collected: false,
                    },
                    rule: d.rule.to_string(),
                    reason: d.reason.clone(),
                });
                if let Some(tags) = followers.remove(&d.digest) {
                    out.extend(tags.into_iter().map(tag_removal));
                }
            }
            if rest.len() == before {
                // A cycle cannot be pushed (digests would have to name each
                // other); should stored data hold one anyway, stop here.
                break;
            }
            pending = rest;
        }
        // Followers of a subject that is not removed here are tried anyway:
        // the store removes them only if the subject is gone.
        let mut left: Vec<&TagDecision> = followers.into_values().flatten().collect();
        left.sort_by(|a, b| a.tag.name.cmp(&b.tag.name));
        out.extend(left.into_iter().map(tag_removal));
        out
    }
}

fn days(ms: i64) -> String {
    let d = ms as f64 / DAY_MS as f64;
    if d.abs() >= 10.0 {
        format!("{d:.0}d")
    } else {
        format!("{d:.1}d")
    }
}

fn window_text(window_ms: i64) -> String {
    if window_ms % DAY_MS == 0 {
        format!("{}d", window_ms / DAY_MS)
    } else {
        format!("{}h", window_ms / 3_600_000)
    }
}

/// A tag that lives and dies with a subject manifest instead of being
/// decided by the rules: a tag of the signature schema
/// (`sha256-<hex>.sig`, which names its subject), or any tag of a manifest
/// that declares a `subject` (an attestation, an SBOM or a signature pushed
/// with the referrers API), whatever the tag is called. Such a tag never
/// takes an image's place in `keep_last`, `keep_days`, `keep_min` or
/// keep-latest counting, and no suffix rule applies to it.
#[derive(Debug, Clone)]
struct Follower<'a> {
    tag: &'a TagState,
    subject: Digest,
    /// Whether the tag's name says the subject (rather than its manifest).
    by_name: bool,
}

impl<'a> Follower<'a> {
    /// The follower `tag` is, if any. Should the subject its name says not
    /// be here while the one its manifest declares is, the declared one
    /// counts: that is the one the manifest is alive with.
    fn of(tag: &'a TagState, manifest: Option<&ManifestState>, present: impl Fn(&Digest) -> bool) -> Option<Self> {
        let declared = manifest.and_then(|m| m.subject.clone());
        let (subject, by_name) = match (signature_subject(&tag.name), declared) {
            (Some(named), Some(declared)) if !present(&named) && present(&declared) => (declared, false),
            (Some(named), _) => (named, true),
            (None, Some(declared)) => (declared, false),
            (None, None) => return None,
        };
        Some(Follower { tag, subject, by_name })
    }

    fn decision(&self, fate: SubjectFate) -> TagDecision {
        let what = if self.by_name {
            format!("signature tag of {}", self.subject)
        } else {
            format!("its manifest's subject is {}", self.subject)
        };
        let (keep, outcome) = match fate {
            SubjectFate::Stays => (true, "which stays"),
            SubjectFate::Deleted => (false, "which is deleted"),
            SubjectFate::Absent => (
                true,
                "which is not in the repository: garbage collection removes it after the grace period",
            ),
        };
        TagDecision {
            tag: self.tag.clone(),
            keep,
            rule: "follows_subject",
            reason: format!("{what}, {outcome}"),
            expires_ms: None,
            follows: Some(self.subject.clone()),
        }
    }
}

/// What the plan does with a follower's subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubjectFate {
    Stays,
    Deleted,
    /// Never pushed here, or deleted before: the garbage collector's case.
    Absent,
}

/// Decides one repository.
pub fn plan(state: &RepoState, settings: Settings<'_>) -> RepoPlan {
    let now = settings.now_ms;
    let manifests: HashMap<&Digest, &ManifestState> = state.manifests.iter().map(|m| (&m.digest, m)).collect();
    let mut decided: Vec<TagDecision> = Vec::with_capacity(state.tags.len());
    let mut followers: Vec<Follower<'_>> = Vec::new();
    let mut plain: Vec<&TagState> = Vec::new();

    for tag in &state.tags {
        if let Some(follower) = Follower::of(tag, manifests.get(&tag.digest).copied(), |d| manifests.contains_key(d)) {
            followers.push(follower);
            continue;
        }
        let rule = if settings.suffix_rules {
            suffix_rule(&tag.name).ok().flatten()
        } else {
            None
        };
        match rule {
            Some(rule) => decided.push(suffix_decision(tag, rule, manifests.get(&tag.digest).copied(), now)),
            None => plain.push(tag),
        }
    }

    // Newest first; on equal push times the greater name is the newer.
    plain.sort_by(|a, b| b.pushed_ms.cmp(&a.pushed_ms).then_with(|| b.name.cmp(&a.name)));
    if settings.keep_latest {
        decided.extend(keep_latest(&plain));
    } else {
        match settings.policy {
            Some(policy) if policy.rules.decides_tags() => {
                // A pull of the tag's digest is a pull of the image too.
                let last_pull = |t: &TagState| {
                    t.last_pulled_ms
                        .into_iter()
                        .chain(manifests.get(&t.digest).and_then(|m| m.last_pulled_ms))
                        .max()
                };
                decided.extend(retention(&plain, policy, now, last_pull))
            }
            Some(policy) => decided.extend(plain.iter().map(|t| TagDecision {
                tag: (*t).clone(),
                keep: true,
                rule: "no_policy",
                reason: format!("policy {} has no tag rules", policy.pattern),
                expires_ms: None,
                follows: None,
            })),
            None => decided.extend(plain.iter().map(|t| TagDecision {
                tag: (*t).clone(),
                keep: true,
                rule: "no_policy",
                reason: "no retention policy applies".into(),
                expires_ms: None,
                follows: None,
            })),
        }
    }

    let untagged_days = settings.policy.and_then(|p| p.rules.untagged);
    let (tag_decisions, manifest_deletions) = manifests_and_followers(state, decided, &followers, untagged_days, now);
    RepoPlan {
        repo: state.name.clone(),
        tags: tag_decisions,
        manifests: manifest_deletions,
    }
}

fn suffix_decision(tag: &TagState, rule: SuffixRule, manifest: Option<&ManifestState>, now: i64) -> TagDecision {
    let window = rule.window_ms();
    let (since, what) = match rule {
        SuffixRule::Ttl { .. } => (tag.pushed_ms, "pushed"),
        SuffixRule::Idle { .. } => {
            let pulled = tag
                .last_pulled_ms
                .into_iter()
                .chain(manifest.and_then(|m| m.last_pulled_ms))
                .max();
            match pulled {
                Some(p) if p > tag.pushed_ms => (p, "last pulled"),
                _ => (tag.pushed_ms, "pushed"),
            }
        }
    };
    let expires = since.saturating_add(window);
    let keep = now < expires;
    let reason = if keep {
        format!(
            "--{}-{}: {what} {} ago, expires in {}",
            rule.name(),
            window_text(window),
            days(now - since),
            days(expires - now)
        )
    } else {
        format!(
            "--{}-{}: {what} {} ago, expired {} ago",
            rule.name(),
            window_text(window),
            days(now - since),
            days(now - expires)
        )
    };
    TagDecision {
        tag: tag.clone(),
        keep,
        rule: rule.name(),
        reason,
        expires_ms: Some(expires),
        follows: None,
    }
}

fn keep_latest(plain: &[&TagState]) -> Vec<TagDecision> {
    let Some(newest) = plain.first() else {
        return Vec::new();
    };
    plain
        .iter()
        .enumerate()
        .map(|(i, t)| TagDecision {
            tag: (*t).clone(),
            keep: i == 0,
            rule: "keep_latest",
            reason: if i == 0 {
                "keep_latest: the most recently pushed plain tag".into()
            } else {
                format!("keep_latest: {} was pushed later", newest.name)
            },
            expires_ms: None,
            follows: None,
        })
        .collect()
}

fn retention(
    plain: &[&TagState],
    policy: &Policy,
    now: i64,
    last_pull: impl Fn(&TagState) -> Option<i64>,
) -> Vec<TagDecision> {
    let rules = &policy.rules;
    let mut out: Vec<TagDecision> = plain
        .iter()
        .enumerate()
        .map(|(rank, t)| {
            let tag = (*t).clone();
            if let Some(p) = policy
                .keep_patterns
                .iter()
                .zip(&rules.keep_patterns)
                .find(|(m, _)| m.is_match(&t.name))
            {
                return TagDecision {
                    tag,
                    keep: true,
                    rule: "keep_patterns",
                    reason: format!("keep_patterns: matches {:?}", p.1),
                    expires_ms: None,
                    follows: None,
                };
            }
            if let Some(n) = rules.keep_last.filter(|n| rank < *n as usize) {
                return TagDecision {
                    tag,
                    keep: true,
                    rule: "keep_last",
                    reason: format!("keep_last: number {} of the {n} most recent", rank + 1),
                    expires_ms: None,
                    follows: None,
                };
            }
            // Each time rule keeps the tag until some moment; the one that
            // keeps it longest is the reason it stays.
            let mut until: Vec<(i64, &'static str, String)> = Vec::new();
            if let Some(d) = rules.keep_days {
                until.push((
                    t.pushed_ms + i64::from(d) * DAY_MS,
                    "keep_days",
                    format!("keep_days: pushed {} ago, within {d} days", days(now - t.pushed_ms)),
                ));
            }
            if let (Some(d), Some(p)) = (rules.keep_pulled_within, last_pull(t)) {
                until.push((
                    p + i64::from(d) * DAY_MS,
                    "keep_pulled_within",
                    format!("keep_pulled_within: pulled {} ago, within {d} days", days(now - p)),
                ));
            }
            if let Some(k) = &rules.keep_by_age {
                if let (Some(d), Some(p)) = (k.match_pulled_in_last_days, last_pull(t)) {
                    until.push((
                        p + i64::from(d) * DAY_MS,
                        "keep_by_age",
                        format!("keep_by_age: pulled {} ago, within {d} days", days(now - p)),
                    ));
                }
                let access = last_pull(t).map_or(t.pushed_ms, |p| p.max(t.pushed_ms));
                until.push((
                    access + i64::from(k.max_age_days) * DAY_MS,
                    "keep_by_age",
                    format!(
                        "keep_by_age: last used {} ago, within max_age_days {}",
                        days(now - access),
                        k.max_age_days
                    ),
                ));
            }
            // The first of equals wins, as keep_days did before keep_pulled_within.
            let longest =
                until
                    .into_iter()
                    .filter(|(u, _, _)| now < *u)
                    .reduce(|best, next| if next.0 > best.0 { next } else { best });
            match longest {
                Some((u, rule, reason)) => TagDecision {
                    tag,
                    keep: true,
                    rule,
                    reason,
                    expires_ms: Some(u),
                    follows: None,
                },
                None => TagDecision {
                    tag,
                    keep: false,
                    rule: "retention",
                    reason: format!(
                        "policy {}: {}",
                        policy.pattern,
                        why_not_kept(t, last_pull(t), rank, policy, now)
                    ),
                    expires_ms: Some(now),
                    follows: None,
                },
            }
        })
        .collect();
    // The floor: the most recent of the tags going are kept until N remain.
    if let Some(min) = rules.keep_min {
        let mut kept = out.iter().filter(|d| d.keep).count();
        for d in out.iter_mut() {
            if kept >= min as usize {
                break;
            }
            if !d.keep {
                d.keep = true;
                d.rule = "keep_min";
                d.reason = format!("keep_min: at least {min} tags stay");
                d.expires_ms = None;
                kept += 1;
            }
        }
    }
    out
}

fn why_not_kept(t: &TagState, last_pull: Option<i64>, rank: usize, policy: &Policy, now: i64) -> String {
    let rules = &policy.rules;
    let mut why = Vec::new();
    if let Some(n) = rules.keep_last {
        why.push(format!("number {} by push time, beyond keep_last {n}", rank + 1));
    }
    if let Some(d) = rules.keep_days {
        why.push(format!("pushed {} ago, beyond keep_days {d}", days(now - t.pushed_ms)));
    }
    if let Some(d) = rules.keep_pulled_within {
        match last_pull {
            Some(p) => why.push(format!("pulled {} ago, beyond keep_pulled_within {d}", days(now - p))),
            None => why.push(format!("never pulled (keep_pulled_within {d})")),
        }
    }
    if let Some(k) = &rules.keep_by_age {
        let access = last_pull.map_or(t.pushed_ms, |p| p.max(t.pushed_ms));
        why.push(format!(
            "last used {} ago, beyond keep_by_age's max_age_days {}",
            days(now - access),
            k.max_age_days
        ));
    }
    if !rules.keep_patterns.is_empty() {
        why.push(format!("matches none of keep_patterns {:?}", rules.keep_patterns));
    }
    why.join("; ")
}

/// Which manifests survive the tag decisions, which follower tags stay with
/// their subject, and which manifests go with what.
fn manifests_and_followers(
    state: &RepoState,
    mut decided: Vec<TagDecision>,
    followers: &[Follower<'_>],
    untagged_days: Option<u32>,
    now: i64,
) -> (Vec<TagDecision>, Vec<ManifestDeletion>) {
    let by_digest: HashMap<&Digest, &ManifestState> = state.manifests.iter().map(|m| (&m.digest, m)).collect();
    let present: HashSet<&Digest> = by_digest.keys().copied().collect();
    let tagged_before: HashSet<&Digest> = state.tags.iter().map(|t| &t.digest).collect();
    let mut listed_by: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
    let mut referrers: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
    for m in &state.manifests {
        for c in &m.children {
            listed_by.entry(c).or_default().push(&m.digest);
        }
        if let Some(s) = &m.subject {
            referrers.entry(s).or_default().push(&m.digest);
        }
    }
    // A referrer's subject, when that is a manifest of this repository: the
    // referrer is alive exactly when its subject is (or an index lists it).
    let follows_present = |m: &ManifestState| m.subject.as_ref().is_some_and(|s| present.contains(s));

    // Roots: manifests with a tag that stays, and untagged top-level manifests
    // that no untagged rule removes (those are the garbage collector's).
    // A manifest with a present subject is never a root: it follows.
    let mut untagged_deletions = Vec::new();
    let kept: HashSet<Digest> = decided
        .iter()
        .filter(|d| d.keep)
        .map(|d| d.tag.digest.clone())
        .collect();
    let mut roots: Vec<&Digest> = by_digest.keys().copied().filter(|d| kept.contains(*d)).collect();
    for m in &state.manifests {
        let top_level = !listed_by.contains_key(&m.digest) && !follows_present(m);
        if tagged_before.contains(&m.digest) || !top_level {
            continue;
        }
        match untagged_days {
            Some(d) if now - m.touched_ms >= i64::from(d) * DAY_MS => untagged_deletions.push(ManifestDeletion {
                digest: m.digest.clone(),
                rule: "untagged",
                reason: format!("untagged for {}, beyond untagged {d} days", days(now - m.touched_ms)),
            }),
            _ => roots.push(&m.digest),
        }
    }

    let mut alive: HashSet<&Digest> = HashSet::new();
    let mut fates: Vec<Option<SubjectFate>> = vec![None; followers.len()];
    loop {
        let mut stack: Vec<&Digest> = std::mem::take(&mut roots);
        while let Some(d) = stack.pop() {
            if !present.contains(d) || !alive.insert(d) {
                continue;
            }
            if let Some(m) = by_digest.get(d) {
                stack.extend(m.children.iter());
            }
            if let Some(r) = referrers.get(d) {
                stack.extend(r.iter().copied());
            }
        }
        // A follower tag stays while its subject does, and keeps its own
        // manifest (a signature of the schema names its subject only in the
        // tag). One whose subject was never here (or went earlier) is left to
        // the garbage collector's grace, and so is its manifest, unless that
        // declares a subject which is here and goes.
        let mut grew = false;
        for (i, f) in followers.iter().enumerate() {
            if fates[i].is_some() {
                continue;
            }
            let fate = if alive.contains(&f.subject) {
                SubjectFate::Stays
            } else if !present.contains(&f.subject) {
                SubjectFate::Absent
            } else {
                continue;
            };
            fates[i] = Some(fate);
            roots.push(&f.tag.digest);
            grew = true;
        }
        if !grew {
            break;
        }
    }

    for (f, fate) in followers.iter().zip(fates) {
        decided.push(f.decision(fate.unwrap_or(SubjectFate::Deleted)));
    }

    let untagged_going: HashSet<Digest> = untagged_deletions.iter().map(|d| d.digest.clone()).collect();
    let mut deletions = untagged_deletions;
    let tag_rule: HashMap<&Digest, (&'static str, &str)> = decided
        .iter()
        .filter(|d| !d.keep)
        .map(|d| (&d.tag.digest, (d.rule, d.tag.name.as_str())))
        .collect();
    for m in &state.manifests {
        if alive.contains(&m.digest) || untagged_going.contains(&m.digest) {
            continue;
        }
        let (rule, reason) = if let Some(subject) = m.subject.as_ref().filter(|s| present.contains(s)) {
            ("follows_subject", format!("its subject {subject} is deleted"))
        } else if let Some((rule, tag)) = tag_rule.get(&m.digest) {
            (*rule, format!("its last tag {tag} is deleted"))
        } else if let Some(parent) = listed_by.get(&m.digest).and_then(|p| p.first()) {
            ("cascade", format!("the index {parent} that lists it is deleted"))
        } else {
            continue;
        };
        deletions.push(ManifestDeletion {
            digest: m.digest.clone(),
            rule,
            reason,
        });
    }
    decided.sort_by(|a, b| a.tag.name.cmp(&b.tag.name));
    (decided, deletions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::policy::Rules;

    const NOW: i64 = 1_000 * DAY_MS;

    fn d(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn manifest(n: u8) -> ManifestState {
        ManifestState {
            digest: d(n),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            artifact_type: None,
            subject: None,
            children: vec![],
            provenance: "pushed".into(),
            pushed_by: None,
            pushed_ms: NOW - 100 * DAY_MS,
            touched_ms: NOW - 100 * DAY_MS,
            last_pulled_ms: None,
            pull_count: 0,
            platforms: vec![],
            total_size: None,
        }
    }

    fn tag(name: &str, n: u8, age_days: i64) -> TagState {
        TagState {
            name: name.into(),
            digest: d(n),
            pushed_ms: NOW - age_days * DAY_MS,
            last_pulled_ms: None,
            pull_count: 0,
        }
    }

    fn settings(policy: Option<&Policy>) -> Settings<'_> {
        Settings {
            now_ms: NOW,
            suffix_rules: true,
            keep_latest: false,
            policy,
        }
    }

    fn kept(plan: &RepoPlan) -> Vec<&str> {
        plan.tags
            .iter()
            .filter(|t| t.keep)
            .map(|t| t.tag.name.as_str())
            .collect()
    }

    fn repo(tags: Vec<TagState>, manifests: Vec<ManifestState>) -> RepoState {
        RepoState {
            name: "r".into(),
            tags,
            manifests,
        }
    }

    fn policy(rules: Rules) -> Policy {
        Policy::new("**", rules).unwrap()
    }

    #[test]
    fn ttl_counts_from_the_push_and_idle_from_the_last_pull() {
        let mut pulled = tag("b--idle-7d", 2, 30);
        pulled.last_pulled_ms = Some(NOW - 2 * DAY_MS);
        let state = repo(
            vec![
                tag("a--ttl-7d", 1, 8),
                tag("c--ttl-7d", 1, 6),
                pulled,
                tag("d--idle-7d", 2, 8),
            ],
            vec![manifest(1), manifest(2)],
        );
        let plan = plan(&state, settings(None));
        assert_eq!(kept(&plan), ["b--idle-7d", "c--ttl-7d"]);
        let a = plan.tags.iter().find(|t| t.tag.name == "a--ttl-7d").unwrap();
        assert_eq!(a.rule, "ttl");
        assert_eq!(a.expires_ms, Some(NOW - DAY_MS));
        assert!(plan.manifests.is_empty(), "both manifests keep a tag");
    }

    #[test]
    fn a_pull_by_digest_resets_the_idle_clock() {
        let mut m = manifest(1);
        m.last_pulled_ms = Some(NOW - DAY_MS);
        let state = repo(vec![tag("x--idle-7d", 1, 30)], vec![m]);
        assert_eq!(kept(&plan(&state, settings(None))), ["x--idle-7d"]);
    }

    #[test]
    fn suffixes_can_be_switched_off() {
        let state = repo(vec![tag("a--ttl-1d", 1, 8)], vec![manifest(1)]);
        let mut s = settings(None);
        s.suffix_rules = false;
        let plan = plan(&state, s);
        assert_eq!(kept(&plan), ["a--ttl-1d"]);
        assert_eq!(plan.tags[0].rule, "no_policy");
    }

    #[test]
    fn keep_latest_keeps_only_the_newest_plain_tag() {
        let state = repo(
            vec![tag("old", 1, 3), tag("new", 2, 1), tag("x--ttl-7d", 1, 5)],
            vec![manifest(1), manifest(2)],
        );
        let mut s = settings(None);
        s.keep_latest = true;
        let plan = plan(&state, s);
        assert_eq!(kept(&plan), ["new", "x--ttl-7d"]);
        assert!(plan.manifests.is_empty(), "manifest 1 keeps its ttl tag");
    }

    #[test]
    fn no_policy_means_no_deletion() {
        let state = repo(vec![tag("a", 1, 900)], vec![manifest(1), manifest(9)]);
        let plan = plan(&state, settings(None));
        assert_eq!(kept(&plan), ["a"]);
        assert!(plan.manifests.is_empty());
    }

    #[test]
    fn a_tag_survives_if_any_keep_rule_keeps_it() {
        let mut pulled = tag("pulled", 4, 50);
        pulled.last_pulled_ms = Some(NOW - 2 * DAY_MS);
        let state = repo(
            vec![
                tag("newest", 1, 1),
                tag("recent", 2, 5),
                tag("v1.0", 3, 300),
                pulled,
                tag("stale", 5, 60),
            ],
            (1..=5).map(manifest).collect(),
        );
        let p = policy(Rules {
            keep_last: Some(1),
            keep_days: Some(10),
            keep_pulled_within: Some(7),
            keep_patterns: vec!["v*".into()],
            ..Rules::default()
        });
        let plan = plan(&state, settings(Some(&p)));
        let rule_of = |n: &str| plan.tags.iter().find(|t| t.tag.name == n).unwrap().rule;
        assert_eq!(kept(&plan), ["newest", "pulled", "recent", "v1.0"]);
        assert_eq!(rule_of("newest"), "keep_last");
        assert_eq!(rule_of("recent"), "keep_days");
        assert_eq!(rule_of("v1.0"), "keep_patterns");
        assert_eq!(rule_of("pulled"), "keep_pulled_within");
        assert_eq!(rule_of("stale"), "retention");
        let stale = plan.tags.iter().find(|t| t.tag.name == "stale").unwrap();
        assert!(stale.reason.contains("beyond keep_last 1"), "{}", stale.reason);
        assert_eq!(plan.manifests.len(), 1);
        assert_eq!(plan.manifests[0].digest, d(5));
    }

    #[test]
    fn a_pull_by_digest_counts_for_keep_pulled_within() {
        let mut pulled = manifest(1);
        pulled.last_pulled_ms = Some(NOW - DAY_MS);
        let state = repo(vec![tag("a", 1, 50), tag("b", 2, 50)], vec![pulled, manifest(2)]);
        let p = policy(Rules {
            keep_pulled_within: Some(7),
            ..Rules::default()
        });
        let plan = plan(&state, settings(Some(&p)));
        assert_eq!(kept(&plan), ["a"]);
        let b = plan.tags.iter().find(|t| t.tag.name == "b").unwrap();
        assert!(b.reason.contains("never pulled"), "{}", b.reason);
    }

    #[test]
    fn keep_by_age_keeps_what_was_pulled_lately_and_lets_the_rest_go_after_its_last_use() {
        // OrbitalReg's cache rule: pulled in the last 14 days stays; the rest
        // goes 30 days after it was cached or last pulled.
        let mut pulled_lately = manifest(1);
        pulled_lately.last_pulled_ms = Some(NOW - 10 * DAY_MS);
        let mut pulled_long_ago = manifest(3);
        pulled_long_ago.last_pulled_ms = Some(NOW - 40 * DAY_MS);
        let state = repo(
            vec![
                tag("lately", 1, 90),
                tag("cached", 2, 20),
                tag("old", 3, 90),
                tag("never", 4, 45),
            ],
            vec![pulled_lately, manifest(2), pulled_long_ago, manifest(4)],
        );
        let p = policy(Rules {
            keep_by_age: Some(crate::config::KeepByAge {
                max_age_days: 30,
                match_pulled_in_last_days: Some(14),
            }),
            ..Rules::default()
        });
        let plan = plan(&state, settings(Some(&p)));
        assert_eq!(kept(&plan), ["cached", "lately"]);
        let decision = |n: &str| plan.tags.iter().find(|t| t.tag.name == n).unwrap();
        assert_eq!(decision("lately").rule, "keep_by_age");
        // Pulled 10 days ago: kept until 30 days after that pull (longer than 14).
        assert_eq!(decision("lately").expires_ms, Some(NOW + 20 * DAY_MS));
        assert_eq!(decision("cached").expires_ms, Some(NOW + 10 * DAY_MS));
        assert!(
            decision("old").reason.contains("last used 40"),
            "{}",
            decision("old").reason
        );
        assert!(
            decision("never").reason.contains("beyond keep_by_age"),
            "{}",
            decision("never").reason
        );
    }

    #[test]
    fn keep_min_is_a_floor_of_the_most_recent() {
        let state = repo(
            vec![tag("a", 1, 50), tag("b", 2, 40), tag("c", 3, 30)],
            (1..=3).map(manifest).collect(),
        );
        let p = policy(Rules {
            keep_days: Some(7),
            keep_min: Some(2),
            ..Rules::default()
        });
        let plan = plan(&state, settings(Some(&p)));
        assert_eq!(kept(&plan), ["b", "c"]);
        assert_eq!(plan.tags.iter().find(|t| t.tag.name == "c").unwrap().rule, "keep_min");
    }

    #[test]
    fn a_manifest_goes_only_with_its_last_tag() {
        let state = repo(vec![tag("old", 1, 50), tag("keep", 1, 1)], vec![manifest(1)]);
        let p = policy(Rules {
            keep_days: Some(7),
            ..Rules::default()
        });
        let plan = plan(&state, settings(Some(&p)));
        assert_eq!(kept(&plan), ["keep"]);
        assert!(plan.manifests.is_empty());
    }

    #[test]
    fn children_of_a_kept_index_stay_and_of_a_deleted_one_go() {
        let mut kept_index = manifest(10);
        kept_index.children = vec![d(1), d(2)];
        let mut gone_index = manifest(20);
        gone_index.children = vec![d(2), d(3)];
        let state = repo(
            vec![tag("new", 10, 1), tag("old", 20, 50)],
            vec![kept_index, gone_index, manifest(1), manifest(2), manifest(3)],
        );
        let p = policy(Rules {
            keep_days: Some(7),
            ..Rules::default()
        });
        let plan = plan(&state, settings(Some(&p)));
        let going: Vec<&Digest> = plan.manifests.iter().map(|m| &m.digest).collect();
        assert_eq!(going, [&d(20), &d(3)]);
        let removals = plan.removals(&state);
        let order: Vec<String> = removals
            .iter()
            .map(|r| match &r.removal {
                Removal::Tag { name, .. } => name.clone(),
                Removal::Manifest { digest, .. } => digest.to_string(),
            })
            .collect();
        assert_eq!(order, ["old".to_string(), d(20).to_string(), d(3).to_string()]);
    }

    #[test]
    fn signatures_live_exactly_as_long_as_their_subject() {
        let hex = |n: u8| d(n).hex().to_string();
        let mut referrer = manifest(30);
        referrer.subject = Some(d(1));
        let mut kept_referrer = manifest(31);
        kept_referrer.subject = Some(d(2));
        let state = repo(
            vec![
                tag("old", 1, 50),
                tag("new", 2, 1),
                tag(&format!("sha256-{}.sig", hex(1)), 40, 1),
                tag(&format!("sha256-{}.sig", hex(2)), 41, 60),
                tag(&format!("sha256-{}.att", hex(99)), 42, 60),
            ],
            vec![
                manifest(1),
                manifest(2),
                referrer,
                kept_referrer,
                manifest(40),
                manifest(41),
                manifest(42),
            ],
        );
        let p = policy(Rules {
            keep_last: Some(1),
            ..Rules::default()
        });
        let plan = plan(&state, settings(Some(&p)));
        let sig = |n: u8| format!("sha256-{}.sig", hex(n));
        let att = format!("sha256-{}.att", hex(99));
        let kept_sig = sig(2);
        let mut expected = vec!["new", kept_sig.as_str(), att.as_str()];
        expected.sort();
        assert_eq!(kept(&plan), expected, "signature tags are not counted by keep_last");
        let going: HashSet<Digest> = plan.manifests.iter().map(|m| m.digest.clone()).collect();
        assert_eq!(going, HashSet::from([d(1), d(30), d(40)]));
        // A signature of the schema names its subject only in its tag: the
        // tag goes after the subject, the signature after the tag.
        let order: Vec<String> = plan
            .removals(&state)
            .iter()
            .map(|r| match &r.removal {
                Removal::Tag { name, .. } => name.clone(),
                Removal::Manifest { digest, .. } => digest.to_string(),
            })
            .collect();
        let at = |x: &str| order.iter().position(|o| o == x).unwrap();
        assert!(at(&d(1).to_string()) < at(&sig(1)), "{order:?}");
        assert!(at(&sig(1)) < at(&d(40).to_string()), "{order:?}");
    }

    /// A manifest whose `subject` is manifest `of`.
    fn referrer(n: u8, of: u8) -> ManifestState {
        let mut m = manifest(n);
        m.subject = Some(d(of));
        m.artifact_type = Some("application/vnd.in-toto+json".into());
        m
    }

    fn decision<'p>(plan: &'p RepoPlan, tag: &str) -> &'p TagDecision {
        plan.tags.iter().find(|t| t.tag.name == tag).unwrap()
    }

    #[test]
    fn a_tagged_referrer_is_not_an_image_and_goes_with_its_subject() {
        // The case of the issue: the attestation of `old`, pushed last under an
        // ordinary tag, once took keep_last's only place.
        let state = repo(
            vec![
                tag("old", 1, 30),
                tag("mid", 2, 20),
                tag("new", 3, 10),
                tag("att-ref", 30, 1),
            ],
            vec![manifest(1), manifest(2), manifest(3), referrer(30, 1)],
        );
        let p = policy(Rules {
            keep_last: Some(1),
            ..Rules::default()
        });
        let plan = plan(&state, settings(Some(&p)));
        assert_eq!(kept(&plan), ["new"]);
        assert_eq!(
            decision(&plan, "new").reason,
            "keep_last: number 1 of the 1 most recent"
        );
        let att = decision(&plan, "att-ref");
        assert_eq!(att.rule, "follows_subject");
        assert!(
            att.reason.contains(&format!("subject is {}, which is deleted", d(1))),
            "{}",
            att.reason
        );
        let going: Vec<(&Digest, &str)> = plan.manifests.iter().map(|m| (&m.digest, m.rule)).collect();
        assert_eq!(
            going,
            [(&d(1), "retention"), (&d(2), "retention"), (&d(30), "follows_subject")]
        );
        // The subject goes first, then the tag that follows it (which the
        // store removes only once the subject is gone), then the referrer.
        let removals = plan.removals(&state);
        let follows = removals.iter().find_map(|r| match &r.removal {
            Removal::Tag { name, follows, .. } if name == "att-ref" => Some(follows.clone()),
            _ => None,
        });
        assert_eq!(follows, Some(Some(d(1))));
        let order: Vec<String> = removals
            .iter()
            .map(|r| match &r.removal {
                Removal::Tag { name, .. } => name.clone(),
                Removal::Manifest { digest, .. } => digest.to_string(),
            })
            .collect();
        let at = |x: &str| order.iter().position(|o| o == x).unwrap();
        assert!(at("old") < at(&d(1).to_string()), "{order:?}");
        assert!(at(&d(1).to_string()) < at("att-ref"), "{order:?}");
        assert!(at("att-ref") < at(&d(30).to_string()), "{order:?}");
    }

    #[test]
    fn a_tagged_referrer_stays_with_its_subject_whatever_its_tag_says() {
        let state = repo(
            vec![
                tag("old", 1, 30),
                tag("new", 2, 10),
                tag("att-ref", 30, 1),
                tag("sbom--ttl-1h", 31, 5),
                tag("dangling", 32, 50),
            ],
            vec![
                manifest(1),
                manifest(2),
                referrer(30, 2),
                referrer(31, 2),
                referrer(32, 99),
            ],
        );
        for (keep_latest, rules) in [
            (
                false,
                Rules {
                    keep_days: Some(15),
                    ..Rules::default()
                },
            ),
            (true, Rules::default()),
        ] {
            let p = policy(rules);
            let mut s = settings(Some(&p));
            s.keep_latest = keep_latest;
            let plan = plan(&state, s);
            assert_eq!(
                kept(&plan),
                ["att-ref", "dangling", "new", "sbom--ttl-1h"],
                "keep_latest {keep_latest}"
            );
            assert_eq!(decision(&plan, "sbom--ttl-1h").rule, "follows_subject");
            let dangling = decision(&plan, "dangling");
            assert_eq!(dangling.rule, "follows_subject");
            assert!(dangling.reason.contains("garbage collection"), "{}", dangling.reason);
            let going: Vec<&Digest> = plan.manifests.iter().map(|m| &m.digest).collect();
            assert_eq!(going, [&d(1)]);
        }
    }

    #[test]
    fn referrers_pushed_by_digest_follow_their_subject() {
        let state = repo(
            vec![tag("old", 1, 30), tag("new", 2, 10)],
            vec![
                manifest(1),
                manifest(2),
                referrer(30, 1),
                referrer(31, 2),
                referrer(32, 30),
            ],
        );
        let p = policy(Rules {
            keep_last: Some(1),
            ..Rules::default()
        });
        let plan = plan(&state, settings(Some(&p)));
        let going: Vec<(&Digest, &str)> = plan.manifests.iter().map(|m| (&m.digest, m.rule)).collect();
        assert_eq!(
            going,
            [
                (&d(1), "retention"),
                (&d(30), "follows_subject"),
                (&d(32), "follows_subject")
            ],
            "a signature of the attestation goes with it"
        );
    }

    #[test]
    fn untagged_manifests_go_after_the_untagged_days() {
        let mut old = manifest(1);
        old.touched_ms = NOW - 10 * DAY_MS;
        let mut young = manifest(2);
        young.touched_ms = NOW - DAY_MS;
        let state = repo(vec![], vec![old, young]);
        let p = policy(Rules {
            untagged: Some(7),
            ..Rules::default()
        });
        let decided = plan(&state, settings(Some(&p)));
        assert_eq!(decided.manifests.len(), 1);
        assert_eq!(decided.manifests[0].digest, d(1));
        assert_eq!(decided.manifests[0].rule, "untagged");
        assert!(plan(&state, settings(None)).manifests.is_empty());
    }
}
