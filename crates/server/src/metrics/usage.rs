//! The storage gauges: bytes, blob links and repositories per configured
//! namespace, and open upload sessions, computed on a schedule rather than
//! per scrape (a scrape must stay cheap however large the registry is).

use std::collections::BTreeMap;

use berth_meta::RepoUsage;

use super::Metrics;
use crate::app::Meta;

/// The namespace a repository's storage counts under: its first path
/// component when that is one of `namespaces`, else `other`.
fn namespace_of<'a>(repo: &str, namespaces: &'a [String]) -> &'a str {
    let first = repo.split('/').next().unwrap_or(repo);
    namespaces
        .iter()
        .find(|n| n.as_str() == first)
        .map_or("other", String::as_str)
}

/// Totals per namespace; every configured namespace appears, empty or not.
fn by_namespace<'a>(usage: &[RepoUsage], namespaces: &'a [String]) -> BTreeMap<&'a str, (u64, u64, u64)> {
    let mut totals: BTreeMap<&str, (u64, u64, u64)> = namespaces
        .iter()
        .map(String::as_str)
        .chain(["other"])
        .map(|n| (n, (0, 0, 0)))
        .collect();
    for u in usage {
        let entry = totals.entry(namespace_of(&u.repo, namespaces)).or_default();
        entry.0 = entry.0.saturating_add(u.bytes);
        entry.1 = entry.1.saturating_add(u.blobs);
        entry.2 += 1;
    }
    totals
}

/// Computes the gauges once.
pub async fn refresh(
    metrics: &Metrics,
    meta: &dyn Meta,
    namespaces: &[String],
    now_secs: i64,
) -> berth_meta::Result<()> {
    let usage = meta.repository_usage().await?;
    for (namespace, (bytes, blobs, repos)) in by_namespace(&usage, namespaces) {
        metrics
            .namespace_bytes
            .with_label_values(&[namespace])
            .set(gauge(bytes));
        metrics
            .namespace_blobs
            .with_label_values(&[namespace])
            .set(gauge(blobs));
        metrics
            .namespace_repositories
            .with_label_values(&[namespace])
            .set(gauge(repos));
    }
    let uploads = meta.upload_ids().await?;
    metrics.uploads_open.set(gauge(uploads.len() as u64));
    metrics.usage_refreshed.set(now_secs);
    Ok(())
}

fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(repo: &str, bytes: u64) -> RepoUsage {
        RepoUsage {
            repo: repo.into(),
            blobs: 1,
            bytes,
        }
    }

    #[test]
    fn only_configured_namespaces_get_a_label_of_their_own() {
        let namespaces = vec!["team-a".to_string(), "hub".to_string()];
        let totals = by_namespace(
            &[
                usage("team-a/app", 10),
                usage("team-a/db/x", 5),
                usage("team-ab/app", 7),
                usage("hub/library/alpine", 3),
                usage("solo", 1),
            ],
            &namespaces,
        );
        assert_eq!(totals["team-a"], (15, 2, 2));
        assert_eq!(totals["hub"], (3, 1, 1));
        assert_eq!(totals["other"], (8, 2, 2));
        assert_eq!(totals.len(), 3);
    }

    #[test]
    fn an_empty_configured_namespace_reports_zero() {
        let namespaces = vec!["quiet".to_string()];
        let totals = by_namespace(&[], &namespaces);
        assert_eq!(totals["quiet"], (0, 0, 0));
        assert_eq!(totals["other"], (0, 0, 0));
    }
}
