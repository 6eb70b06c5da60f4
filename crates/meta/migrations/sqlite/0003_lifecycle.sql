-- Lifecycle: when things stopped being used (the garbage collector's grace
-- period counts from there), what an image is made of (for the inventory),
-- and the retention policies.

-- Last time the blob was stored, linked, or lost a manifest that referenced it.
ALTER TABLE blobs ADD COLUMN touched_ms BIGINT NOT NULL DEFAULT 0;
UPDATE blobs SET touched_ms = created_ms;

-- Last time the manifest was pushed, lost a tag, or lost a parent index or subject.
ALTER TABLE manifests ADD COLUMN touched_ms BIGINT NOT NULL DEFAULT 0;
UPDATE manifests SET touched_ms = pushed_ms;

-- JSON array of "os/architecture[/variant]" strings, when known.
ALTER TABLE manifests ADD COLUMN platforms TEXT;
-- The manifest, its blobs and (for an index) its children's totals, in bytes.
ALTER TABLE manifests ADD COLUMN total_size BIGINT;

-- Retention policies by repository pattern; `**` is the global default.
CREATE TABLE retention_policies (
    pattern     TEXT PRIMARY KEY,
    -- The policy's rules as a JSON object.
    rules       TEXT NOT NULL,
    -- `api` (CLI or admin API) or `config` (declared in the configuration file).
    source      TEXT NOT NULL,
    updated_by  TEXT NOT NULL,
    updated_ms  BIGINT NOT NULL
);
