-- The referrers API pages in digest order: with the digest in the index, a
-- page is a range scan that starts after the previous page's last digest and
-- stops after `n` rows, however many referrers the subject has.
DROP INDEX manifests_by_subject;
CREATE INDEX manifests_by_subject ON manifests(repo_id, subject, digest) WHERE subject IS NOT NULL;
