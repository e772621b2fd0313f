-- megaplan-cloudd store, schema 6: the crash-loop quarantine (issue 24 item 4).
-- Each restart the supervisor applied, so the next one can back off and a driver that dies
-- right after each restart is quarantined (supervisor/quarantine.rs). Rows older than the
-- quarantine window are pruned when a restart is recorded.
-- One row per restart: (key, at) is the key, so no separate index (and no rowid) is needed.
CREATE TABLE restarts (
    key  TEXT NOT NULL,
    at   TEXT NOT NULL,
    PRIMARY KEY (key, at)
) STRICT, WITHOUT ROWID;

-- A quarantined registration: no restart or advance until a person clears it
-- (`megaplan-cloudctl unquarantine`, or `resume`). `log_tail` is the redacted end of the
-- driver log when it was quarantined, one JSON array of lines.
CREATE TABLE quarantines (
    key       TEXT PRIMARY KEY,
    since     TEXT NOT NULL,
    restarts  INTEGER NOT NULL,
    reason    TEXT NOT NULL,
    log_tail  TEXT NOT NULL
) STRICT, WITHOUT ROWID;
