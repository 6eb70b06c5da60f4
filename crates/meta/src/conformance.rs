//! The behaviour every [`MetaStore`] backend must show; each backend's tests
//! call [`run_all`] on a fresh, empty store.

use std::collections::HashSet;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Mutex;
use std::task::Poll;

use berth_oci::{Digest, UploadId};

use crate::access::{AccessStore, Audit, NewGrant, RobotRecord, SubjectKind, UserRecord};
use crate::lifecycle::{BlobFiles, FileRemover, LifecycleStore, LinkKey, PlannedRemoval, Removal, UnusedBlob};
use crate::ui::{DailyPulls, RegistryCounts, RepoListing, RepoSummary, SessionRecord, TagCursor, TagRow, UiStore};
use crate::webhooks::WebhookStore;
use crate::{
    BlobRecord, LinkTouch, ManifestFacts, MetaError, MetaStore, NewManifest, PlacedBlob, PullRecord, RepoUsage,
    StoreSet, UploadClaim, UploadRecord, DEFAULT_STORE,
};

fn manifest(body: &str, blobs: Vec<Digest>, children: Vec<Digest>, subject: Option<Digest>) -> NewManifest {
    NewManifest {
        digest: Digest::sha256_of(body.as_bytes()),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        artifact_type: subject.as_ref().map(|_| "application/example".into()),
        subject,
        annotations_json: Some(r#"{"k":"v"}"#.into()),
        body: body.as_bytes().to_vec(),
        blobs,
        children,
        pushed_by: Some("alice".into()),
        provenance: "pushed".into(),
        platforms: vec![],
        blob_bytes: 0,
        fetched_on_demand: false,
    }
}

/// Runs every conformance check.
pub async fn run_all(meta: &dyn MetaStore) {
    blobs_are_served_only_where_linked(meta).await;
    touches_move_links_forward_only(meta).await;
    manifests_need_their_references(meta).await;
    tags_move_and_list_in_order(meta).await;
    deleting_a_manifest_removes_its_tags(meta).await;
    referrers_are_found_by_subject(meta).await;
    referrers_page_in_digest_order(meta).await;
    uploads_advance_only_from_the_expected_offset(meta).await;
    upload_claims_exclude_each_other_until_they_run_out(meta).await;
    pulls_add_up_and_keep_the_latest_time(meta).await;
    text_with_a_nul_finds_nothing_or_is_bad_input(meta).await;
    usage_counts_each_repositorys_linked_blobs(meta).await;
    placed_blobs_are_recorded_together_or_not_at_all(meta).await;
}

async fn placed_blobs_are_recorded_together_or_not_at_all(meta: &dyn MetaStore) {
    let (a, b, c) = (
        Digest::sha256_of(b"placed-a"),
        Digest::sha256_of(b"placed-b"),
        Digest::sha256_of(b"placed-c"),
    );
    let placed = |repo: &str, digest: &Digest, size: u64, store: &str| PlacedBlob {
        repo: repo.into(),
        digest: digest.clone(),
        size,
        store: store.into(),
    };
    // A placement that fails records nothing of its batch.
    let failed = meta
        .place_blobs(
            &[placed("placed/one", &c, 3, DEFAULT_STORE)],
            1,
            Box::pin(async { Err("disk full".into()) }),
        )
        .await;
    assert!(matches!(failed, Err(MetaError::Placement(_))), "{failed:?}");
    assert_eq!(meta.blob_size(&c).await.unwrap(), None);

    let ran = std::sync::atomic::AtomicBool::new(false);
    meta.place_blobs(
        &[
            placed("placed/one", &a, 10, DEFAULT_STORE),
            placed("placed/two", &b, 20, "team-a"),
            placed("placed/two", &a, 10, DEFAULT_STORE),
        ],
        2,
        Box::pin(async {
            ran.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }),
    )
    .await
    .unwrap();
    assert!(ran.load(std::sync::atomic::Ordering::SeqCst), "the placement ran");
    assert_eq!(meta.linked_blob_size("placed/one", &a).await.unwrap(), Some(10));
    assert_eq!(meta.linked_blob_size("placed/two", &a).await.unwrap(), Some(10));
    assert_eq!(meta.linked_blob_size("placed/two", &b).await.unwrap(), Some(20));
    assert_eq!(meta.linked_blob_size("placed/one", &b).await.unwrap(), None);
    assert_eq!(
        meta.blob_record(&b).await.unwrap(),
        Some(BlobRecord {
            size: 20,
            stores: StoreSet::only("team-a"),
        })
    );
}

async fn usage_counts_each_repositorys_linked_blobs(meta: &dyn MetaStore) {
    let (a, b) = (Digest::sha256_of(b"usage-a"), Digest::sha256_of(b"usage-b"));
    meta.add_blob("usage/one", &a, 100, 1).await.unwrap();
    meta.add_blob("usage/one", &b, 20, 1).await.unwrap();
    meta.link_blob("usage/two", &a, 1).await.unwrap();
    let usage: Vec<RepoUsage> = meta
        .repository_usage()
        .await
        .unwrap()
        .into_iter()
        .filter(|u| u.repo.starts_with("usage/"))
        .collect();
    assert_eq!(
        usage,
        [
            RepoUsage {
                repo: "usage/one".into(),
                blobs: 2,
                bytes: 120
            },
            RepoUsage {
                repo: "usage/two".into(),
                blobs: 1,
                bytes: 100
            },
        ]
    );
}

/// Text holding a NUL character (which PostgreSQL text cannot hold) either
/// finds nothing or is refused as bad input, never reported as a failure of
/// the store: callers keep such text away from the store, and a value that
/// slips through must still be the client's error, not a 500.
async fn text_with_a_nul_finds_nothing_or_is_bad_input(meta: &dyn MetaStore) {
    fn nothing_or_bad_input<T: std::fmt::Debug>(what: &str, found: crate::Result<T>, nothing: impl Fn(&T) -> bool) {
        match found {
            Ok(found) => assert!(nothing(&found), "{what}: found {found:?}"),
            Err(e) => assert!(e.is_bad_input(), "{what}: {e} is not bad input"),
        }
    }
    let m = manifest("nul", vec![], vec![], None);
    meta.put_manifest("nul/r", &m, Some("a"), 1).await.unwrap();
    nothing_or_bad_input("tag", meta.manifest_by_tag("nul/r", "a\0").await, Option::is_none);
    nothing_or_bad_input("repository", meta.repository_exists("nul/r\0").await, |e| !e);
    nothing_or_bad_input("tags after", meta.list_tags("nul/r", Some("\0"), 10).await, |_| true);
}

async fn pulls_add_up_and_keep_the_latest_time(meta: &dyn MetaStore) {
    let m = manifest(r#"{"pulls":1}"#, vec![], vec![], None);
    meta.put_manifest("p/one", &m, Some("v1"), 100).await.unwrap();
    let facts = meta.manifest_facts("p/one", &m.digest).await.unwrap().unwrap();
    assert_eq!(
        facts,
        ManifestFacts {
            provenance: "pushed".into(),
            pushed_by: Some("alice".into()),
            pushed_ms: 100,
            last_pulled_ms: None,
            pull_count: 0
        }
    );
    let by_tag = |count, last_ms| PullRecord {
        repo: "p/one".into(),
        digest: m.digest.clone(),
        tag: Some("v1".into()),
        count,
        last_ms,
    };
    let by_digest = PullRecord {
        tag: None,
        ..by_tag(5, 150)
    };
    let gone = PullRecord {
        repo: "p/none".into(),
        ..by_tag(1, 500)
    };
    meta.record_pulls(&[by_tag(2, 200), by_digest, gone]).await.unwrap();
    meta.record_pulls(&[by_tag(1, 120)]).await.unwrap();
    let facts = meta.manifest_facts("p/one", &m.digest).await.unwrap().unwrap();
    assert_eq!((facts.pull_count, facts.last_pulled_ms), (8, Some(200)));
    let tag = meta.tag_facts("p/one", "v1").await.unwrap().unwrap();
    assert_eq!((tag.pull_count, tag.last_pulled_ms, tag.pushed_ms), (3, Some(200), 100));
    // A pull recorded for a tag that has moved on counts for the manifest only.
    let other = manifest(r#"{"pulls":2}"#, vec![], vec![], None);
    meta.put_manifest("p/one", &other, Some("v1"), 300).await.unwrap();
    meta.record_pulls(&[by_tag(1, 400)]).await.unwrap();
    let tag = meta.tag_facts("p/one", "v1").await.unwrap().unwrap();
    assert_eq!(
        (tag.digest, tag.pull_count, tag.pushed_ms),
        (other.digest.clone(), 3, 300)
    );
    assert_eq!(meta.tag_facts("p/one", "v9").await.unwrap(), None);
}

async fn blobs_are_served_only_where_linked(meta: &dyn MetaStore) {
    let d = Digest::sha256_of(b"blob-a");
    assert!(!meta.repository_exists("c/one").await.unwrap());
    meta.add_blob("c/one", &d, 6, 10).await.unwrap();
    assert!(meta.repository_exists("c/one").await.unwrap());
    assert_eq!(meta.linked_blob_size("c/one", &d).await.unwrap(), Some(6));
    assert_eq!(meta.linked_blob_size("c/two", &d).await.unwrap(), None);
    assert_eq!(meta.blob_size(&d).await.unwrap(), Some(6));
    assert_eq!(meta.link_blob("c/two", &d, 11).await.unwrap(), Some(6));
    assert_eq!(meta.linked_blob_size("c/two", &d).await.unwrap(), Some(6));
    assert_eq!(meta.repositories_linking(&d, 10).await.unwrap(), ["c/one", "c/two"]);
    assert_eq!(meta.repositories_linking(&d, 1).await.unwrap(), ["c/one"]);
    assert_eq!(
        meta.link_blob("c/two", &Digest::sha256_of(b"nope"), 11).await.unwrap(),
        None
    );
    assert!(meta.unlink_blob("c/two", &d).await.unwrap());
    assert!(!meta.unlink_blob("c/two", &d).await.unwrap());
    assert_eq!(meta.linked_blob_size("c/two", &d).await.unwrap(), None);
    assert_eq!(meta.linked_blob_size("c/one", &d).await.unwrap(), Some(6));
}

async fn touches_move_links_forward_only(meta: &dyn MetaStore) {
    let d = Digest::sha256_of(b"touched");
    meta.add_blob("touch/one", &d, 3, 10).await.unwrap();
    let linked = meta.linked_blob("touch/one", &d).await.unwrap().unwrap();
    assert_eq!((linked.record.size, linked.linked_ms), (3, 10));
    assert!(meta.touch_link("touch/one", &d, 50).await.unwrap());
    assert_eq!(linked_ms(meta, "touch/one", &d).await, Some(50));
    assert!(
        meta.touch_link("touch/one", &d, 20).await.unwrap(),
        "an older touch finds the link"
    );
    assert_eq!(
        linked_ms(meta, "touch/one", &d).await,
        Some(50),
        "and leaves it as recent as it was"
    );
    assert!(!meta.touch_link("touch/two", &d, 60).await.unwrap());
    assert_eq!(
        linked_ms(meta, "touch/two", &d).await,
        None,
        "a touch never creates a link"
    );

    let touch = |repo: &str, at_ms| LinkTouch {
        repo: repo.into(),
        digest: d.clone(),
        at_ms,
    };
    meta.record_touches(&[]).await.unwrap();
    meta.record_touches(&[
        touch("touch/one", 70),
        touch("touch/one", 40),
        touch("touch/two", 80),
        touch("touch/no-such-repository", 90),
    ])
    .await
    .unwrap();
    assert_eq!(linked_ms(meta, "touch/one", &d).await, Some(70));
    assert_eq!(linked_ms(meta, "touch/two", &d).await, None);
    meta.record_touches(&[touch("touch/one", 65)]).await.unwrap();
    assert_eq!(linked_ms(meta, "touch/one", &d).await, Some(70));
}

async fn linked_ms(meta: &dyn MetaStore, repo: &str, d: &Digest) -> Option<i64> {
    meta.linked_blob(repo, d).await.unwrap().map(|l| l.linked_ms)
}

async fn manifests_need_their_references(meta: &dyn MetaStore) {
    let layer = Digest::sha256_of(b"layer");
    let m = manifest("m1", vec![layer.clone()], vec![], None);
    match meta.put_manifest("r/m", &m, Some("v1"), 1).await {
        Err(MetaError::MissingReference(d)) => assert_eq!(d, layer),
        other => panic!("expected a missing reference, got {other:?}"),
    }
    assert!(meta.manifest_by_tag("r/m", "v1").await.unwrap().is_none());
    meta.add_blob("r/m", &layer, 5, 1).await.unwrap();
    meta.put_manifest("r/m", &m, Some("v1"), 2).await.unwrap();
    let got = meta.manifest_by_tag("r/m", "v1").await.unwrap().unwrap();
    assert_eq!(got.body, b"m1");
    assert_eq!(got.digest, m.digest);
    assert_eq!(meta.manifest_by_digest("r/m", &m.digest).await.unwrap().unwrap(), got);
    // An index needs its children in the same repository.
    let index = manifest("idx", vec![], vec![m.digest.clone()], None);
    assert!(matches!(
        meta.put_manifest("r/other", &index, None, 3).await,
        Err(MetaError::MissingReference(_))
    ));
    meta.put_manifest("r/m", &index, Some("multi"), 3).await.unwrap();
    // Pushing the same manifest again is harmless.
    meta.put_manifest("r/m", &m, Some("v1"), 4).await.unwrap();
}

async fn tags_move_and_list_in_order(meta: &dyn MetaStore) {
    let a = manifest("ta", vec![], vec![], None);
    let b = manifest("tb", vec![], vec![], None);
    for t in ["b", "a", "C", "c", "a1"] {
        meta.put_manifest("t/r", &a, Some(t), 1).await.unwrap();
    }
    meta.put_manifest("t/r", &b, Some("a"), 2).await.unwrap();
    assert_eq!(meta.manifest_by_tag("t/r", "a").await.unwrap().unwrap().body, b"tb");
    assert_eq!(
        meta.list_tags("t/r", None, 100).await.unwrap(),
        ["C", "a", "a1", "b", "c"]
    );
    assert_eq!(meta.list_tags("t/r", Some("a"), 2).await.unwrap(), ["a1", "b"]);
    assert!(meta.list_tags("nope", None, 100).await.unwrap().is_empty());
    assert!(meta.delete_tag("t/r", "a1", 1).await.unwrap());
    assert!(!meta.delete_tag("t/r", "a1", 1).await.unwrap());
    assert!(meta.manifest_by_digest("t/r", &a.digest).await.unwrap().is_some());
    let repos = meta.list_repositories(None, 1000).await.unwrap();
    assert!(repos.windows(2).all(|w| w[0] < w[1]));
    assert!(repos.contains(&"t/r".to_string()));
    assert_eq!(meta.list_repositories(Some("r/m"), 1).await.unwrap(), ["t/r"]);
}

async fn deleting_a_manifest_removes_its_tags(meta: &dyn MetaStore) {
    let a = manifest("da", vec![], vec![], None);
    meta.put_manifest("d/r", &a, Some("x"), 1).await.unwrap();
    meta.put_manifest("d/r", &a, Some("y"), 1).await.unwrap();
    assert!(meta.delete_manifest("d/r", &a.digest, 1).await.unwrap());
    assert!(!meta.delete_manifest("d/r", &a.digest, 1).await.unwrap());
    assert!(meta.list_tags("d/r", None, 10).await.unwrap().is_empty());
    assert!(meta.manifest_by_tag("d/r", "x").await.unwrap().is_none());
}

async fn referrers_are_found_by_subject(meta: &dyn MetaStore) {
    let subject = Digest::sha256_of(b"subject");
    let sig = manifest("sig", vec![], vec![], Some(subject.clone()));
    meta.put_manifest("f/r", &sig, None, 1).await.unwrap();
    let found = meta.referrers("f/r", &subject, None, None, 100).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].digest, sig.digest);
    assert_eq!(found[0].artifact_type.as_deref(), Some("application/example"));
    assert_eq!(found[0].annotations_json.as_deref(), Some(r#"{"k":"v"}"#));
    assert_eq!(found[0].size, 3);
    assert_eq!(
        meta.referrers("f/r", &subject, Some("application/example"), None, 100)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(meta
        .referrers("f/r", &subject, Some("other"), None, 100)
        .await
        .unwrap()
        .is_empty());
    assert!(meta
        .referrers("f/other", &subject, None, None, 100)
        .await
        .unwrap()
        .is_empty());
}

/// Every page of `subject`'s referrers (of `artifact_type`) in `repo`, `limit` at a time.
async fn referrer_pages(
    meta: &dyn MetaStore,
    repo: &str,
    subject: &Digest,
    artifact_type: Option<&str>,
    limit: u32,
) -> Vec<Vec<Digest>> {
    let mut pages = Vec::new();
    let mut after: Option<Digest> = None;
    loop {
        let page: Vec<Digest> = meta
            .referrers(repo, subject, artifact_type, after.as_ref(), limit)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.digest)
            .collect();
        assert!(
            page.len() <= limit as usize,
            "a page of {} for a limit of {limit}",
            page.len()
        );
        let Some(last) = page.last().cloned() else {
            return pages;
        };
        after = Some(last);
        pages.push(page);
    }
}

async fn referrers_page_in_digest_order(meta: &dyn MetaStore) {
    let subject = Digest::sha256_of(b"paged subject");
    let mut all = Vec::new();
    let mut signatures = Vec::new();
    for i in 0..25 {
        let mut m = manifest(&format!("paged referrer {i}"), vec![], vec![], Some(subject.clone()));
        if i % 3 == 0 {
            m.artifact_type = Some("application/signature".into());
            signatures.push(m.digest.clone());
        }
        meta.put_manifest("pg/r", &m, None, 1).await.unwrap();
        all.push(m.digest.clone());
    }
    // Referrers of another subject, and of the same subject in another
    // repository, are on no page.
    let other = manifest(
        "other subject's referrer",
        vec![],
        vec![],
        Some(Digest::sha256_of(b"other")),
    );
    meta.put_manifest("pg/r", &other, None, 1).await.unwrap();
    let elsewhere = manifest("paged referrer elsewhere", vec![], vec![], Some(subject.clone()));
    meta.put_manifest("pg/elsewhere", &elsewhere, None, 1).await.unwrap();
    all.sort();
    signatures.sort();

    let pages = referrer_pages(meta, "pg/r", &subject, None, 7).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [7, 7, 7, 4],
        "{pages:?}"
    );
    assert_eq!(pages.concat(), all, "every referrer once, in digest order");
    let pages = referrer_pages(meta, "pg/r", &subject, Some("application/signature"), 4).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 1]);
    assert_eq!(pages.concat(), signatures, "the filter applies on every page");
    assert_eq!(referrer_pages(meta, "pg/r", &subject, None, 100).await, [all.clone()]);

    let after: Vec<Digest> = meta
        .referrers("pg/r", &subject, None, Some(&all[10]), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.digest)
        .collect();
    assert_eq!(after, all[11..]);
    // The cursor is a bound in digest order, not a row that must exist.
    let unknown = Digest::sha256_of(b"not a referrer");
    let after_unknown: Vec<Digest> = meta
        .referrers("pg/r", &subject, None, Some(&unknown), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.digest)
        .collect();
    assert_eq!(
        after_unknown,
        all.iter().filter(|d| **d > unknown).cloned().collect::<Vec<_>>()
    );
    assert!(meta
        .referrers("pg/r", &subject, None, all.last(), 100)
        .await
        .unwrap()
        .is_empty());
    assert!(meta
        .referrers("pg/r", &subject, None, None, 0)
        .await
        .unwrap()
        .is_empty());
}

