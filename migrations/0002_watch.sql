-- megaplan-cloudd store, schema 2: unattended watching that tells a human
-- (docs/notifications.md). Timestamps are RFC 3339 UTC text; booleans are 0/1 integers.

-- Per-registration notification sinks given to `register --notify-url/--notify-command`.
-- `sink` is the sink as JSON ({"kind": "webhook", "url", "preset"} or {"kind": "command", ...}).
CREATE TABLE notify_sinks (
    key         TEXT NOT NULL,
    position    INTEGER NOT NULL,
    sink        TEXT NOT NULL,
    PRIMARY KEY (key, position)
) STRICT;

-- What the watcher last saw per registration (JSON, see notify::transitions::WatchState):
-- a notification goes out on a change of this state, never per tick.
CREATE TABLE watch_state (
    key         TEXT PRIMARY KEY NOT NULL,
    state       TEXT NOT NULL,
    updated_at  TEXT NOT NULL
) STRICT;

-- Durable delivery: one row per (notification, sink). Written in the same transaction as the
-- watch state, delivered by a background worker with retries; kept after delivery or failure
-- (bounded per registration) as a record.
CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    key              TEXT NOT NULL,
    event            TEXT NOT NULL,
    sink             TEXT NOT NULL,
    body             TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    status           TEXT NOT NULL,  -- pending | delivered | failed
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT NOT NULL,
    last_error       TEXT,
    finished_at      TEXT
) STRICT;

CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
CREATE INDEX outbox_key ON outbox (key, id);

-- Paused registrations (`megaplan-cloudctl pause`): observed, never mutated.
CREATE TABLE pauses (
    key         TEXT PRIMARY KEY NOT NULL,
    paused_by   TEXT NOT NULL,
    since       TEXT NOT NULL,
    reason      TEXT
) STRICT;
