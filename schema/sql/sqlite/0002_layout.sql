-- etcdsql schema v2 for SQLite. SQLite has no native partitions: the
-- partition plan is a documented no-op here (etcdsql_partition stays empty,
-- one epoch). The value column moves last, so reads of the other columns do
-- not walk a large value's overflow pages.
ALTER TABLE etcdsql_meta ADD COLUMN partitions_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE etcdsql_meta ADD COLUMN epoch INTEGER NOT NULL DEFAULT 1;
UPDATE etcdsql_meta SET schema_version = 2;
CREATE TABLE etcdsql_partition (
    resource TEXT PRIMARY KEY,
    part     TEXT NOT NULL UNIQUE,
    state    INTEGER NOT NULL
);
CREATE TABLE etcdsql_epoch (
    epoch         INTEGER PRIMARY KEY,
    last_revision INTEGER
);
INSERT INTO etcdsql_epoch (epoch, last_revision) VALUES (0, NULL), (1, NULL);

CREATE TABLE etcdsql_live_v2 (
    name            BLOB PRIMARY KEY,
    create_revision INTEGER NOT NULL,
    mod_revision    INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    lease           INTEGER NOT NULL,
    value           BLOB NOT NULL
) WITHOUT ROWID;
INSERT INTO etcdsql_live_v2 (name, create_revision, mod_revision, version, lease, value)
SELECT name, create_revision, mod_revision, version, lease, value FROM etcdsql_live;
DROP TABLE etcdsql_live;
ALTER TABLE etcdsql_live_v2 RENAME TO etcdsql_live;
CREATE INDEX etcdsql_live_revision ON etcdsql_live (name, mod_revision);
CREATE INDEX etcdsql_live_lease ON etcdsql_live (lease) WHERE lease <> 0;

CREATE TABLE etcdsql_history_v2 (
    revision        INTEGER NOT NULL,
    sub             INTEGER NOT NULL,
    name            BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    lease           INTEGER NOT NULL,
    deleted         INTEGER NOT NULL,
    prev_revision   INTEGER NOT NULL,
    value           BLOB NOT NULL,
    PRIMARY KEY (revision, sub)
) WITHOUT ROWID;
INSERT INTO etcdsql_history_v2 (revision, sub, name, create_revision, version, lease, deleted,
    prev_revision, value)
SELECT revision, sub, name, create_revision, version, lease, deleted, prev_revision, value
FROM etcdsql_history;
DROP TABLE etcdsql_history;
ALTER TABLE etcdsql_history_v2 RENAME TO etcdsql_history;
CREATE UNIQUE INDEX etcdsql_history_name ON etcdsql_history (name, revision);
