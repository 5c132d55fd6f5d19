-- etcdsql_live and etcdsql_history become rowid tables, their keys unique
-- indexes, with the value last. In a WITHOUT ROWID table a row is its
-- key's index entry: a value past about 1 KiB overflows, and every key
-- comparison on the way to a row read the whole row, overflow pages too.
-- That was a third of the committer's time on 1 KiB values.
CREATE TABLE etcdsql_live_v6 (
    name            BLOB NOT NULL PRIMARY KEY,
    create_revision INTEGER NOT NULL,
    mod_revision    INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    lease           INTEGER NOT NULL,
    labels          TEXT,
    fields          TEXT,
    value           BLOB NOT NULL
);
INSERT INTO etcdsql_live_v6 (name, create_revision, mod_revision, version, lease, labels,
    fields, value)
SELECT name, create_revision, mod_revision, version, lease, labels, fields, value
FROM etcdsql_live ORDER BY name;
DROP TABLE etcdsql_live;
ALTER TABLE etcdsql_live_v6 RENAME TO etcdsql_live;
CREATE INDEX etcdsql_live_revision ON etcdsql_live (name, mod_revision);
CREATE INDEX etcdsql_live_lease ON etcdsql_live (lease) WHERE lease <> 0;

CREATE TABLE etcdsql_history_v6 (
    revision        INTEGER NOT NULL,
    sub             INTEGER NOT NULL,
    name            BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    lease           INTEGER NOT NULL,
    deleted         INTEGER NOT NULL,
    prev_revision   INTEGER NOT NULL,
    batch           INTEGER,
    labels          TEXT,
    fields          TEXT,
    value           BLOB NOT NULL,
    PRIMARY KEY (revision, sub)
);
INSERT INTO etcdsql_history_v6 (revision, sub, name, create_revision, version, lease, deleted,
    prev_revision, batch, labels, fields, value)
SELECT revision, sub, name, create_revision, version, lease, deleted, prev_revision, batch,
    labels, fields, value
FROM etcdsql_history ORDER BY revision, sub;
DROP TABLE etcdsql_history;
ALTER TABLE etcdsql_history_v6 RENAME TO etcdsql_history;
CREATE UNIQUE INDEX etcdsql_history_name ON etcdsql_history (name, revision);
UPDATE etcdsql_meta SET schema_version = 6;
