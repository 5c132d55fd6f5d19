-- etcdsql schema v9: a row to commit when a read must be made durable.
-- Without a binary log, InnoDB shows a commit to other sessions before its
-- redo log is flushed, and a crash can take it back. A server that read
-- such a revision commits a change here first: redo is flushed in order,
-- so that flush covers every commit the read saw.
CREATE TABLE IF NOT EXISTS etcdsql_sync (
    id SMALLINT NOT NULL PRIMARY KEY,
    n  BIGINT NOT NULL
) ENGINE = InnoDB;
INSERT IGNORE INTO etcdsql_sync (id, n) VALUES (1, 0);
UPDATE etcdsql_meta SET schema_version = 9;
