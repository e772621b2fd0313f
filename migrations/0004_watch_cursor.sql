-- megaplan-cloudd store, schema 4.
-- The watcher (daemon/src/notify/mod.rs) reads stored ticks in id order after the tick has
-- answered, so a tick never waits for it; this row is how far it has read. It is advanced in
-- the same transaction as the watch states and outbox rows those ticks caused, so a crash or a
-- restart neither loses a transition nor sends one twice. Ticks stored before this schema were
-- watched by the version that stored them: the cursor starts after them.
CREATE TABLE watch_cursor (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    last_tick_id  INTEGER NOT NULL
) STRICT;

INSERT INTO watch_cursor (id, last_tick_id) VALUES (1, COALESCE((SELECT MAX(id) FROM ticks), 0));
