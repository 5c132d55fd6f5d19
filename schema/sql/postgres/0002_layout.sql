-- etcdsql schema v2 for PostgreSQL: live and history natively partitioned.
-- live: LIST (part); part is '' (the default partition) or the identifier
-- of a resource listed in etcdsql_partition. history: RANGE (epoch), each
-- epoch LIST (part) the same way; compaction drops whole epochs (epoch 0
-- keeps the versions a dropped epoch still had to answer for). The value
-- column comes last, after the columns every read needs.
ALTER TABLE etcdsql_meta ADD COLUMN partitions_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE etcdsql_meta ADD COLUMN epoch BIGINT NOT NULL DEFAULT 1;
UPDATE etcdsql_meta SET schema_version = 2;
-- Resources with partitions of their own; state 0 while their rows move out
-- of the default partitions, 1 once they have.
CREATE TABLE etcdsql_partition (
    resource TEXT PRIMARY KEY,
    part     TEXT NOT NULL UNIQUE,
    state    SMALLINT NOT NULL
);
-- History epochs; last_revision is set when the next epoch begins.
CREATE TABLE etcdsql_epoch (
    epoch         BIGINT PRIMARY KEY,
    last_revision BIGINT
);
INSERT INTO etcdsql_epoch (epoch, last_revision) VALUES (0, NULL), (1, NULL);

ALTER TABLE etcdsql_live RENAME TO etcdsql_live_v1;
ALTER INDEX etcdsql_live_pkey RENAME TO etcdsql_live_v1_pkey;
ALTER INDEX etcdsql_live_revision RENAME TO etcdsql_live_v1_revision;
ALTER INDEX etcdsql_live_lease RENAME TO etcdsql_live_v1_lease;
CREATE TABLE etcdsql_live (
    name            BYTEA NOT NULL,
    part            TEXT NOT NULL,
    create_revision BIGINT NOT NULL,
    mod_revision    BIGINT NOT NULL,
    version         BIGINT NOT NULL,
    lease           BIGINT NOT NULL,
    value           BYTEA NOT NULL,
    PRIMARY KEY (name, part)
) PARTITION BY LIST (part);
-- The CHECK lets a new partition be created without scanning this one.
CREATE TABLE etcdsql_live_default PARTITION OF etcdsql_live
    (CONSTRAINT etcdsql_live_default_part CHECK (part = '')) DEFAULT;
CREATE INDEX etcdsql_live_revision ON etcdsql_live (name, mod_revision);
CREATE INDEX etcdsql_live_lease ON etcdsql_live (lease) WHERE lease <> 0;
INSERT INTO etcdsql_live (name, part, create_revision, mod_revision, version, lease, value)
SELECT name, '', create_revision, mod_revision, version, lease, value FROM etcdsql_live_v1;
DROP TABLE etcdsql_live_v1;

ALTER TABLE etcdsql_history RENAME TO etcdsql_history_v1;
ALTER INDEX etcdsql_history_pkey RENAME TO etcdsql_history_v1_pkey;
ALTER INDEX etcdsql_history_name RENAME TO etcdsql_history_v1_name;
CREATE TABLE etcdsql_history (
    revision        BIGINT NOT NULL,
    sub             INTEGER NOT NULL,
    epoch           BIGINT NOT NULL,
    part            TEXT NOT NULL,
    name            BYTEA NOT NULL,
    create_revision BIGINT NOT NULL,
    version         BIGINT NOT NULL,
    lease           BIGINT NOT NULL,
    deleted         SMALLINT NOT NULL,
    prev_revision   BIGINT NOT NULL,
    value           BYTEA NOT NULL,
    PRIMARY KEY (revision, sub, epoch, part)
) PARTITION BY RANGE (epoch);
CREATE UNIQUE INDEX etcdsql_history_name ON etcdsql_history (name, revision, epoch, part);
CREATE TABLE etcdsql_history_e0 PARTITION OF etcdsql_history
    FOR VALUES FROM (0) TO (1) PARTITION BY LIST (part);
CREATE TABLE etcdsql_history_e0_default PARTITION OF etcdsql_history_e0
    (CONSTRAINT etcdsql_history_e0_default_part CHECK (part = '')) DEFAULT;
CREATE TABLE etcdsql_history_e1 PARTITION OF etcdsql_history
    FOR VALUES FROM (1) TO (2) PARTITION BY LIST (part);
CREATE TABLE etcdsql_history_e1_default PARTITION OF etcdsql_history_e1
    (CONSTRAINT etcdsql_history_e1_default_part CHECK (part = '')) DEFAULT;
INSERT INTO etcdsql_history (revision, sub, epoch, part, name, create_revision, version, lease,
    deleted, prev_revision, value)
SELECT revision, sub, 1, '', name, create_revision, version, lease, deleted, prev_revision, value
FROM etcdsql_history_v1;
DROP TABLE etcdsql_history_v1;