/// A store that leases sessions lets one claim hold a session until it is
/// released or runs out; a store of one process grants every claim (that
/// process serializes its own requests).
async fn upload_claims_exclude_each_other_until_they_run_out(meta: &dyn MetaStore) {
    let id = UploadId::new("conformance-claim".into());
    meta.create_upload(&new_upload("conformance-claim", "claim/r", crate::DEFAULT_STORE, 100))
        .await
        .unwrap();
    let unknown = UploadId::new("no-such-upload".into());
    assert_eq!(
        meta.claim_upload(&unknown, "a", 1000, 2000).await.unwrap(),
        UploadClaim::Unknown
    );

    let UploadClaim::Claimed { record, leased } = meta.claim_upload(&id, "a", 1000, 2000).await.unwrap() else {
        panic!("a free session is claimed");
    };
    assert_eq!((record.repo.as_str(), record.offset), ("claim/r", 0));
    if !leased {
        assert!(matches!(
            meta.claim_upload(&id, "b", 1000, 2000).await.unwrap(),
            UploadClaim::Claimed { leased: false, .. }
        ));
        assert!(meta.renew_upload_claim(&id, "a", 1000, 3000).await.unwrap());
        meta.release_upload_claim(&id, "a").await.unwrap();
        meta.delete_upload(&id).await.unwrap();
        return;
    }
    let busy = |claim: UploadClaim| match claim {
        UploadClaim::Busy(record) => record,
        other => panic!("expected the session busy, got {other:?}"),
    };
    assert_eq!(busy(meta.claim_upload(&id, "b", 1500, 2500).await.unwrap()).offset, 0);
    // Renewing keeps it; the session counts as active when renewed.
    assert!(meta.renew_upload_claim(&id, "a", 1900, 3000).await.unwrap());
    assert!(
        !meta.renew_upload_claim(&id, "b", 1900, 3000).await.unwrap(),
        "not b's to renew"
    );
    busy(meta.claim_upload(&id, "b", 2500, 3500).await.unwrap());
    assert_eq!(meta.get_upload(&id).await.unwrap().unwrap().updated_ms, 1900);
    // A claim that ran out (its holder died) is taken over, and the old
    // holder can neither renew nor release the new one.
    assert!(matches!(
        meta.claim_upload(&id, "b", 3000, 4000).await.unwrap(),
        UploadClaim::Claimed { leased: true, .. }
    ));
    assert!(!meta.renew_upload_claim(&id, "a", 3100, 5000).await.unwrap());
    meta.release_upload_claim(&id, "a").await.unwrap();
    busy(meta.claim_upload(&id, "c", 3200, 5000).await.unwrap());
    // Released, it is free at once.
    meta.release_upload_claim(&id, "b").await.unwrap();
    assert!(matches!(
        meta.claim_upload(&id, "c", 3300, 5000).await.unwrap(),
        UploadClaim::Claimed { .. }
    ));
    // A claim does not stop the session from advancing or going.
    assert!(meta.advance_upload(&id, 0, 10, None, 3400).await.unwrap());
    meta.delete_upload(&id).await.unwrap();
    assert!(!meta.renew_upload_claim(&id, "c", 3500, 6000).await.unwrap());
}

async fn uploads_advance_only_from_the_expected_offset(meta: &dyn MetaStore) {
    let id = UploadId::new("conformance-upload".into());
    let rec = UploadRecord {
        id: id.clone(),
        repo: "u/r".into(),
        store: crate::DEFAULT_STORE.into(),
        offset: 0,
        hash_state: None,
        started_ms: 100,
        updated_ms: 100,
        owner: Some("conformance-owner".into()),
    };
    meta.create_upload(&rec).await.unwrap();
    assert_eq!(meta.get_upload(&id).await.unwrap().unwrap(), rec);
    assert_eq!(meta.open_uploads_of("conformance-owner").await.unwrap(), 1);
    assert_eq!(meta.open_uploads_of("someone-else").await.unwrap(), 0);
    assert!(meta.advance_upload(&id, 0, 10, Some(b"state"), 200).await.unwrap());
    assert!(!meta.advance_upload(&id, 0, 20, None, 300).await.unwrap());
    let now = meta.get_upload(&id).await.unwrap().unwrap();
    assert_eq!((now.offset, now.hash_state.as_deref()), (10, Some(&b"state"[..])));
    assert!(meta.stale_uploads(150, 10).await.unwrap().is_empty());
    assert_eq!(meta.stale_uploads(250, 10).await.unwrap().len(), 1);
    meta.delete_upload(&id).await.unwrap();
    assert!(meta.get_upload(&id).await.unwrap().is_none());
    assert_eq!(meta.open_uploads_of("conformance-owner").await.unwrap(), 0);

    let done = UploadRecord {
        id: UploadId::new("conformance-done".into()),
        ..rec
    };
    meta.create_upload(&done).await.unwrap();
    let d = Digest::sha256_of(b"uploaded");
    meta.complete_upload(&done.id, "u/r", &d, 8, "default", 400, Box::pin(async { Ok(()) }))
        .await
        .unwrap();
    assert!(meta.get_upload(&done.id).await.unwrap().is_none());
    assert_eq!(meta.linked_blob_size("u/r", &d).await.unwrap(), Some(8));
}

