-- megaplan-cloudd store, schema 5: fencing tokens (docs/operations.md "Fencing").
-- The token this daemon last knew the runner to hold for a registration's chain, and who held
-- it. It only ever grows (runner/fence.rs; Store::raise_fence_token keeps the larger value):
-- a tick offers it to the runner's launch gate, which accepts only when the runner still
-- holds exactly this token.
CREATE TABLE fencing (
    key         TEXT PRIMARY KEY NOT NULL,
    token       INTEGER NOT NULL CHECK (token >= 0),
    holder      TEXT,
    updated_at  TEXT NOT NULL
) STRICT;

-- Launches the runner's gate refused (a stale token, a live driver) or a preflight stopped.
-- Kept per key up to the tick retention (Store::record_gate_refusal trims).
CREATE TABLE gate_refusals (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    key         TEXT NOT NULL,
    at          TEXT NOT NULL,
    source      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    offered     INTEGER,
    held        INTEGER,
    holder      TEXT,
    message     TEXT NOT NULL
) STRICT;

CREATE INDEX gate_refusals_key_id ON gate_refusals (key, id);
