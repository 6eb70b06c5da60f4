-- What the web UI keeps, and the indexes its pages read through.

-- Browser sessions. Only a SHA-256 of the cookie's secret is kept, so a copy
-- of the database signs nobody in.
CREATE TABLE ui_sessions (
    id_hash       TEXT PRIMARY KEY,
    subject       TEXT NOT NULL,
    -- What the identity provider said at sign-in (OIDC subjects have no user
    -- row to check again): administrator, and the groups as a JSON array.
    admin         BOOLEAN NOT NULL DEFAULT FALSE,
    groups_json   TEXT NOT NULL,
    csrf          TEXT NOT NULL,
    created_ms    BIGINT NOT NULL,
    last_seen_ms  BIGINT NOT NULL,
    expires_ms    BIGINT NOT NULL,
    user_agent    TEXT NOT NULL,
    addr          TEXT NOT NULL
);
-- Signing a user out everywhere, and purging expired sessions.
CREATE INDEX ui_sessions_by_subject ON ui_sessions(subject);
CREATE INDEX ui_sessions_by_expiry ON ui_sessions(expires_ms);

-- Repositories users starred. Repositories are never deleted today; the
-- cascade keeps it so if they ever are.
CREATE TABLE stars (
    user_name   TEXT NOT NULL,
    repo_id     INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    created_ms  BIGINT NOT NULL,
    PRIMARY KEY (user_name, repo_id)
) WITHOUT ROWID;
-- How many users starred a repository.
CREATE INDEX stars_by_repo ON stars(repo_id);

-- Pulls per repository and day (days since 1970-01-01 UTC), for the
-- repository page's graph; record_pulls adds to it.
CREATE TABLE daily_pulls (
    repo_id  INTEGER NOT NULL REFERENCES repositories(id) ON DELETE CASCADE,
    day      BIGINT NOT NULL,
    pulls    BIGINT NOT NULL,
    PRIMARY KEY (repo_id, day)
) WITHOUT ROWID;

-- A repository page lists tags newest push first (ties in name order) and
-- pages on (pushed_ms, name); the list of repositories shows each one's
-- latest push, which is the first entry of its range here.
CREATE INDEX tags_by_push ON tags(repo_id, pushed_ms DESC, name);

-- A repository's pulls are the sum over its manifests: read from this index
-- alone instead of manifest rows that carry their bodies, and only over the
-- manifests ever pulled.
CREATE INDEX manifests_pulled ON manifests(repo_id, pull_count, last_pulled_ms) WHERE pull_count > 0;
