-- The PostgreSQL schema: the same tables, columns and meaning as the SQLite
-- schema after all of its migrations (migrations/sqlite/0001..0005), written
-- fresh because a PostgreSQL database has no earlier Berth releases to upgrade.
--
-- Timestamps are Unix milliseconds (BIGINT), as in SQLite, so the two backends'
-- SQL stays parallel. Every key compared or ordered as text is COLLATE "C":
-- tag and repository lists are in byte order (OCI lexical order, and SQLite's
-- BINARY), whatever locale the database was created with, and the B-tree
-- indexes serve those range scans.

CREATE TABLE repositories (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT COLLATE "C" NOT NULL UNIQUE,
    created_ms  BIGINT NOT NULL
);

-- One row per blob the store holds, whichever repositories link it.
CREATE TABLE blobs (
    digest      TEXT COLLATE "C" PRIMARY KEY,
    size        BIGINT NOT NULL,
    created_ms  BIGINT NOT NULL,
    -- Last time the blob was stored, linked, or lost a manifest that referenced it.
    touched_ms  BIGINT NOT NULL
);

-- A repository may serve a blob only through a link.
CREATE TABLE repo_blobs (
    repo_id     BIGINT NOT NULL REFERENCES repositories(id),
    digest      TEXT COLLATE "C" NOT NULL REFERENCES blobs(digest),
    linked_ms   BIGINT NOT NULL,
    PRIMARY KEY (repo_id, digest)
);
-- Who links a blob, and whether any link is recent, answered from the index.
-- With repo_id as a key column, a lookup of one link is exact whichever of
-- the two indexes the planner picks: a base layer may be linked thousands of times.
CREATE INDEX repo_blobs_by_digest ON repo_blobs (digest, repo_id) INCLUDE (linked_ms);

-- Manifests, bytes exactly as pushed, plus the facts parsed from them.
CREATE TABLE manifests (
    repo_id         BIGINT NOT NULL REFERENCES repositories(id),
    digest          TEXT COLLATE "C" NOT NULL,
    media_type      TEXT NOT NULL,
    artifact_type   TEXT,
    subject         TEXT COLLATE "C",
    -- The annotations as pushed (JSON text, returned verbatim in referrers lists).
    annotations     TEXT,
    size            BIGINT NOT NULL,
    body            BYTEA NOT NULL,
    provenance      TEXT NOT NULL DEFAULT 'pushed',
    pushed_by       TEXT,
    pushed_ms       BIGINT NOT NULL,
    last_pulled_ms  BIGINT,
    pull_count      BIGINT NOT NULL DEFAULT 0,
    -- Last time the manifest was pushed, lost a tag, or lost a parent index or subject.
    touched_ms      BIGINT NOT NULL,
    -- "os/architecture[/variant]" strings, when known.
    platforms       TEXT[],
    -- The manifest, its blobs and (for an index) its children's totals, in bytes.
    total_size      BIGINT,
    PRIMARY KEY (repo_id, digest)
);
CREATE INDEX manifests_by_subject ON manifests (repo_id, subject) WHERE subject IS NOT NULL;
-- Garbage collection walks manifests in key order asking only when each was
-- last touched; the rows themselves carry the bodies.
CREATE INDEX manifests_for_gc ON manifests (repo_id, digest) INCLUDE (touched_ms);

-- What each manifest references: blobs (config, layers) and child manifests.
CREATE TABLE manifest_refs (
    repo_id          BIGINT NOT NULL,
    manifest_digest  TEXT COLLATE "C" NOT NULL,
    child_digest     TEXT COLLATE "C" NOT NULL,
    child_kind       TEXT NOT NULL CHECK (child_kind IN ('blob', 'manifest')),
    PRIMARY KEY (repo_id, manifest_digest, child_digest),
    FOREIGN KEY (repo_id, manifest_digest) REFERENCES manifests(repo_id, digest) ON DELETE CASCADE
);
CREATE INDEX manifest_refs_by_child ON manifest_refs (child_digest, repo_id) INCLUDE (manifest_digest, child_kind);
-- Index children of a repository; most repositories have none.
CREATE INDEX manifest_refs_children ON manifest_refs (repo_id, manifest_digest, child_digest)
    WHERE child_kind = 'manifest';

CREATE TABLE tags (
    repo_id          BIGINT NOT NULL REFERENCES repositories(id),
    name             TEXT COLLATE "C" NOT NULL,
    manifest_digest  TEXT COLLATE "C" NOT NULL,
    pushed_ms        BIGINT NOT NULL,
    last_pulled_ms   BIGINT,
    pull_count       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (repo_id, name),
    FOREIGN KEY (repo_id, manifest_digest) REFERENCES manifests(repo_id, digest) ON DELETE CASCADE
);
CREATE INDEX tags_by_manifest ON tags (repo_id, manifest_digest);

-- Resumable upload sessions: bytes live in the blob store, progress here.
CREATE TABLE uploads (
    id            TEXT COLLATE "C" PRIMARY KEY,
    repo          TEXT NOT NULL,
    byte_offset   BIGINT NOT NULL,
    hash_state    BYTEA,
    started_ms    BIGINT NOT NULL,
    updated_ms    BIGINT NOT NULL
);
CREATE INDEX uploads_by_age ON uploads (updated_ms);

-- Identity and access: local users, robot tokens, role grants and the audit
-- log of every change to them.

CREATE TABLE users (
    name            TEXT COLLATE "C" PRIMARY KEY,
    -- An argon2id PHC string; never the password.
    password_hash   TEXT NOT NULL,
    admin           BOOLEAN NOT NULL DEFAULT FALSE,
    disabled        BOOLEAN NOT NULL DEFAULT FALSE,
    created_ms      BIGINT NOT NULL
);

-- Robot (CI) tokens. Only a SHA-256 of the token is kept: it is shown once.
CREATE TABLE robots (
    name            TEXT COLLATE "C" PRIMARY KEY,
    token_hash      TEXT NOT NULL UNIQUE,
    created_by      TEXT NOT NULL,
    created_ms      BIGINT NOT NULL,
    expires_ms      BIGINT,
    revoked_ms      BIGINT,
    last_used_ms    BIGINT
);

-- Role grants on repository name patterns. subject_kind is user, group or
-- robot; a robot's grants go when the robot is revoked.
CREATE TABLE grants (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject_kind    TEXT NOT NULL,
    subject         TEXT NOT NULL,
    pattern         TEXT NOT NULL,
    role            TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    created_ms      BIGINT NOT NULL,
    UNIQUE (subject_kind, subject, pattern, role)
);
CREATE INDEX grants_by_subject ON grants (subject_kind, subject);

-- Append-only: who changed access, what, and when.
CREATE TABLE audit_log (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms       BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    detail      TEXT
);

-- Retention policies by repository pattern; `**` is the global default.
CREATE TABLE retention_policies (
    pattern     TEXT COLLATE "C" PRIMARY KEY,
    -- The policy's rules as a JSON object, kept as written (the server parses it).
    rules       TEXT NOT NULL,
    -- `api` (CLI or admin API) or `config` (declared in the configuration file).
    source      TEXT NOT NULL,
    updated_by  TEXT NOT NULL,
    updated_ms  BIGINT NOT NULL
);
