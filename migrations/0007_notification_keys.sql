-- megaplan-cloudd store, schema 7: notifications a person acts on (docs/notifications.md).
-- Every notification queued is recorded here by its idempotency key, in the same transaction
-- as its outbox rows: a key is queued once, ever, whatever re-reads a tick (a restart, a
-- watch state that could not be read). Kept per registration for the newest 1000 keys.
CREATE TABLE notification_keys (
    idempotency_key  TEXT PRIMARY KEY NOT NULL,
    key              TEXT NOT NULL,
    event            TEXT NOT NULL,
    created_at       TEXT NOT NULL
) STRICT;

CREATE INDEX notification_keys_key ON notification_keys (key, created_at);

-- The digest (`digest:` in notify.yaml): when the last one went out, and per registration the
-- milestone and status it reported, so the next one lists what was done since.
CREATE TABLE digest_marks (
    key         TEXT PRIMARY KEY NOT NULL,
    milestone   INTEGER NOT NULL,
    status      TEXT NOT NULL,
    marked_at   TEXT NOT NULL
) STRICT;

CREATE TABLE digest_clock (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    last_at   TEXT NOT NULL
) STRICT;
