-- Event notifications waiting for their webhook endpoint: one row per event
-- and endpoint whose filters took it, deleted once the endpoint accepted it.
-- Each endpoint's queue is delivered in `id` order (see migrations/sqlite/0008).
CREATE TABLE webhook_queue (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint    TEXT COLLATE "C" NOT NULL,
    -- The event as the envelope's `events[]` carries it (JSON).
    body        TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);
CREATE INDEX webhook_queue_by_endpoint ON webhook_queue(endpoint, id);

-- Each endpoint's delivery state: counters since the endpoint was first
-- configured, and the back-off of the delivery that is failing now.
CREATE TABLE webhook_endpoints (
    endpoint         TEXT COLLATE "C" PRIMARY KEY,
    delivered        BIGINT NOT NULL DEFAULT 0,
    failed           BIGINT NOT NULL DEFAULT 0,
    dropped          BIGINT NOT NULL DEFAULT 0,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms  BIGINT NOT NULL DEFAULT 0,
    last_error       TEXT,
    last_error_ms    BIGINT,
    last_success_ms  BIGINT
);
