-- Secrets every replica must share, such as the token signing key when the
-- configuration gives none: the first replica to start stores its own, the
-- others read it. Anyone who can read this table can mint tokens; the
-- database's access control is what protects it.
CREATE TABLE secrets (
    name        TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);
