-- Event notifications waiting for their webhook endpoint: one row per event
-- and endpoint whose filters took it, deleted once the endpoint accepted it.
-- Each endpoint's queue is delivered in `id` order; AUTOINCREMENT never hands
-- out an id again, so a later event always sorts after an earlier one, even
-- after the queue was emptied.
CREATE TABLE webhook_queue (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint    TEXT NOT NULL,
    -- The event as the envelope's `events[]` carries it (JSON).
    body        TEXT NOT NULL,
    created_ms  INTEGER NOT NULL
);
CREATE INDEX webhook_queue_by_endpoint ON webhook_queue(endpoint, id);

-- Each endpoint's delivery state: counters since the endpoint was first
-- configured, and the back-off of the delivery that is failing now.
CREATE TABLE webhook_endpoints (
    endpoint         TEXT PRIMARY KEY,
    delivered        INTEGER NOT NULL DEFAULT 0,
    failed           INTEGER NOT NULL DEFAULT 0,
    dropped          INTEGER NOT NULL DEFAULT 0,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms  INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    last_error_ms    INTEGER,
    last_success_ms  INTEGER
);
