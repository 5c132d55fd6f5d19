-- etcdsql schema v1 for MySQL, MariaDB (also Galera) and TiDB.
-- Keys are VARBINARY(3000): with the revision, the history index stays under
-- InnoDB's 3072-byte index limit.
CREATE TABLE IF NOT EXISTS etcdsql_meta (
    id               SMALLINT NOT NULL PRIMARY KEY,
    revision         BIGINT NOT NULL,
    compact_revision BIGINT NOT NULL,
    cluster_id       BIGINT NOT NULL,
    schema_version   INT NOT NULL
) ENGINE = InnoDB;
INSERT IGNORE INTO etcdsql_meta (id, revision, compact_revision, cluster_id, schema_version)
VALUES (1, 1, -1, FLOOR(RAND() * 9000000000000000000) + 1, 1);
CREATE TABLE IF NOT EXISTS etcdsql_live (
    name            VARBINARY(3000) NOT NULL PRIMARY KEY,
    value           LONGBLOB NOT NULL,
    create_revision BIGINT NOT NULL,
    mod_revision    BIGINT NOT NULL,
    version         BIGINT NOT NULL,
    lease           BIGINT NOT NULL,
    KEY etcdsql_live_revision (name, mod_revision),
    KEY etcdsql_live_lease (lease)
) ENGINE = InnoDB;
CREATE TABLE IF NOT EXISTS etcdsql_history (
    revision        BIGINT NOT NULL,
    sub             INT NOT NULL,
    name            VARBINARY(3000) NOT NULL,
    value           LONGBLOB NOT NULL,
    create_revision BIGINT NOT NULL,
    version         BIGINT NOT NULL,
    lease           BIGINT NOT NULL,
    deleted         SMALLINT NOT NULL,
    prev_revision   BIGINT NOT NULL,
    PRIMARY KEY (revision, sub),
    UNIQUE KEY etcdsql_history_name (name, revision)
) ENGINE = InnoDB;
CREATE TABLE IF NOT EXISTS etcdsql_lease (
    id            BIGINT NOT NULL PRIMARY KEY,
    ttl           BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    KEY etcdsql_lease_expiry (expires_at_ms)
) ENGINE = InnoDB;
