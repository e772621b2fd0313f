-- megaplan-cloudd store, schema 3.
-- The due time a scheduled tick was fired for (RFC 3339 UTC text); NULL for manual and cli
-- ticks and for rows written before this column existed.
ALTER TABLE ticks ADD COLUMN due_at TEXT;
