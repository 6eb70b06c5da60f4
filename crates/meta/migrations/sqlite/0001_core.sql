-- Core registry facts. Timestamps are Unix milliseconds so the same SQL runs on
-- SQLite and PostgreSQL.

CREATE TABLE repositories (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_ms  BIGINT NOT NULL
);

-- One row per blob the store holds, whichever repositories link it.
CREATE TABLE blobs (
    digest      TEXT PRIMARY KEY,
    size        BIGINT NOT NULL,
    created_ms  BIGINT NOT NULL
);

-- A repository may serve a blob only through a link.
CREATE TABLE repo_blobs (
    repo_id     INTEGER NOT NULL REFERENCES repositories(id),
    digest      TEXT NOT NULL REFERENCES blobs(digest),
    linked_ms   BIGINT NOT NULL,
    PRIMARY KEY (repo_id, digest)
);
CREATE INDEX repo_blobs_by_digest ON repo_blobs(digest);

-- Manifests, bytes exactly as pushed, plus the facts parsed from them.
CREATE TABLE manifests (
    repo_id         INTEGER NOT NULL REFERENCES repositories(id),
    digest          TEXT NOT NULL,
    media_type      TEXT NOT NULL,
    artifact_type   TEXT,
    subject         TEXT,
    annotations     TEXT,
    size            BIGINT NOT NULL,
    body            BLOB NOT NULL,
    provenance      TEXT NOT NULL DEFAULT 'pushed',
    pushed_by       TEXT,
    pushed_ms       BIGINT NOT NULL,
    last_pulled_ms  BIGINT,
    pull_count      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (repo_id, digest)
);
CREATE INDEX manifests_by_subject ON manifests(repo_id, subject) WHERE subject IS NOT NULL;

-- What each manifest references: blobs (config, layers) and child manifests.
CREATE TABLE manifest_refs (
    repo_id          INTEGER NOT NULL,
    manifest_digest  TEXT NOT NULL,
    child_digest     TEXT NOT NULL,
    child_kind       TEXT NOT NULL CHECK (child_kind IN ('blob', 'manifest')),
    PRIMARY KEY (repo_id, manifest_digest, child_digest),
    FOREIGN KEY (repo_id, manifest_digest) REFERENCES manifests(repo_id, digest) ON DELETE CASCADE
);
CREATE INDEX manifest_refs_by_child ON manifest_refs(child_digest);

CREATE TABLE tags (
    repo_id          INTEGER NOT NULL REFERENCES repositories(id),
    name             TEXT NOT NULL,
    manifest_digest  TEXT NOT NULL,
    pushed_ms        BIGINT NOT NULL,
    last_pulled_ms   BIGINT,
    pull_count       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (repo_id, name),
    FOREIGN KEY (repo_id, manifest_digest) REFERENCES manifests(repo_id, digest) ON DELETE CASCADE
);
CREATE INDEX tags_by_manifest ON tags(repo_id, manifest_digest);

-- Resumable upload sessions: bytes live in the blob store, progress here.
CREATE TABLE uploads (
    id            TEXT PRIMARY KEY,
    repo          TEXT NOT NULL,
    byte_offset   BIGINT NOT NULL,
    hash_state    BLOB,
    started_ms    BIGINT NOT NULL,
    updated_ms    BIGINT NOT NULL
);
CREATE INDEX uploads_by_age ON uploads(updated_ms);
