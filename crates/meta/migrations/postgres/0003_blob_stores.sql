-- Storage routes: which named blob stores hold a copy of each blob, and which
-- store holds each upload session's bytes.
--
-- `blobs.stores` lists the store names comma-separated; NULL means the
-- default store alone, so a registry without routes stores nothing more per
-- blob. Both columns are added without rewriting the tables.
ALTER TABLE blobs ADD COLUMN stores TEXT;

-- Fixed when the session starts, so a route changed meanwhile does not move
-- an upload in flight (to whichever replica continues it).
ALTER TABLE uploads ADD COLUMN store TEXT NOT NULL DEFAULT 'default';
