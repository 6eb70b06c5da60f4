-- Identity and access: local users, robot tokens, role grants and the audit
-- log of every change to them. Timestamps are Unix milliseconds.

CREATE TABLE users (
    name            TEXT PRIMARY KEY,
    -- An argon2id PHC string; never the password.
    password_hash   TEXT NOT NULL,
    admin           BOOLEAN NOT NULL DEFAULT FALSE,
    disabled        BOOLEAN NOT NULL DEFAULT FALSE,
    created_ms      BIGINT NOT NULL
);

-- Robot (CI) tokens. Only a SHA-256 of the token is kept: it is shown once.
CREATE TABLE robots (
    name            TEXT PRIMARY KEY,
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
    id              INTEGER PRIMARY KEY,
    subject_kind    TEXT NOT NULL,
    subject         TEXT NOT NULL,
    pattern         TEXT NOT NULL,
    role            TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    created_ms      BIGINT NOT NULL,
    UNIQUE (subject_kind, subject, pattern, role)
);
CREATE INDEX grants_by_subject ON grants(subject_kind, subject);

-- Append-only: who changed access, what, and when.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY,
    at_ms       BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    detail      TEXT
);
