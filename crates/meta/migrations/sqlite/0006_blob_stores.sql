-- Storage routes: which named blob stores hold a copy of each blob, and which
-- store holds each upload session's bytes.
--
-- `blobs.stores` lists the store names comma-separated; NULL means the
-- default store alone. Adding a nullable column rewrites no row, and a blob
-- of the default store (every blob of a registry without routes) costs one
-- header byte instead of a stored string, so the rows garbage collection
-- walks stay as small as they were.
ALTER TABLE blobs ADD COLUMN stores TEXT;

-- Fixed when the session starts, so a route changed meanwhile does not move
-- an upload in flight.
ALTER TABLE uploads ADD COLUMN store TEXT NOT NULL DEFAULT 'default';
