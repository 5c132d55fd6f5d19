-- etcdsql schema v1 for SQLite (the embedded default).
CREATE TABLE IF NOT EXISTS etcdsql_meta (
    id               INTEGER PRIMARY KEY,
    revision         INTEGER NOT NULL,
    compact_revision INTEGER NOT NULL,
    cluster_id       INTEGER NOT NULL,
    schema_version   INTEGER NOT NULL
);
INSERT OR IGNORE INTO etcdsql_meta (id, revision, compact_revision, cluster_id, schema_version)
VALUES (1, 1, -1, abs(random() % 9000000000000000000) + 1, 1);
CREATE TABLE IF NOT EXISTS etcdsql_live (
    name            BLOB PRIMARY KEY,
    value           BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision    INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    lease           INTEGER NOT NULL
) WITHOUT ROWID;
-- Counts and past-revision reads of a range read names and revisions only.
CREATE INDEX IF NOT EXISTS etcdsql_live_revision ON etcdsql_live (name, mod_revision);
CREATE INDEX IF NOT EXISTS etcdsql_live_lease ON etcdsql_live (lease) WHERE lease <> 0;
CREATE TABLE IF NOT EXISTS etcdsql_history (
    revision        INTEGER NOT NULL,
    sub             INTEGER NOT NULL,
    name            BLOB NOT NULL,
    value           BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    lease           INTEGER NOT NULL,
    deleted         INTEGER NOT NULL,
    prev_revision   INTEGER NOT NULL,
    PRIMARY KEY (revision, sub)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS etcdsql_history_name ON etcdsql_history (name, revision);
CREATE TABLE IF NOT EXISTS etcdsql_lease (
    id            INTEGER PRIMARY KEY,
    ttl           INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS etcdsql_lease_expiry ON etcdsql_lease (expires_at_ms);
