-- Who started an upload session (a token subject), so that the sessions
-- an identity holds open can be counted against limits.uploads_per_identity.
ALTER TABLE uploads ADD COLUMN owner TEXT;
CREATE INDEX uploads_by_owner ON uploads (owner) WHERE owner IS NOT NULL;
