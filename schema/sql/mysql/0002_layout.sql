-- etcdsql schema v2 for MySQL, MariaDB (also Galera) and TiDB: live and
-- history natively partitioned, in DDL all three accept (no subpartitions,
-- which TiDB lacks). live: LIST COLUMNS (part); part is '' (the default
-- partition) or the identifier of a resource listed in etcdsql_partition.
-- history: RANGE (epoch); compaction drops whole epochs (epoch 0 keeps the
-- versions a dropped epoch still had to answer for). The value column comes
-- last, after the columns every read needs.
ALTER TABLE etcdsql_meta ADD COLUMN partitions_version BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN epoch BIGINT NOT NULL DEFAULT 1;
UPDATE etcdsql_meta SET schema_version = 2;
-- Resources with partitions of their own; state 0 while their rows move out
-- of the default partition, 1 once they have.
CREATE TABLE etcdsql_partition (
    resource VARCHAR(320) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    part     VARCHAR(60) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    state    SMALLINT NOT NULL,
    UNIQUE KEY etcdsql_partition_part (part)
) ENGINE = InnoDB;
-- History epochs; last_revision is set when the next epoch begins.
CREATE TABLE etcdsql_epoch (
    epoch         BIGINT NOT NULL PRIMARY KEY,
    last_revision BIGINT NULL
) ENGINE = InnoDB;
INSERT INTO etcdsql_epoch (epoch, last_revision) VALUES (0, NULL), (1, NULL);

CREATE TABLE etcdsql_live_v2 (
    name            VARBINARY(3000) NOT NULL,
    part            VARCHAR(60) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    create_revision BIGINT NOT NULL,
    mod_revision    BIGINT NOT NULL,
    version         BIGINT NOT NULL,
    lease           BIGINT NOT NULL,
    value           LONGBLOB NOT NULL,
    PRIMARY KEY (name, part),
    KEY etcdsql_live_revision (name, mod_revision),
    KEY etcdsql_live_lease (lease)
) ENGINE = InnoDB
PARTITION BY LIST COLUMNS (part) (PARTITION p_default VALUES IN (''));
INSERT INTO etcdsql_live_v2 (name, part, create_revision, mod_revision, version, lease, value)
SELECT name, '', create_revision, mod_revision, version, lease, value FROM etcdsql_live;
DROP TABLE etcdsql_live;
RENAME TABLE etcdsql_live_v2 TO etcdsql_live;

CREATE TABLE etcdsql_history_v2 (
    revision        BIGINT NOT NULL,
    sub             INT NOT NULL,
    epoch           BIGINT NOT NULL,
    name            VARBINARY(3000) NOT NULL,
    create_revision BIGINT NOT NULL,
    version         BIGINT NOT NULL,
    lease           BIGINT NOT NULL,
    deleted         SMALLINT NOT NULL,
    prev_revision   BIGINT NOT NULL,
    value           LONGBLOB NOT NULL,
    PRIMARY KEY (revision, sub, epoch),
    UNIQUE KEY etcdsql_history_name (name, revision, epoch)
) ENGINE = InnoDB
PARTITION BY RANGE (epoch) (PARTITION e0 VALUES LESS THAN (1), PARTITION e1 VALUES LESS THAN (2));
INSERT INTO etcdsql_history_v2 (revision, sub, epoch, name, create_revision, version, lease,
    deleted, prev_revision, value)
SELECT revision, sub, 1, name, create_revision, version, lease, deleted, prev_revision, value
FROM etcdsql_history;
DROP TABLE etcdsql_history;
RENAME TABLE etcdsql_history_v2 TO etcdsql_history;
