-- Managed bearer tokens. Only a keyed hash (HMAC-SHA256 under the server's pepper) and a
-- short public prefix of each token are stored; timestamps are Unix seconds.
CREATE TABLE tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    public_prefix TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    tenant TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    last_used_at BIGINT,
    superseded_by TEXT
);

-- A name belongs to one live token; a rotated or revoked token frees it.
CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked_at IS NULL AND superseded_by IS NULL;