/// Runs every conformance check of the access facts.
pub async fn run_access(store: &dyn AccessStore) {
    users_are_unique_and_changes_are_audited(store).await;
    robots_are_found_by_hash_and_revoked_with_their_grants(store).await;
    grants_are_unique_and_found_by_subject(store).await;
    names_with_a_nul_find_nothing_or_are_bad_input(store).await;
    a_shared_secret_is_the_first_one_stored(store).await;
}

/// A store that processes share keeps the first candidate for everyone; one
/// that no other process uses keeps none (its secrets are files).
async fn a_shared_secret_is_the_first_one_stored(store: &dyn AccessStore) {
    match store.shared_secret("conformance", "first").await.unwrap() {
        Some(first) => {
            assert_eq!(first, "first");
            let second = store.shared_secret("conformance", "second").await.unwrap();
            assert_eq!(second.as_deref(), Some("first"));
        }
        None => assert_eq!(store.shared_secret("conformance", "second").await.unwrap(), None),
    }
}

/// As [`text_with_a_nul_finds_nothing_or_is_bad_input`], for access facts.
async fn names_with_a_nul_find_nothing_or_are_bad_input(store: &dyn AccessStore) {
    match store.user("alice\0").await {
        Ok(found) => assert_eq!(found, None),
        Err(e) => assert!(e.is_bad_input(), "{e} is not bad input"),
    }
    match store.grants_for(&[(SubjectKind::Group, "dev\0".into())]).await {
        Ok(found) => assert_eq!(found, []),
        Err(e) => assert!(e.is_bad_input(), "{e} is not bad input"),
    }
}

fn audit(at_ms: i64) -> Audit {
    Audit {
        actor: "cli:test".into(),
        at_ms,
    }
}

async fn users_are_unique_and_changes_are_audited(store: &dyn AccessStore) {
    let alice = UserRecord {
        name: "alice".into(),
        password_hash: "$argon2id$fake".into(),
        admin: true,
        disabled: false,
        created_ms: 1,
    };
    assert!(store.create_user(&alice, &audit(1)).await.unwrap());
    assert!(!store.create_user(&alice, &audit(2)).await.unwrap());
    assert_eq!(store.user("alice").await.unwrap(), Some(alice.clone()));
    assert!(store.set_password("alice", "$argon2id$other", &audit(3)).await.unwrap());
    assert!(!store.set_password("nobody", "x", &audit(3)).await.unwrap());
    assert!(store.set_disabled("alice", true, &audit(4)).await.unwrap());
    let stored = store.user("alice").await.unwrap().unwrap();
    assert!(stored.disabled);
    assert_eq!(stored.password_hash, "$argon2id$other");
    assert_eq!(store.list_users().await.unwrap().len(), 1);
    let log = store.audit_log(None, 10).await.unwrap();
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["user.disable", "user.password", "user.create"]);
    assert!(log.iter().all(|e| e.actor == "cli:test" && e.target == "user:alice"));
    let older = store.audit_log(Some(log[0].id), 10).await.unwrap();
    assert_eq!(older.len(), 2);
}

async fn robots_are_found_by_hash_and_revoked_with_their_grants(store: &dyn AccessStore) {
    let robot = RobotRecord {
        name: "ci".into(),
        token_hash: "ab".repeat(32),
        created_by: "user:alice".into(),
        created_ms: 10,
        expires_ms: Some(1000),
        revoked_ms: None,
        last_used_ms: None,
    };
    let grant = NewGrant {
        subject_kind: SubjectKind::Robot,
        subject: "ci".into(),
        pattern: "team/*".into(),
        role: "push".into(),
    };
    assert!(store
        .create_robot(&robot, std::slice::from_ref(&grant), &audit(10))
        .await
        .unwrap());
    assert!(!store.create_robot(&robot, &[], &audit(11)).await.unwrap());
    assert_eq!(
        store.robot_by_token_hash(&robot.token_hash).await.unwrap(),
        Some(robot.clone())
    );
    assert_eq!(store.robot_by_token_hash(&"cd".repeat(32)).await.unwrap(), None);
    assert_eq!(store.robot("ci").await.unwrap(), Some(robot.clone()));
    assert_eq!(store.robot("nobody").await.unwrap(), None);
    store.touch_robot("ci", 20).await.unwrap();
    let found = store.robot_by_token_hash(&robot.token_hash).await.unwrap().unwrap();
    assert_eq!(found.last_used_ms, Some(20));
    let subject = [(SubjectKind::Robot, "ci".to_string())];
    assert_eq!(store.grants_for(&subject).await.unwrap().len(), 1);
    assert!(store.revoke_robot("ci", &audit(30)).await.unwrap());
    assert!(!store.revoke_robot("ci", &audit(31)).await.unwrap());
    assert!(store.grants_for(&subject).await.unwrap().is_empty());
    let revoked = store.robot_by_token_hash(&robot.token_hash).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_ms, Some(30));
    // The name of a revoked robot can be used again.
    let again = RobotRecord {
        token_hash: "ef".repeat(32),
        ..robot
    };
    assert!(store.create_robot(&again, &[], &audit(40)).await.unwrap());
    let actions: Vec<String> = store
        .audit_log(None, 4)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["token.create", "token.revoke", "grant.add", "token.create"]);
}

async fn grants_are_unique_and_found_by_subject(store: &dyn AccessStore) {
    let grant = NewGrant {
        subject_kind: SubjectKind::Group,
        subject: "platform".into(),
        pattern: "**".into(),
        role: "pull".into(),
    };
    let id = store.add_grant(&grant, &audit(50)).await.unwrap().unwrap();
    assert_eq!(store.add_grant(&grant, &audit(51)).await.unwrap(), None);
    let user_grant = NewGrant {
        subject_kind: SubjectKind::User,
        subject: "platform".into(),
        ..grant.clone()
    };
    store.add_grant(&user_grant, &audit(52)).await.unwrap().unwrap();
    let found = store
        .grants_for(&[
            (SubjectKind::Group, "platform".into()),
            (SubjectKind::User, "bob".into()),
        ])
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].id, found[0].pattern.as_str()), (id, "**"));
    assert!(store.remove_grant(id, &audit(53)).await.unwrap());
    assert!(!store.remove_grant(id, &audit(54)).await.unwrap());
    let last = &store.audit_log(None, 1).await.unwrap()[0];
    assert_eq!(last.action, "grant.remove");
    assert_eq!(last.detail.as_deref(), Some("group:platform pull on **"));
}

/// Runs every lifecycle check; `meta` must be the same store as `lifecycle`.
pub async fn run_lifecycle<S: MetaStore + LifecycleStore + AccessStore>(store: &S) {
    removals_recheck_what_changed_since_the_plan(store).await;
    collection_rechecks_inside_the_transaction(store).await;
    a_failed_placement_records_nothing(store).await;
    referrer_tags_without_subject_are_found(store).await;
    a_tag_that_follows_a_subject_goes_only_once_the_subject_is_gone(store).await;
    blobs_remember_the_stores_holding_them(store).await;
    sweeps_remove_what_they_find(store).await;
}

/// What a [`FileRemover`] was asked to delete.
#[derive(Default)]
struct DeletedFiles(Mutex<Vec<(Digest, String)>>);

#[async_trait::async_trait]
impl FileRemover for DeletedFiles {
    async fn remove(&self, removed: &[BlobFiles]) -> std::result::Result<(), crate::BoxError> {
        let mut deleted = self.0.lock().expect("deleted files");
        for blob in removed {
            deleted.extend(blob.stores.names().map(|s| (blob.digest.clone(), s.to_string())));
        }
        Ok(())
    }
}

impl DeletedFiles {
    fn take(&self) -> Vec<(Digest, String)> {
        let mut deleted = std::mem::take(&mut *self.0.lock().expect("deleted files"));
        deleted.sort();
        deleted
    }
}

/// A session of `repo` with no bytes yet, started at `at_ms`, its bytes in `store`.
pub(crate) fn new_upload(id: &str, repo: &str, store: &str, at_ms: i64) -> UploadRecord {
    UploadRecord {
        id: UploadId::new(id.into()),
        repo: repo.into(),
        store: store.into(),
        offset: 0,
        hash_state: None,
        started_ms: at_ms,
        updated_ms: at_ms,
        owner: None,
    }
}

/// Storage routes: an upload records the store holding it, a completed
/// upload adds its store to the blob's (once), a link changes no store, and
/// the collector deletes the files of every store that holds a copy.
async fn blobs_remember_the_stores_holding_them<S: MetaStore + LifecycleStore>(store: &S) {
    let d = Digest::sha256_of(b"routed blob");
    let upload = |id: &str, repo: &str, in_store: &str| new_upload(id, repo, in_store, 10);
    let first = upload("routes-first", "routes/a", "team-a");
    store.create_upload(&first).await.unwrap();
    assert_eq!(store.get_upload(&first.id).await.unwrap().unwrap().store, "team-a");
    let stale = store.stale_uploads(11, 100).await.unwrap();
    assert_eq!(
        stale.iter().find(|u| u.id == first.id).map(|u| u.store.as_str()),
        Some("team-a")
    );
    store
        .complete_upload(&first.id, "routes/a", &d, 11, "team-a", 20, Box::pin(async { Ok(()) }))
        .await
        .unwrap();
    let only_a = BlobRecord {
        size: 11,
        stores: StoreSet::only("team-a"),
    };
    assert_eq!(
        store.linked_blob("routes/a", &d).await.unwrap().map(|l| l.record),
        Some(only_a.clone())
    );
    assert_eq!(store.blob_record(&d).await.unwrap(), Some(only_a));
    assert_eq!(store.linked_blob("routes/b", &d).await.unwrap(), None);

    // Linking places no copy anywhere.
    store.link_blob("routes/b", &d, 30).await.unwrap();
    assert_eq!(
        store.blob_record(&d).await.unwrap().unwrap().stores,
        StoreSet::only("team-a")
    );

    // The same bytes completed in the default store: both hold a copy, once each.
    for (id, in_store) in [("routes-second", "default"), ("routes-third", "team-a")] {
        store.create_upload(&upload(id, "routes/c", in_store)).await.unwrap();
        store
            .complete_upload(
                &UploadId::new(id.into()),
                "routes/c",
                &d,
                11,
                in_store,
                40,
                Box::pin(async { Ok(()) }),
            )
            .await
            .unwrap();
    }
    let both = store.blob_record(&d).await.unwrap().unwrap().stores;
    assert_eq!(both.names().collect::<Vec<_>>(), ["team-a", "default"]);
    let recorded = store.blobs_with_prefix("sha256", &d.hex()[..2]).await.unwrap();
    assert_eq!(recorded.iter().find(|b| b.digest == d).map(|b| &b.stores), Some(&both));

    // A file is an orphan of a store its blob's row does not name.
    let files = DeletedFiles::default();
    let unknown = Digest::sha256_of(b"routed orphan");
    let mut asked = vec![d.clone(), unknown.clone()];
    asked.sort();
    let mut orphans_of_b = store.remove_orphan_files("team-b", &asked, &files).await.unwrap();
    orphans_of_b.sort();
    assert_eq!(orphans_of_b, asked);
    assert_eq!(
        store.remove_orphan_files("team-a", &asked, &files).await.unwrap(),
        std::slice::from_ref(&unknown)
    );
    let mut expected = vec![
        (d.clone(), "team-b".to_string()),
        (unknown.clone(), "team-a".to_string()),
        (unknown.clone(), "team-b".to_string()),
    ];
    expected.sort();
    assert_eq!(files.take(), expected);

    // Collected: its file goes from every store that holds one.
    for repo in ["routes/a", "routes/b", "routes/c"] {
        store.unlink_blob(repo, &d).await.unwrap();
    }
    let candidates = store.unreferenced_blobs(1_000, None, 100, &[]).await.unwrap();
    let candidate = candidates.iter().find(|b| b.digest == d).expect("d is unused");
    assert_eq!(candidate.stores, both);
    let removed = store
        .remove_blobs(std::slice::from_ref(&d), 1_000, &files)
        .await
        .unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(
        files.take(),
        [(d.clone(), "default".to_string()), (d.clone(), "team-a".to_string())]
    );
    assert_eq!(store.blob_record(&d).await.unwrap(), None);
}

