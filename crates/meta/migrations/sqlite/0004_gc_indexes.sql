-- Garbage collection walks blobs and links in key order and asks, for each,
-- whether anything references or recently linked it: covering indexes answer
-- that without a table lookup per row.
CREATE INDEX blobs_for_gc ON blobs(digest, touched_ms, size);
CREATE INDEX repo_blobs_for_gc ON repo_blobs(repo_id, digest, linked_ms);
DROP INDEX repo_blobs_by_digest;
CREATE INDEX repo_blobs_by_digest ON repo_blobs(digest, linked_ms);
DROP INDEX manifest_refs_by_child;
CREATE INDEX manifest_refs_by_child ON manifest_refs(child_digest, repo_id, manifest_digest, child_kind);
CREATE INDEX manifests_for_gc ON manifests(repo_id, digest, touched_ms);
