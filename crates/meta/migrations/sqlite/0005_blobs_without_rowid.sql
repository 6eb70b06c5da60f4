-- Keep each blob row and each link row in its key's B-tree (WITHOUT ROWID).
-- As rowid tables, every blob the garbage collector removed rewrote pages of
-- four B-trees in orders unrelated to the digest (the table in push order plus
-- its indexes), and a 500-blob transaction appended about 1,900 WAL frames;
-- keyed by digest it appends about 460. The covering indexes of 0004 on these
-- two tables become the tables themselves.
--
-- Migrations run inside a transaction with foreign keys enforced, so the
-- child (repo_blobs) is copied aside and dropped before its parent is
-- rebuilt; nothing else references blobs.

CREATE TEMP TABLE repo_blobs_copy AS SELECT repo_id, digest, linked_ms FROM repo_blobs;
DROP TABLE repo_blobs;

CREATE TABLE blobs_rebuilt (
    digest      TEXT PRIMARY KEY,
    size        BIGINT NOT NULL,
    created_ms  BIGINT NOT NULL,
    -- Last time the blob was stored, linked, or lost a manifest that referenced it.
    touched_ms  BIGINT NOT NULL DEFAULT 0
) WITHOUT ROWID;
INSERT INTO blobs_rebuilt (digest, size, created_ms, touched_ms)
    SELECT digest, size, created_ms, touched_ms FROM blobs ORDER BY digest;
DROP TABLE blobs;
ALTER TABLE blobs_rebuilt RENAME TO blobs;

-- A repository may serve a blob only through a link.
CREATE TABLE repo_blobs (
    repo_id     INTEGER NOT NULL REFERENCES repositories(id),
    digest      TEXT NOT NULL REFERENCES blobs(digest),
    linked_ms   BIGINT NOT NULL,
    PRIMARY KEY (repo_id, digest)
) WITHOUT ROWID;
INSERT INTO repo_blobs (repo_id, digest, linked_ms)
    SELECT repo_id, digest, linked_ms FROM temp.repo_blobs_copy ORDER BY repo_id, digest;
DROP TABLE temp.repo_blobs_copy;
CREATE INDEX repo_blobs_by_digest ON repo_blobs(digest, linked_ms);

-- The preview looks up each repository's index children; most repositories
-- have none, and without this it walks all their references to find out.
CREATE INDEX manifest_refs_children ON manifest_refs(repo_id, manifest_digest, child_digest)
    WHERE child_kind = 'manifest';