/// A sweep finds and removes in one step, pages through the candidates in
/// digest order, and leaves alone what `removable` refuses. Its blobs are
/// older (time 1, cutoff 2) than any other test's, which it must not touch.
async fn sweeps_remove_what_they_find<S: MetaStore + LifecycleStore>(store: &S) {
    let repo = "lc/sweep";
    let mut loose: Vec<Digest> = (0..3)
        .map(|i| Digest::sha256_of(format!("sweep loose {i}").as_bytes()))
        .collect();
    loose.sort();
    for d in &loose {
        store.add_blob(repo, d, 5, 1).await.unwrap();
    }
    let used = Digest::sha256_of(b"sweep used");
    store.add_blob(repo, &used, 6, 1).await.unwrap();
    let m = manifest(r#"{"lc":"sweep"}"#, vec![used.clone()], vec![], None);
    store.put_manifest(repo, &m, Some("t"), 1).await.unwrap();
    // Its only copy is in a store the caller cannot delete from.
    let unplugged = Digest::sha256_of(b"sweep unplugged");
    let id = UploadId::new("sweep-unplugged".into());
    store
        .create_upload(&new_upload(id.as_str(), repo, "unplugged", 1))
        .await
        .unwrap();
    store
        .complete_upload(&id, repo, &unplugged, 7, "unplugged", 1, Box::pin(async { Ok(()) }))
        .await
        .unwrap();
    let mine = |d: &Digest| loose.contains(d) || *d == used || *d == unplugged;

    let files = DeletedFiles::default();
    let removable = |stores: &StoreSet| !stores.contains("unplugged");
    let (mut removed, mut left_alone, mut steps) = (Vec::new(), Vec::new(), 0);
    let mut after: Option<Digest> = None;
    loop {
        let sweep = store
            .sweep_blobs(2, after.as_ref(), 2, &removable, &files)
            .await
            .unwrap();
        steps += 1;
        assert!(
            sweep.removed.len() + sweep.left_alone.len() <= 2,
            "at most the limit per step"
        );
        if let (Some(before), Some(last)) = (&after, &sweep.last) {
            assert!(last > before, "steps move forward in digest order");
        }
        removed.extend(sweep.removed.into_iter().filter(|b| mine(&b.digest)));
        left_alone.extend(sweep.left_alone.into_iter().map(|b| b.digest).filter(|d| mine(d)));
        after = sweep.last;
        if !sweep.more {
            break;
        }
    }
    assert!(steps >= 2, "four candidates, two per step: {steps} steps");
    let removed_digests: Vec<Digest> = removed.iter().map(|b| b.digest.clone()).collect();
    assert_eq!(removed_digests, loose);
    assert!(removed.iter().all(|b| b.size == 5 && b.links == 1));
    assert_eq!(left_alone, std::slice::from_ref(&unplugged));
    let deleted: Vec<(Digest, String)> = files.take().into_iter().filter(|(d, _)| mine(d)).collect();
    let expected: Vec<(Digest, String)> = loose.iter().map(|d| (d.clone(), "default".to_string())).collect();
    assert_eq!(deleted, expected, "the files of what was removed, and only those");
    for d in &loose {
        assert_eq!(store.blob_size(d).await.unwrap(), None);
        assert_eq!(
            store.linked_blob_size(repo, d).await.unwrap(),
            None,
            "its link went with it"
        );
    }
    assert_eq!(store.linked_blob_size(repo, &used).await.unwrap(), Some(6));
    assert_eq!(store.blob_size(&unplugged).await.unwrap(), Some(7));

    // Found again next time, and still left alone.
    let again = store.sweep_blobs(2, None, 100, &removable, &files).await.unwrap();
    assert!(again.removed.iter().all(|b| !mine(&b.digest)));
    assert!(again.left_alone.iter().any(|b| b.digest == unplugged));
}

fn gc_audit(at_ms: i64) -> Audit {
    Audit {
        actor: "gc".into(),
        at_ms,
    }
}

fn tag_removal(name: &str, digest: &Digest, pushed_ms: i64, last_pulled_ms: Option<i64>) -> PlannedRemoval {
    PlannedRemoval {
        removal: Removal::Tag {
            name: name.into(),
            digest: digest.clone(),
            pushed_ms,
            last_pulled_ms,
            follows: None,
        },
        rule: "test".into(),
        reason: "a test removal".into(),
    }
}

fn manifest_removal(digest: &Digest, pushed_ms: i64, untouched_since: Option<i64>) -> PlannedRemoval {
    PlannedRemoval {
        removal: Removal::Manifest {
            digest: digest.clone(),
            pushed_ms,
            last_pulled_ms: None,
            untouched_since,
            collected: false,
        },
        rule: "test".into(),
        reason: "a test removal".into(),
    }
}

struct NoFiles;

#[async_trait::async_trait]
impl FileRemover for NoFiles {
    async fn remove(&self, _: &[BlobFiles]) -> std::result::Result<(), crate::BoxError> {
        Ok(())
    }
}

async fn removals_recheck_what_changed_since_the_plan<S: MetaStore + LifecycleStore + AccessStore>(store: &S) {
    let repo = "lc/plan";
    let child = manifest(r#"{"lc":"child"}"#, vec![], vec![], None);
    let index = manifest(r#"{"lc":"index"}"#, vec![], vec![child.digest.clone()], None);
    let pulled = manifest(r#"{"lc":"pulled"}"#, vec![], vec![], None);
    store.put_manifest(repo, &child, None, 10).await.unwrap();
    store.put_manifest(repo, &index, Some("i"), 10).await.unwrap();
    store.put_manifest(repo, &pulled, Some("p"), 10).await.unwrap();
    let state = store.repository_state(repo).await.unwrap().unwrap();
    assert_eq!(state.tags.len(), 2);
    assert_eq!(
        state
            .manifests
            .iter()
            .find(|m| m.digest == index.digest)
            .unwrap()
            .children,
        std::slice::from_ref(&child.digest)
    );

    // Pulled after the plan: the tag stays.
    store
        .record_pulls(&[PullRecord {
            repo: repo.into(),
            digest: pulled.digest.clone(),
            tag: Some("p".into()),
            count: 1,
            last_ms: 20,
        }])
        .await
        .unwrap();
    // The child of a tagged index, and a manifest with a tag, stay.
    let applied = store
        .remove(
            repo,
            &[
                tag_removal("p", &pulled.digest, 10, None),
                manifest_removal(&child.digest, 10, None),
                manifest_removal(&index.digest, 10, None),
            ],
            &gc_audit(30),
        )
        .await
        .unwrap();
    assert_eq!(applied, [false, false, false]);

    // Untagging the index first, in the same transaction, frees both, parent first.
    let applied = store
        .remove(
            repo,
            &[
                tag_removal("i", &index.digest, 10, None),
                manifest_removal(&index.digest, 10, None),
                manifest_removal(&child.digest, 10, None),
            ],
            &gc_audit(40),
        )
        .await
        .unwrap();
    assert_eq!(applied, [true, true, true]);
    let rows = store.audit_log(None, 10).await.unwrap();
    assert!(rows
        .iter()
        .any(|r| r.action == "tag.delete" && r.target == "lc/plan:i" && r.actor == "gc"));
    assert!(rows.iter().any(|r| r.action == "manifest.delete"
        && r.target == format!("lc/plan@{}", child.digest)
        && r.detail.as_deref().unwrap_or_default().contains("a test removal")));

    // A manifest pushed again after the plan stays.
    store.put_manifest(repo, &pulled, None, 50).await.unwrap();
    store.delete_tag(repo, "p", 55).await.unwrap();
    let applied = store
        .remove(repo, &[manifest_removal(&pulled.digest, 10, None)], &gc_audit(60))
        .await
        .unwrap();
    assert_eq!(applied, [false]);
    // Untagged at 55: not untouched since before 55.
    let applied = store
        .remove(repo, &[manifest_removal(&pulled.digest, 50, Some(55))], &gc_audit(60))
        .await
        .unwrap();
    assert_eq!(applied, [false]);
    let removal = manifest_removal(&pulled.digest, 50, Some(56));
    assert_eq!(
        store
            .remove(repo, std::slice::from_ref(&removal), &gc_audit(60))
            .await
            .unwrap(),
        [false],
        "pulled at 20"
    );
    let seen_pull = PlannedRemoval {
        removal: Removal::Manifest {
            digest: pulled.digest.clone(),
            pushed_ms: 50,
            last_pulled_ms: Some(20),
            untouched_since: Some(56),
            collected: false,
        },
        ..removal
    };
    assert_eq!(store.remove(repo, &[seen_pull], &gc_audit(60)).await.unwrap(), [true]);
}

async fn collection_rechecks_inside_the_transaction<S: MetaStore + LifecycleStore>(store: &S) {
    let repo = "lc/gc";
    let used = Digest::sha256_of(b"lc used");
    let loose = Digest::sha256_of(b"lc loose");
    let shared = Digest::sha256_of(b"lc shared");
    store.add_blob(repo, &used, 7, 100).await.unwrap();
    store.add_blob(repo, &loose, 8, 100).await.unwrap();
    store.add_blob(repo, &shared, 9, 100).await.unwrap();
    store.add_blob("lc/other", &shared, 9, 100).await.unwrap();
    let m = manifest(r#"{"lc":"gc"}"#, vec![used.clone()], vec![], None);
    store.put_manifest(repo, &m, Some("t"), 100).await.unwrap();
    let elsewhere = manifest(r#"{"lc":"elsewhere"}"#, vec![shared.clone()], vec![], None);
    store
        .put_manifest("lc/other", &elsewhere, Some("t"), 100)
        .await
        .unwrap();

    // A stale link is one of a blob used elsewhere; the loose blob's link goes with the blob.
    let stale = store.stale_links(200, None, 100, &[]).await.unwrap();
    assert_eq!(stale.iter().map(|l| &l.digest).collect::<Vec<_>>(), [&shared]);
    let unused = |digest: &Digest, size, links| UnusedBlob {
        digest: digest.clone(),
        size,
        links,
        stores: StoreSet::default(),
    };
    assert_eq!(
        store.unreferenced_blobs(200, None, 100, &[]).await.unwrap(),
        [unused(&loose, 8, 1)]
    );
    // Linked again before removal: the link stays.
    store.link_blob(repo, &shared, 300).await.unwrap();
    assert_eq!(store.remove_links(&stale, 200).await.unwrap(), 0);
    assert_eq!(store.remove_links(&stale, 400).await.unwrap(), 1);
    assert_eq!(store.linked_blob_size(repo, &shared).await.unwrap(), None);
    assert_eq!(store.linked_blob_size("lc/other", &shared).await.unwrap(), Some(9));

    store.link_blob(repo, &loose, 300).await.unwrap();
    assert!(store.unreferenced_blobs(200, None, 100, &[]).await.unwrap().is_empty());
    let candidates = store.unreferenced_blobs(400, None, 100, &[]).await.unwrap();
    assert_eq!(candidates, [unused(&loose, 8, 1)]);
    // Linked again after it was found: not removed.
    store.link_blob(repo, &loose, 450).await.unwrap();
    assert!(store
        .remove_blobs(std::slice::from_ref(&loose), 400, &NoFiles)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .remove_blobs(&[loose.clone(), used.clone()], 500, &NoFiles)
            .await
            .unwrap(),
        [unused(&loose, 8, 1)]
    );
    assert_eq!(store.blob_size(&loose).await.unwrap(), None);
    assert_eq!(
        store.linked_blob_size(repo, &loose).await.unwrap(),
        None,
        "its link went with it"
    );

    // Deleting the manifest starts the used blob's grace period then.
    store.delete_manifest(repo, &m.digest, 1000).await.unwrap();
    let unused_at = |cutoff| async move { store.unreferenced_blobs(cutoff, None, 100, &[]).await.unwrap() };
    assert!(!unused_at(1000).await.iter().any(|b| b.digest == used));
    assert!(unused_at(1001).await.iter().any(|b| b.digest == used));

    // Untagged manifests, after their grace.
    let u = manifest(r#"{"lc":"untagged"}"#, vec![], vec![], None);
    store.put_manifest(repo, &u, None, 2000).await.unwrap();
    assert!(!store
        .untagged_manifests(2000, None, 100, &[])
        .await
        .unwrap()
        .iter()
        .any(|x| x.digest == u.digest));
    let found = store.untagged_manifests(2001, None, 100, &[]).await.unwrap();
    let u_found = found
        .iter()
        .find(|x| x.digest == u.digest && x.repo == repo)
        .expect("the untagged manifest is a candidate");

    // A dry run pretends what it counted is gone: not counted twice, and
    // what only it referenced counts as unreferenced.
    let pretend = [(u_found.repo_id, u.digest.clone())];
    assert!(!store
        .untagged_manifests(2001, None, 100, &pretend)
        .await
        .unwrap()
        .iter()
        .any(|x| x.digest == u.digest));
    store.delete_tag("lc/other", "t", 1500).await.unwrap();
    let elsewhere_found = store
        .untagged_manifests(2001, None, 100, &[])
        .await
        .unwrap()
        .into_iter()
        .find(|x| x.digest == elsewhere.digest)
        .expect("elsewhere is untagged now");
    let blobs_if_gone =
        |gone: Vec<(i64, Digest)>| async move { store.unreferenced_blobs(2001, None, 100, &gone).await.unwrap() };
    assert!(!blobs_if_gone(vec![]).await.iter().any(|b| b.digest == shared));
    assert!(blobs_if_gone(vec![(elsewhere_found.repo_id, elsewhere.digest.clone())])
        .await
        .iter()
        .any(|b| b.digest == shared));
}

async fn a_failed_placement_records_nothing<S: MetaStore + LifecycleStore>(store: &S) {
    let id = UploadId::new("lc-placement".into());
    let now = 10;
    store
        .create_upload(&UploadRecord {
            id: id.clone(),
            repo: "lc/up".into(),
            store: crate::DEFAULT_STORE.into(),
            offset: 0,
            hash_state: None,
            started_ms: now,
            updated_ms: now,
            owner: None,
        })
        .await
        .unwrap();
    let d = Digest::sha256_of(b"lc placement");
    let failed = store
        .complete_upload(
            &id,
            "lc/up",
            &d,
            3,
            "default",
            now,
            Box::pin(async { Err("disk full".into()) }),
        )
        .await;
    assert!(matches!(failed, Err(MetaError::Placement(_))));
    assert_eq!(store.blob_size(&d).await.unwrap(), None);
    assert!(
        store.get_upload(&id).await.unwrap().is_some(),
        "the session survives for a retry"
    );
    let ids = store.upload_ids().await.unwrap();
    assert!(ids.contains(&"lc-placement".to_string()));
}

async fn a_tag_that_follows_a_subject_goes_only_once_the_subject_is_gone<S: MetaStore + LifecycleStore>(store: &S) {
    let repo = "lc/follows";
    let subject = manifest(r#"{"lc":"followed"}"#, vec![], vec![], None);
    let sig = manifest(r#"{"lc":"follower"}"#, vec![], vec![], None);
    store.put_manifest(repo, &subject, Some("v1"), 10).await.unwrap();
    let tag = format!("sha256-{}.sig", subject.digest.hex());
    store.put_manifest(repo, &sig, Some(&tag), 10).await.unwrap();
    let mut follower = tag_removal(&tag, &sig.digest, 10, None);
    if let Removal::Tag { follows, .. } = &mut follower.removal {
        *follows = Some(subject.digest.clone());
    }
    let sig_removal = manifest_removal(&sig.digest, 10, None);
    // The subject stays (its tag was pulled after the plan, say): so do the
    // signature's tag and, since that still names it, the signature.
    let applied = store
        .remove(repo, &[follower.clone(), sig_removal.clone()], &gc_audit(20))
        .await
        .unwrap();
    assert_eq!(applied, [false, false]);
    assert!(store.manifest_by_tag(repo, &tag).await.unwrap().is_some());
    // In one transaction, the subject first: then both follow it.
    let applied = store
        .remove(
            repo,
            &[
                tag_removal("v1", &subject.digest, 10, None),
                manifest_removal(&subject.digest, 10, None),
                follower,
                sig_removal,
            ],
            &gc_audit(21),
        )
        .await
        .unwrap();
    assert_eq!(applied, [true, true, true, true]);
}

async fn referrer_tags_without_subject_are_found<S: MetaStore + LifecycleStore>(store: &S) {
    let repo = "lc/sig";
    let subject = manifest(r#"{"lc":"subject"}"#, vec![], vec![], None);
    let sig = manifest(r#"{"lc":"sig"}"#, vec![], vec![], None);
    let att = manifest(r#"{"lc":"att"}"#, vec![], vec![], Some(subject.digest.clone()));
    let plain = manifest(r#"{"lc":"plain"}"#, vec![], vec![], None);
    store.put_manifest(repo, &subject, Some("v1"), 10).await.unwrap();
    let tag = format!("sha256-{}.sig", subject.digest.hex());
    store.put_manifest(repo, &sig, Some(&tag), 10).await.unwrap();
    // An attestation under two ordinary tags follows its declared subject.
    store.put_manifest(repo, &att, Some("att-ref"), 10).await.unwrap();
    store.put_manifest(repo, &att, Some("att-ref2"), 10).await.unwrap();
    // Tags that only look like the schema are plain tags, never orphans.
    store
        .put_manifest(repo, &plain, Some("sha256-latest"), 10)
        .await
        .unwrap();
    let lookalike = format!("sha256-{}.txt", "0".repeat(64));
    store.put_manifest(repo, &plain, Some(&lookalike), 10).await.unwrap();
    assert!(store.orphaned_referrer_tags(100, None, 10).await.unwrap().is_empty());
    store.delete_manifest(repo, &subject.digest, 20).await.unwrap();
    let found = store.orphaned_referrer_tags(100, None, 10).await.unwrap();
    let names: Vec<&str> = found.iter().map(|o| o.tag.name.as_str()).collect();
    assert_eq!(names, ["att-ref", "att-ref2", tag.as_str()]);
    assert!(found.iter().all(|o| o.repo == repo && o.manifest_pushed_ms == 10));
    let tag_counts: Vec<u64> = found.iter().map(|o| o.manifest_tags).collect();
    assert_eq!(tag_counts, [2, 2, 1]);

    // In pages, each after the last tag of the one before.
    let first = store.orphaned_referrer_tags(100, None, 2).await.unwrap();
    assert_eq!(first.len(), 2);
    let last = &first[1];
    let rest = store
        .orphaned_referrer_tags(100, Some((last.repo_id, &last.tag.name)), 2)
        .await
        .unwrap();
    let names: Vec<&str> = rest.iter().map(|o| o.tag.name.as_str()).collect();
    assert_eq!(names, [tag.as_str()]);
    assert!(
        store.orphaned_referrer_tags(10, None, 10).await.unwrap().is_empty(),
        "pushed at 10, not before"
    );
}

// ---------------------------------------------------------------- races ----
//
// A push and a removal of the same thing, started together, each on a
// connection of its own, many rounds with slightly shifted starts. Whichever
// commits first, what the push was told it stored must still be there.

/// When the things the collector removes were last pushed or linked.
const OLD_MS: i64 = 100;
/// The collector's cutoff: what was last touched before it is a candidate.
const CUTOFF_MS: i64 = 500;
/// When the racing push happens.
const NOW_MS: i64 = 1000;

/// Runs every race check, `rounds` times each; `store` must be fresh.
pub async fn run_races<S: LifecycleStore>(store: &S, rounds: u32) {
    upload_racing_blob_collection(store, rounds).await;
    mount_racing_blob_collection(store, rounds).await;
    touch_racing_blob_collection(store, rounds).await;
    manifest_racing_blob_collection(store, rounds).await;
    manifest_racing_link_collection(store, rounds).await;
    index_racing_child_removal(store, rounds).await;
    tag_push_racing_tag_removal(store, rounds).await;
    concurrent_pulls_add_up(store).await;
    concurrent_advances_let_one_through(store).await;
}

/// Polls both futures until both are done, so their database work overlaps.
async fn join2<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut out_a, mut out_b) = (None, None);
    poll_fn(|cx| {
        if out_a.is_none() {
            if let Poll::Ready(v) = a.as_mut().poll(cx) {
                out_a = Some(v);
            }
        }
        if out_b.is_none() {
            if let Poll::Ready(v) = b.as_mut().poll(cx) {
                out_b = Some(v);
            }
        }
        match (out_a.take(), out_b.take()) {
            (Some(a), Some(b)) => Poll::Ready((a, b)),
            (a, b) => {
                (out_a, out_b) = (a, b);
                Poll::Pending
            }
        }
    })
    .await
}

/// Polls all futures until all are done.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    poll_fn(|cx| {
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                if let Poll::Ready(v) = future.as_mut().poll(cx) {
                    *output = Some(v);
                }
            }
        }
        if outputs.iter().all(Option::is_some) {
            Poll::Ready(outputs.iter_mut().filter_map(Option::take).collect())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Lets the other futures of a join run first, `turns` times.
async fn pause(turns: u32) {
    for _ in 0..turns {
        let mut yielded = false;
        poll_fn(|cx| {
            if yielded {
                Poll::Ready(())
            } else {
                yielded = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        })
        .await;
    }
}

/// The blob store in these races: which blob files exist.
#[derive(Default)]
struct RaceFiles(Mutex<HashSet<Digest>>);

impl RaceFiles {
    fn place(&self, digest: &Digest) {
        self.0.lock().expect("blob files").insert(digest.clone());
    }

    fn has(&self, digest: &Digest) -> bool {
        self.0.lock().expect("blob files").contains(digest)
    }
}

#[async_trait::async_trait]
impl FileRemover for RaceFiles {
    async fn remove(&self, removed: &[BlobFiles]) -> std::result::Result<(), crate::BoxError> {
        // Deleting files takes a while; a push may be waiting meanwhile.
        pause(2).await;
        let mut files = self.0.lock().expect("blob files");
        for blob in removed {
            files.remove(&blob.digest);
        }
        Ok(())
    }
}

/// Which side committed first, over the rounds of one race.
#[derive(Default)]
struct Tally {
    push_first: u32,
    removal_first: u32,
}

impl Tally {
    fn count(&mut self, removal_won: bool) {
        if removal_won {
            self.removal_first += 1;
        } else {
            self.push_first += 1;
        }
    }

    fn report(&self, race: &str) {
        eprintln!(
            "race {race}: the push committed first in {} rounds, the removal in {}",
            self.push_first, self.removal_first
        );
    }
}

/// Starts of the two sides, shifted a little differently each round.
fn shifts(round: u32) -> (u32, u32) {
    (round % 3, (round / 3) % 3)
}

/// The blob is recorded, linked to `repo`, and its file is in place.
async fn assert_blob_kept<S: MetaStore + ?Sized>(store: &S, files: &RaceFiles, repo: &str, d: &Digest, race: &str) {
    assert!(store.blob_size(d).await.unwrap().is_some(), "{race}: blob record gone");
    assert!(
        store.linked_blob_size(repo, d).await.unwrap().is_some(),
        "{race}: link gone"
    );
    assert!(files.has(d), "{race}: acknowledged, but its file was deleted");
}

async fn upload_racing_blob_collection<S: LifecycleStore>(store: &S, rounds: u32) {
    let files = RaceFiles::default();
    let mut tally = Tally::default();
    for round in 0..rounds {
        let race = format!("upload round {round}");
        let repo = format!("race/upload-{round}");
        let d = Digest::sha256_of(race.as_bytes());
        // An old copy of the blob that nothing uses: the collector's candidate.
        store.add_blob(&repo, &d, 4, OLD_MS).await.unwrap();
        files.place(&d);
        let id = UploadId::new(format!("race-upload-{round}"));
        store
            .create_upload(&UploadRecord {
                id: id.clone(),
                repo: repo.clone(),
                store: crate::DEFAULT_STORE.into(),
                offset: 4,
                hash_state: None,
                started_ms: NOW_MS,
                updated_ms: NOW_MS,
                owner: None,
            })
            .await
            .unwrap();
        let (push_shift, gc_shift) = shifts(round);
        let place = Box::pin(async {
            pause(1).await;
            files.place(&d);
            Ok::<_, crate::BoxError>(())
        });
        let push = async {
            pause(push_shift).await;
            store.complete_upload(&id, &repo, &d, 4, "default", NOW_MS, place).await
        };
        let collect = async {
            pause(gc_shift).await;
            store.remove_blobs(std::slice::from_ref(&d), CUTOFF_MS, &files).await
        };
        let (pushed, collected) = join2(push, collect).await;
        pushed.unwrap_or_else(|e| panic!("{race}: the upload must complete either way: {e}"));
        let collected = collected.unwrap_or_else(|e| panic!("{race}: collection failed: {e}"));
        assert_blob_kept(store, &files, &repo, &d, &race).await;
        assert!(store.get_upload(&id).await.unwrap().is_none());
        tally.count(!collected.is_empty());
    }
    tally.report("complete_upload vs remove_blobs");
}

async fn mount_racing_blob_collection<S: LifecycleStore>(store: &S, rounds: u32) {
    let files = RaceFiles::default();
    let mut tally = Tally::default();
    for round in 0..rounds {
        let race = format!("mount round {round}");
        let d = Digest::sha256_of(race.as_bytes());
        let to = format!("race/mount-to-{round}");
        store
            .add_blob(&format!("race/mount-from-{round}"), &d, 5, OLD_MS)
            .await
            .unwrap();
        files.place(&d);
        let (push_shift, gc_shift) = shifts(round);
        let push = async {
            pause(push_shift).await;
            store.link_blob(&to, &d, NOW_MS).await
        };
        let collect = async {
            pause(gc_shift).await;
            store.remove_blobs(std::slice::from_ref(&d), CUTOFF_MS, &files).await
        };
        let (linked, collected) = join2(push, collect).await;
        let collected = collected.unwrap_or_else(|e| panic!("{race}: collection failed: {e}"));
        match linked.unwrap_or_else(|e| panic!("{race}: mount failed: {e}")) {
            Some(size) => {
                assert_eq!(size, 5);
                assert!(collected.is_empty(), "{race}: mounted a blob the collector removed");
                assert_blob_kept(store, &files, &to, &d, &race).await;
            }
            None => {
                assert_eq!(collected.len(), 1, "{race}: nothing to mount, yet nothing collected");
                assert_eq!(store.blob_size(&d).await.unwrap(), None);
            }
        }
        tally.count(!collected.is_empty());
    }
    tally.report("link_blob vs remove_blobs");
}

/// A read's touch of a link and the collector's removal of its blob: either
/// the touch lands first and the blob stays, or it finds the link gone
/// (and the read answers 404).
async fn touch_racing_blob_collection<S: LifecycleStore>(store: &S, rounds: u32) {
    let files = RaceFiles::default();
    let mut tally = Tally::default();
    for round in 0..rounds {
        let race = format!("touch round {round}");
        let repo = format!("race/touch-{round}");
        let d = Digest::sha256_of(race.as_bytes());
        store.add_blob(&repo, &d, 7, OLD_MS).await.unwrap();
        files.place(&d);
        let (read_shift, gc_shift) = shifts(round);
        let touch = async {
            pause(read_shift).await;
            store.touch_link(&repo, &d, NOW_MS).await
        };
        let collect = async {
            pause(gc_shift).await;
            store.remove_blobs(std::slice::from_ref(&d), CUTOFF_MS, &files).await
        };
        let (touched, collected) = join2(touch, collect).await;
        let collected = collected.unwrap_or_else(|e| panic!("{race}: collection failed: {e}"));
        if touched.unwrap_or_else(|e| panic!("{race}: touch failed: {e}")) {
            assert!(collected.is_empty(), "{race}: touched a link the collector removed");
            assert_blob_kept(store, &files, &repo, &d, &race).await;
        } else {
            assert_eq!(collected.len(), 1, "{race}: the link is gone, yet nothing collected");
            assert_eq!(store.blob_size(&d).await.unwrap(), None);
        }
        tally.count(!collected.is_empty());
    }
    tally.report("touch_link vs remove_blobs");
}

async fn manifest_racing_blob_collection<S: LifecycleStore>(store: &S, rounds: u32) {
    let files = RaceFiles::default();
    let mut tally = Tally::default();
    for round in 0..rounds {
        let race = format!("manifest round {round}");
        let repo = format!("race/manifest-{round}");
        let layer = Digest::sha256_of(race.as_bytes());
        store.add_blob(&repo, &layer, 6, OLD_MS).await.unwrap();
        files.place(&layer);
        let m = manifest(&format!("{{\"race\":\"{race}\"}}"), vec![layer.clone()], vec![], None);
        let (push_shift, gc_shift) = shifts(round);
        let push = async {
            pause(push_shift).await;
            store.put_manifest(&repo, &m, Some("latest"), NOW_MS).await
        };
        let collect = async {
            pause(gc_shift).await;
            store
                .remove_blobs(std::slice::from_ref(&layer), CUTOFF_MS, &files)
                .await
        };
        let (pushed, collected) = join2(push, collect).await;
        let collected = collected.unwrap_or_else(|e| panic!("{race}: collection failed: {e}"));
        match pushed {
            Ok(()) => {
                assert!(
                    collected.is_empty(),
                    "{race}: pushed a manifest whose blob was collected"
                );
                assert_blob_kept(store, &files, &repo, &layer, &race).await;
                assert!(store.manifest_by_tag(&repo, "latest").await.unwrap().is_some());
            }
            Err(MetaError::MissingReference(d)) => {
                assert_eq!(d, layer);
                assert_eq!(collected.len(), 1, "{race}: refused, yet the blob is there");
                assert_eq!(store.blob_size(&layer).await.unwrap(), None);
            }
            Err(e) => panic!("{race}: push failed: {e}"),
        }
        tally.count(!collected.is_empty());
    }
    tally.report("put_manifest vs remove_blobs");
}

async fn manifest_racing_link_collection<S: LifecycleStore>(store: &S, rounds: u32) {
    let mut tally = Tally::default();
    for round in 0..rounds {
        let race = format!("link round {round}");
        let repo = format!("race/link-{round}");
        let layer = Digest::sha256_of(race.as_bytes());
        // Used by a manifest elsewhere, linked here long ago: a stale link.
        let elsewhere = format!("race/link-user-{round}");
        store.add_blob(&elsewhere, &layer, 7, OLD_MS).await.unwrap();
        let user = manifest(&format!("{{\"user\":\"{race}\"}}"), vec![layer.clone()], vec![], None);
        store.put_manifest(&elsewhere, &user, Some("t"), OLD_MS).await.unwrap();
        store.add_blob(&repo, &layer, 7, OLD_MS).await.unwrap();
        let stale: Vec<LinkKey> = store
            .stale_links(CUTOFF_MS, None, 100_000, &[])
            .await
            .unwrap()
            .into_iter()
            .filter(|l| l.digest == layer)
            .collect();
        assert_eq!(stale.len(), 1, "{race}: the link is stale");
        let m = manifest(&format!("{{\"race\":\"{race}\"}}"), vec![layer.clone()], vec![], None);
        let (push_shift, gc_shift) = shifts(round);
        let push = async {
            pause(push_shift).await;
            store.put_manifest(&repo, &m, Some("latest"), NOW_MS).await
        };
        let collect = async {
            pause(gc_shift).await;
            store.remove_links(&stale, CUTOFF_MS).await
        };
        let (pushed, removed) = join2(push, collect).await;
        let removed = removed.unwrap_or_else(|e| panic!("{race}: link removal failed: {e}"));
        match pushed {
            Ok(()) => {
                assert_eq!(removed, 0, "{race}: pushed a manifest whose link was removed");
                assert_eq!(store.linked_blob_size(&repo, &layer).await.unwrap(), Some(7));
            }
            Err(MetaError::MissingReference(_)) => {
                assert_eq!(removed, 1, "{race}: refused, yet the link is there");
                assert_eq!(store.linked_blob_size(&repo, &layer).await.unwrap(), None);
            }
            Err(e) => panic!("{race}: push failed: {e}"),
        }
        tally.count(removed > 0);
    }
    tally.report("put_manifest vs remove_links");
}

async fn index_racing_child_removal<S: LifecycleStore>(store: &S, rounds: u32) {
    let mut tally = Tally::default();
    for round in 0..rounds {
        let race = format!("index round {round}");
        let repo = format!("race/index-{round}");
        let child = manifest(&format!("{{\"child\":\"{race}\"}}"), vec![], vec![], None);
        store.put_manifest(&repo, &child, None, OLD_MS).await.unwrap();
        let index = manifest(
            &format!("{{\"index\":\"{race}\"}}"),
            vec![],
            vec![child.digest.clone()],
            None,
        );
        let removal = PlannedRemoval {
            removal: Removal::Manifest {
                digest: child.digest.clone(),
                pushed_ms: OLD_MS,
                last_pulled_ms: None,
                untouched_since: Some(CUTOFF_MS),
                collected: true,
            },
            rule: "gc".into(),
            reason: "untagged".into(),
        };
        let (push_shift, gc_shift) = shifts(round);
        let push = async {
            pause(push_shift).await;
            store.put_manifest(&repo, &index, Some("multi"), NOW_MS).await
        };
        let collect = async {
            pause(gc_shift).await;
            store
                .remove(&repo, std::slice::from_ref(&removal), &gc_audit(NOW_MS))
                .await
        };
        let (pushed, applied) = join2(push, collect).await;
        let applied = applied.unwrap_or_else(|e| panic!("{race}: removal failed: {e}"));
        match pushed {
            Ok(()) => {
                assert_eq!(applied, [false], "{race}: pushed an index whose child was removed");
                assert!(store.manifest_by_digest(&repo, &child.digest).await.unwrap().is_some());
            }
            Err(MetaError::MissingReference(d)) => {
                assert_eq!(d, child.digest);
                assert_eq!(applied, [true], "{race}: refused, yet the child is there");
            }
            Err(e) => panic!("{race}: push failed: {e}"),
        }
        tally.count(applied == [true]);
    }
    tally.report("put_manifest of an index vs removal of its child");
}

async fn tag_push_racing_tag_removal<S: LifecycleStore>(store: &S, rounds: u32) {
    let mut tally = Tally::default();
    for round in 0..rounds {
        let race = format!("tag round {round}");
        let repo = format!("race/tag-{round}");
        let m = manifest(&format!("{{\"tag\":\"{race}\"}}"), vec![], vec![], None);
        store.put_manifest(&repo, &m, Some("t"), OLD_MS).await.unwrap();
        let (push_shift, gc_shift) = shifts(round);
        let push = async {
            pause(push_shift).await;
            store.put_manifest(&repo, &m, Some("t"), NOW_MS).await
        };
        let collect = async {
            pause(gc_shift).await;
            store
                .remove(&repo, &[tag_removal("t", &m.digest, OLD_MS, None)], &gc_audit(NOW_MS))
                .await
        };
        let (pushed, applied) = join2(push, collect).await;
        pushed.unwrap_or_else(|e| panic!("{race}: push failed: {e}"));
        let applied = applied.unwrap_or_else(|e| panic!("{race}: removal failed: {e}"));
        let tag = store.tag_facts(&repo, "t").await.unwrap();
        assert_eq!(
            tag.map(|t| (t.digest, t.pushed_ms)),
            Some((m.digest.clone(), NOW_MS)),
            "{race}: the pushed tag is gone"
        );
        tally.count(applied == [true]);
    }
    tally.report("put_manifest of a tag vs its removal");
}

async fn concurrent_pulls_add_up<S: LifecycleStore>(store: &S) {
    let repo = "race/pulls";
    let m = manifest(r#"{"race":"pulls"}"#, vec![], vec![], None);
    store.put_manifest(repo, &m, Some("t"), OLD_MS).await.unwrap();
    let flushes: u32 = 16;
    let digest = &m.digest;
    let pulls: Vec<_> = (0..flushes)
        .map(|i| async move {
            let record = PullRecord {
                repo: repo.into(),
                digest: digest.clone(),
                tag: Some("t".into()),
                count: 2,
                last_ms: NOW_MS + i64::from(i),
            };
            pause(i % 3).await;
            store.record_pulls(&[record.clone(), record]).await
        })
        .collect();
    for flushed in join_all(pulls).await {
        flushed.unwrap();
    }
    let facts = store.manifest_facts(repo, &m.digest).await.unwrap().unwrap();
    assert_eq!(
        (facts.pull_count, facts.last_pulled_ms),
        (u64::from(flushes) * 4, Some(NOW_MS + i64::from(flushes) - 1))
    );
    let tag = store.tag_facts(repo, "t").await.unwrap().unwrap();
    assert_eq!(tag.pull_count, u64::from(flushes) * 4);
}

async fn concurrent_advances_let_one_through<S: LifecycleStore>(store: &S) {
    let id = UploadId::new("race-advance".into());
    store
        .create_upload(&UploadRecord {
            id: id.clone(),
            repo: "race/advance".into(),
            store: crate::DEFAULT_STORE.into(),
            offset: 0,
            hash_state: None,
            started_ms: OLD_MS,
            updated_ms: OLD_MS,
            owner: None,
        })
        .await
        .unwrap();
    for step in 0..8u64 {
        let from = step * 10;
        let movers: Vec<_> = (0..8u32)
            .map(|i| {
                let id = &id;
                async move {
                    pause(i % 3).await;
                    let state = [u8::try_from(i).unwrap_or(0)];
                    store
                        .advance_upload(id, from, from + 10, Some(&state[..]), NOW_MS)
                        .await
                        .map(|moved| moved.then_some(i))
                }
            })
            .collect();
        let winners: Vec<u32> = join_all(movers)
            .await
            .into_iter()
            .filter_map(|moved| moved.unwrap())
            .collect();
        assert_eq!(winners.len(), 1, "exactly one request moves the upload from {from}");
        let now = store.get_upload(&id).await.unwrap().unwrap();
        assert_eq!(now.offset, from + 10);
        let winner = u8::try_from(winners[0]).unwrap_or(0);
        assert_eq!(
            now.hash_state.as_deref(),
            Some(&[winner][..]),
            "the winner's hash state"
        );
    }
}

/// Runs every conformance check of the webhook queue.
pub async fn run_webhooks(store: &dyn WebhookStore) {
    events_are_queued_in_order_per_endpoint_and_removed_by_id(store).await;
    a_full_queue_drops_its_oldest_events_and_counts_them(store).await;
    failures_back_off_and_given_up_events_are_counted(store).await;
}

fn webhook_event(endpoint: &str, n: u32) -> crate::webhooks::NewEvent {
    crate::webhooks::NewEvent {
        endpoint: endpoint.into(),
        body: format!(r#"{{"n":{n}}}"#),
        created_ms: i64::from(n),
    }
}

async fn events_are_queued_in_order_per_endpoint_and_removed_by_id(store: &dyn WebhookStore) {
    let events: Vec<_> = (0..5)
        .map(|n| webhook_event(if n % 2 == 0 { "order-a" } else { "order-b" }, n))
        .collect();
    assert_eq!(store.enqueue_events(&events, 100).await.unwrap(), 0);
    let a = store.queued_events("order-a", 10).await.unwrap();
    let bodies: Vec<&str> = a.iter().map(|e| e.body.as_str()).collect();
    assert_eq!(bodies, [r#"{"n":0}"#, r#"{"n":2}"#, r#"{"n":4}"#]);
    assert!(a.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(store.queued_events("order-a", 2).await.unwrap().len(), 2);
    // Removing ids of another endpoint's queue removes nothing there.
    let b = store.queued_events("order-b", 10).await.unwrap();
    store.events_delivered("order-a", &[b[0].id], 50).await.unwrap();
    assert_eq!(store.queued_events("order-b", 10).await.unwrap().len(), 2);
    store
        .events_delivered("order-a", &[a[0].id, a[1].id], 60)
        .await
        .unwrap();
    let left = store.queued_events("order-a", 10).await.unwrap();
    assert_eq!(left, vec![a[2].clone()]);
    let state = store.webhook_endpoint("order-a").await.unwrap();
    assert_eq!((state.queued, state.delivered, state.last_success_ms), (1, 2, Some(60)));
    let all = store.webhook_endpoints().await.unwrap();
    let names: Vec<&str> = all.iter().map(|e| e.endpoint.as_str()).collect();
    assert!(names.contains(&"order-a") && names.contains(&"order-b"), "{names:?}");
    let b_state = all.iter().find(|e| e.endpoint == "order-b").unwrap();
    assert_eq!((b_state.queued, b_state.delivered), (2, 0));
    let unknown = store.webhook_endpoint("order-none").await.unwrap();
    assert_eq!((unknown.queued, unknown.delivered), (0, 0));
}

async fn a_full_queue_drops_its_oldest_events_and_counts_them(store: &dyn WebhookStore) {
    let first: Vec<_> = (0..3).map(|n| webhook_event("full", n)).collect();
    assert_eq!(store.enqueue_events(&first, 4).await.unwrap(), 0);
    let more: Vec<_> = (3..6).map(|n| webhook_event("full", n)).collect();
    assert_eq!(store.enqueue_events(&more, 4).await.unwrap(), 2);
    let left: Vec<i64> = store
        .queued_events("full", 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.created_ms)
        .collect();
    assert_eq!(left, [2, 3, 4, 5], "the oldest go first");
    let state = store.webhook_endpoint("full").await.unwrap();
    assert_eq!((state.queued, state.dropped), (4, 2));
}

async fn failures_back_off_and_given_up_events_are_counted(store: &dyn WebhookStore) {
    let events: Vec<_> = (0..2).map(|n| webhook_event("failing", n)).collect();
    store.enqueue_events(&events, 10).await.unwrap();
    assert_eq!(store.delivery_failed("failing", "503", 100, 1100).await.unwrap(), 1);
    assert_eq!(store.delivery_failed("failing", "timeout", 200, 2200).await.unwrap(), 2);
    let state = store.webhook_endpoint("failing").await.unwrap();
    assert_eq!(
        (
            state.attempts,
            state.next_attempt_ms,
            state.last_error.as_deref(),
            state.last_error_ms
        ),
        (2, 2200, Some("timeout"), Some(200))
    );
    let head = store.queued_events("failing", 1).await.unwrap();
    store.events_failed("failing", &[head[0].id]).await.unwrap();
    let state = store.webhook_endpoint("failing").await.unwrap();
    assert_eq!(
        (state.queued, state.failed, state.attempts, state.next_attempt_ms),
        (1, 1, 0, 0)
    );
    assert_eq!(
        state.last_error.as_deref(),
        Some("timeout"),
        "the last error stays visible"
    );
}

/// Runs every conformance check of the UI's store, on a store of its own
/// (the registry's totals are checked exactly).
pub async fn run_ui<S: MetaStore + AccessStore + UiStore>(store: &S) {
    registry_counts_add_up(store).await;
    summaries_count_images_and_search_literally(store).await;
    recent_and_popular_repositories_come_first(store).await;
    tag_pages_go_newest_first_and_resume_after_a_cursor(store).await;
    sessions_last_until_they_expire_or_end(store).await;
    stars_are_one_per_user_and_repository(store).await;
    pulls_are_counted_per_day(store).await;
}

async fn registry_counts_add_up<S: MetaStore + AccessStore + UiStore>(store: &S) {
    assert_eq!(store.registry_counts().await.unwrap(), RegistryCounts::default());
    let user = UserRecord {
        name: "counted".into(),
        password_hash: "$argon2id$fake".into(),
        admin: false,
        disabled: false,
        created_ms: 1,
    };
    assert!(store.create_user(&user, &audit(1)).await.unwrap());
    let (a, b) = (Digest::sha256_of(b"counts-a"), Digest::sha256_of(b"counts-b"));
    store.add_blob("counts/one", &a, 100, 1).await.unwrap();
    store.add_blob("counts/two", &b, 20, 1).await.unwrap();
    // A blob linked twice is stored once.
    store.link_blob("counts/two", &a, 1).await.unwrap();
    let m = manifest(r#"{"counts":1}"#, vec![a.clone()], vec![], None);
    store.put_manifest("counts/one", &m, Some("v1"), 2).await.unwrap();
    store.put_manifest("counts/one", &m, Some("v2"), 2).await.unwrap();
    assert_eq!(
        store.registry_counts().await.unwrap(),
        RegistryCounts {
            users: 1,
            repositories: 2,
            tags: 2,
            stored_bytes: 120,
        }
    );
}

fn names(summaries: &[RepoSummary]) -> Vec<&str> {
    summaries.iter().map(|s| s.name.as_str()).collect()
}

async fn listed<S: UiStore>(store: &S, contains: Option<&str>, after: Option<&str>, limit: u32) -> Vec<String> {
    let listing = RepoListing { contains, after, limit };
    let found = store.list_repository_summaries(&listing).await.unwrap();
    // Only this case's repositories: the store holds others' too.
    found
        .into_iter()
        .map(|s| s.name)
        .filter(|n| n.starts_with("ui"))
        .collect()
}

async fn summaries_count_images_and_search_literally<S: MetaStore + UiStore>(store: &S) {
    let image = manifest(r#"{"ui":"image"}"#, vec![], vec![], None);
    let signature = manifest(r#"{"ui":"signature"}"#, vec![], vec![], Some(image.digest.clone()));
    let attestation = manifest(r#"{"ui":"attestation"}"#, vec![], vec![], Some(image.digest.clone()));
    let repo = "ui/alpha";
    store.put_manifest(repo, &image, Some("v1"), 20).await.unwrap();
    store.put_manifest(repo, &image, Some("latest"), 21).await.unwrap();
    // Only `sha256-` exactly is a signature's tag.
    store
        .put_manifest(repo, &image, Some("SHA256-upper"), 22)
        .await
        .unwrap();
    store
        .put_manifest(repo, &signature, Some("sha256-abc.sig"), 23)
        .await
        .unwrap();
    // An attestation pushed under an ordinary tag is not an image either.
    store.put_manifest(repo, &attestation, Some("att"), 25).await.unwrap();
    store
        .record_pulls(&[PullRecord {
            repo: repo.into(),
            digest: image.digest.clone(),
            tag: Some("v1".into()),
            count: 4,
            last_ms: 30,
        }])
        .await
        .unwrap();
    store
        .record_pulls(&[PullRecord {
            repo: repo.into(),
            digest: signature.digest.clone(),
            tag: None,
            count: 1,
            last_ms: 31,
        }])
        .await
        .unwrap();
    assert_eq!(
        store.repository_summary(repo).await.unwrap(),
        Some(RepoSummary {
            name: repo.into(),
            tags: 3,
            last_pushed_ms: Some(25),
            pull_count: 5,
            last_pulled_ms: Some(31),
        })
    );
    assert_eq!(store.repository_summary("ui/none").await.unwrap(), None);

    let other = manifest(r#"{"ui":"other"}"#, vec![], vec![], None);
    for name in ["ui/Beta_1", "ui/gamma%", "ui/al_ha"] {
        store.put_manifest(name, &other, Some("v1"), 10).await.unwrap();
    }
    store
        .add_blob("ui/empty", &Digest::sha256_of(b"ui-empty"), 1, 10)
        .await
        .unwrap();
    assert_eq!(
        store.repository_summary("ui/empty").await.unwrap(),
        Some(RepoSummary {
            name: "ui/empty".into(),
            tags: 0,
            last_pushed_ms: None,
            pull_count: 0,
            last_pulled_ms: None,
        })
    );

    // Byte order: upper case before lower case, `_` between them.
    let all = ["ui/Beta_1", "ui/al_ha", "ui/alpha", "ui/empty", "ui/gamma%"];
    assert_eq!(listed(store, None, None, 100).await, all);
    assert_eq!(listed(store, Some("ui/al"), None, 100).await, ["ui/al_ha", "ui/alpha"]);
    assert_eq!(listed(store, Some("BETA"), None, 100).await, ["ui/Beta_1"]);
    assert_eq!(listed(store, Some("ALPHA"), None, 100).await, ["ui/alpha"]);
    assert_eq!(listed(store, Some("l_h"), None, 100).await, ["ui/al_ha"]);
    assert_eq!(listed(store, Some("a_"), None, 100).await, ["ui/Beta_1"]);
    assert_eq!(listed(store, Some("%"), None, 100).await, ["ui/gamma%"]);
    assert_eq!(listed(store, Some("a%"), None, 100).await, ["ui/gamma%"]);
    assert!(listed(store, Some("\\"), None, 100).await.is_empty());
    assert!(listed(store, Some("ui/%a"), None, 100).await.is_empty());

    assert_eq!(listed(store, None, Some("ui/"), 2).await, all[..2]);
    assert_eq!(listed(store, None, Some("ui/al_ha"), 2).await, all[2..4]);
    assert_eq!(listed(store, None, Some("ui/empty"), 2).await, all[4..]);
    assert_eq!(listed(store, Some("a"), Some("ui/al_ha"), 1).await, ["ui/alpha"]);
    let page = store
        .list_repository_summaries(&RepoListing {
            contains: Some("alpha"),
            after: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!((page[0].tags, page[0].pull_count), (3, 5));
}

async fn recent_and_popular_repositories_come_first<S: MetaStore + UiStore>(store: &S) {
    // Later than every other case's pushes and pulls.
    let (t, pulled) = (1_000_000, 2_000_000);
    let m = manifest(r#"{"ui":"recent"}"#, vec![], vec![], None);
    store.put_manifest("recent/a", &m, Some("v1"), t + 1).await.unwrap();
    store.put_manifest("recent/b", &m, Some("v1"), t + 3).await.unwrap();
    store.put_manifest("recent/c", &m, Some("v1"), t + 2).await.unwrap();
    // A repository's latest push counts, not its first.
    store.put_manifest("recent/a", &m, Some("v2"), t + 4).await.unwrap();
    let recent = store.recently_pushed(3).await.unwrap();
    assert_eq!(names(&recent), ["recent/a", "recent/b", "recent/c"]);
    assert_eq!(recent[0].last_pushed_ms, Some(t + 4));
    assert_eq!(names(&store.recently_pushed(1).await.unwrap()), ["recent/a"]);

    let pull = |repo: &str, count| PullRecord {
        repo: repo.into(),
        digest: m.digest.clone(),
        tag: None,
        count,
        last_ms: pulled,
    };
    store
        .record_pulls(&[
            pull("recent/a", 1_000),
            pull("recent/c", 3_000),
            pull("recent/b", 2_000),
        ])
        .await
        .unwrap();
    let popular = store.most_pulled(2).await.unwrap();
    assert_eq!(names(&popular), ["recent/c", "recent/b"]);
    assert_eq!(popular[0].pull_count, 3_000);
    assert_eq!(popular[0].last_pulled_ms, Some(pulled));
    let all = store.most_pulled(1_000).await.unwrap();
    assert!(
        all.iter().all(|s| s.pull_count > 0),
        "never-pulled repositories are left out"
    );
    assert!(!names(&all).contains(&"ui/empty"));
}

async fn tag_pages_go_newest_first_and_resume_after_a_cursor<S: MetaStore + UiStore>(store: &S) {
    let repo = "ui/tags";
    let mut image = manifest(r#"{"ui":"tags"}"#, vec![], vec![], None);
    image.platforms = vec!["linux/amd64".into(), "linux/arm64/v8".into()];
    let plain = manifest(r#"{"ui":"plain"}"#, vec![], vec![], None);
    for (tag, at) in [("a", 100), ("b", 100), ("c", 200), ("d", 50), ("e", 200)] {
        let m = if tag == "a" { &image } else { &plain };
        store.put_manifest(repo, m, Some(tag), at).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let (page, total) = store.tag_page(repo, cursor.as_ref(), 2).await.unwrap();
        assert_eq!(total, 5);
        let Some(last) = page.last() else { break };
        cursor = Some(TagCursor {
            pushed_ms: last.pushed_ms,
            name: last.name.clone(),
        });
        seen.extend(page.iter().map(|t| (t.name.clone(), t.pushed_ms)));
    }
    let expected: Vec<(String, i64)> = [("c", 200), ("e", 200), ("a", 100), ("b", 100), ("d", 50)]
        .into_iter()
        .map(|(n, at)| (n.to_string(), at))
        .collect();
    assert_eq!(seen, expected);

    let (page, _) = store
        .tag_page(
            repo,
            Some(&TagCursor {
                pushed_ms: 100,
                name: "".into(),
            }),
            1,
        )
        .await
        .unwrap();
    let a = &page[0];
    assert_eq!(
        a,
        &TagRow {
            name: "a".into(),
            digest: image.digest.clone(),
            media_type: image.media_type.clone(),
            artifact_type: None,
            subject: None,
            pushed_ms: 100,
            last_pulled_ms: None,
            pull_count: 0,
            provenance: "pushed".into(),
            pushed_by: Some("alice".into()),
            platforms: vec!["linux/amd64".into(), "linux/arm64/v8".into()],
            total_size: a.total_size,
        }
    );
    assert!(a.total_size.is_some());
    store
        .record_pulls(&[PullRecord {
            repo: repo.into(),
            digest: plain.digest.clone(),
            tag: Some("d".into()),
            count: 2,
            last_ms: 300,
        }])
        .await
        .unwrap();
    let (page, _) = store.tag_page(repo, None, 10).await.unwrap();
    let d = page.iter().find(|t| t.name == "d").unwrap();
    assert_eq!((d.pull_count, d.last_pulled_ms, d.platforms.len()), (2, Some(300), 0));
    let subject = manifest(r#"{"ui":"sig"}"#, vec![], vec![], Some(image.digest.clone()));
    store.put_manifest(repo, &subject, Some("sha256-x"), 400).await.unwrap();
    let (page, total) = store.tag_page(repo, None, 1).await.unwrap();
    assert_eq!(total, 6, "a tag page lists every tag");
    assert_eq!(page[0].subject, Some(image.digest.clone()));
    assert_eq!(page[0].artifact_type.as_deref(), Some("application/example"));
    assert_eq!(store.tag_page("ui/none", None, 10).await.unwrap(), (vec![], 0));
}

fn ui_session(id: &str, subject: &str, expires_ms: i64) -> SessionRecord {
    SessionRecord {
        id_hash: id.into(),
        subject: subject.into(),
        admin: subject.starts_with("oidc:"),
        groups_json: r#"["dev"]"#.into(),
        csrf: format!("csrf-{id}"),
        created_ms: 100,
        last_seen_ms: 100,
        expires_ms,
        user_agent: "curl/8".into(),
        addr: "192.0.2.1".into(),
    }
}

async fn sessions_last_until_they_expire_or_end<S: UiStore>(store: &S) {
    let one = ui_session("s1", "oidc:alice", 1000);
    let two = ui_session("s2", "oidc:alice", 2000);
    let three = ui_session("s3", "bob", 500);
    for s in [&one, &two, &three] {
        store.create_session(s).await.unwrap();
    }
    assert_eq!(store.session("s1", 900).await.unwrap(), Some(one.clone()));
    assert_eq!(store.session("s3", 499).await.unwrap(), Some(three.clone()));
    assert_eq!(store.session("s3", 500).await.unwrap(), None, "expired at its expiry");
    assert_eq!(store.session("s9", 0).await.unwrap(), None);

    store.touch_session("s1", 950).await.unwrap();
    store.touch_session("s1", 940).await.unwrap();
    store.touch_session("s9", 940).await.unwrap();
    let touched = store.session("s1", 960).await.unwrap().unwrap();
    assert_eq!(touched.last_seen_ms, 950, "a later use is kept over an earlier one");

    let live: Vec<String> = store
        .sessions(600)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id_hash)
        .collect();
    assert_eq!(live, ["s1", "s2"], "latest use first, expired ones left out");
    assert_eq!(store.purge_sessions(600).await.unwrap(), 1);
    assert_eq!(store.session("s3", 0).await.unwrap(), None, "purged");

    assert!(store.delete_session("s2").await.unwrap());
    assert!(!store.delete_session("s2").await.unwrap());
    store
        .create_session(&ui_session("s4", "oidc:alice", 5000))
        .await
        .unwrap();
    store.create_session(&ui_session("s5", "carol", 5000)).await.unwrap();
    assert_eq!(store.delete_sessions_of("oidc:alice").await.unwrap(), 2);
    assert_eq!(store.delete_sessions_of("oidc:alice").await.unwrap(), 0);
    let left: Vec<String> = store
        .sessions(0)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id_hash)
        .collect();
    assert_eq!(left, ["s5"]);
}

async fn stars_are_one_per_user_and_repository<S: MetaStore + UiStore>(store: &S) {
    let m = manifest(r#"{"ui":"stars"}"#, vec![], vec![], None);
    store.put_manifest("stars/b", &m, Some("v1"), 10).await.unwrap();
    store.put_manifest("stars/a", &m, Some("v1"), 10).await.unwrap();
    assert!(store.star("alice", "stars/b", 1).await.unwrap());
    assert!(store.star("alice", "stars/b", 2).await.unwrap(), "again is no change");
    assert!(store.star("bob", "stars/b", 3).await.unwrap());
    assert!(store.star("alice", "stars/a", 4).await.unwrap());
    assert!(!store.star("alice", "stars/none", 5).await.unwrap());
    assert_eq!(store.stars_of(Some("alice"), "stars/b").await.unwrap(), (true, 2));
    assert_eq!(store.stars_of(Some("carol"), "stars/b").await.unwrap(), (false, 2));
    assert_eq!(store.stars_of(None, "stars/b").await.unwrap(), (false, 2));
    assert_eq!(store.stars_of(Some("alice"), "stars/none").await.unwrap(), (false, 0));
    let starred = store.starred("alice").await.unwrap();
    assert_eq!(names(&starred), ["stars/a", "stars/b"]);
    assert_eq!(starred[0].tags, 1);
    assert!(store.starred("carol").await.unwrap().is_empty());

    assert!(store.unstar("alice", "stars/b").await.unwrap());
    assert!(!store.unstar("alice", "stars/b").await.unwrap());
    assert!(!store.unstar("alice", "stars/none").await.unwrap());
    assert_eq!(store.stars_of(Some("alice"), "stars/b").await.unwrap(), (false, 1));
    assert_eq!(names(&store.starred("alice").await.unwrap()), ["stars/a"]);
}

async fn pulls_are_counted_per_day<S: MetaStore + UiStore>(store: &S) {
    const DAY: i64 = 86_400_000;
    let repo = "ui/daily";
    let m = manifest(r#"{"ui":"daily"}"#, vec![], vec![], None);
    store.put_manifest(repo, &m, Some("v1"), 10).await.unwrap();
    let pull = |repo: &str, tag: Option<&str>, count, last_ms| PullRecord {
        repo: repo.into(),
        digest: m.digest.clone(),
        tag: tag.map(str::to_string),
        count,
        last_ms,
    };
    store
        .record_pulls(&[
            pull(repo, Some("v1"), 2, 20_000 * DAY + 5),
            pull(repo, None, 3, 20_000 * DAY + DAY - 1),
            pull(repo, None, 0, 20_001 * DAY),
            pull("ui/daily-none", None, 9, 20_001 * DAY),
        ])
        .await
        .unwrap();
    store.record_pulls(&[pull(repo, None, 4, 20_002 * DAY)]).await.unwrap();
    store
        .record_pulls(&[pull(repo, None, 1, 20_002 * DAY + 7)])
        .await
        .unwrap();
    let days = |v: Vec<DailyPulls>| v.into_iter().map(|d| (d.day, d.pulls)).collect::<Vec<_>>();
    assert_eq!(
        days(store.daily_pulls(repo, 0).await.unwrap()),
        [(20_000, 5), (20_002, 5)],
        "days without pulls left out"
    );
    assert_eq!(days(store.daily_pulls(repo, 20_001).await.unwrap()), [(20_002, 5)]);
    assert!(store.daily_pulls("ui/daily-none", 0).await.unwrap().is_empty());
    let summary = store.repository_summary(repo).await.unwrap().unwrap();
    assert_eq!(summary.pull_count, 10);
}

#[cfg(test)]
mod tests {
    /// The races on the embedded backend, where its single writer serializes them.
    #[tokio::test]
    async fn sqlite_races() {
        let dir = tempfile::tempdir().unwrap();
        let meta = crate::SqliteMeta::open(&dir.path().join("meta.db")).await.unwrap();
        super::run_races(&meta, 12).await;
    }
}
