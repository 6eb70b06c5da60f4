-- Replicas serialize the writing requests of one upload session (PATCH, the
-- final PUT) with a lease: the request holding the session renews it while
-- its chunk streams in; a replica that dies stops renewing, and the session
-- is free again once `lease_until_ms` has passed.
ALTER TABLE uploads ADD COLUMN lease_token TEXT;
ALTER TABLE uploads ADD COLUMN lease_until_ms BIGINT;
