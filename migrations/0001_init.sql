-- megaplan-cloudd store, schema 1.
-- Timestamps are RFC 3339 UTC text; booleans are 0/1 integers.

-- One row per registered cloud.yaml (key = marker key of its absolute path).
CREATE TABLE registrations (
    key            TEXT PRIMARY KEY NOT NULL,
    cloud_yaml     TEXT NOT NULL,
    schedule       TEXT NOT NULL,
    remote_spec    TEXT,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    last_tick_at   TEXT,
    last_event     TEXT,
    last_success   INTEGER,
    ticks_run      INTEGER NOT NULL DEFAULT 0,
    ticks_skipped  INTEGER NOT NULL DEFAULT 0
) STRICT;

-- Tick reports. AUTOINCREMENT: ids are never reused after retention deletes rows, so a
-- watcher's "after id N" cursor stays valid.
CREATE TABLE ticks (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    key             TEXT NOT NULL,
    cloud_yaml      TEXT NOT NULL,
    tick_trigger    TEXT NOT NULL,
    started_at      TEXT NOT NULL,
    finished_at     TEXT NOT NULL,
    duration_ms     INTEGER NOT NULL,
    success         INTEGER NOT NULL,
    event           TEXT NOT NULL,
    next_action     TEXT NOT NULL,
    acted           INTEGER NOT NULL,
    refused_reason  TEXT,
    report          TEXT NOT NULL
) STRICT;

CREATE INDEX ticks_key_id ON ticks (key, id);

-- The last `chain` marker per cloud.yaml (the legacy last_chain.json content).
CREATE TABLE markers (
    key         TEXT PRIMARY KEY NOT NULL,
    cloud_yaml  TEXT NOT NULL,
    marker      TEXT NOT NULL,
    updated_at  TEXT NOT NULL
) STRICT;

-- Lifetime counters; kept apart from `ticks` so retention does not lower them.
CREATE TABLE counters (
    name   TEXT PRIMARY KEY NOT NULL,
    value  INTEGER NOT NULL
) STRICT;

INSERT INTO counters (name, value) VALUES
    ('ticks_run', 0),
    ('ticks_failed', 0),
    ('ticks_skipped', 0);
