-- etcdsql schema v10: the server's run, for leases. A batch of lease
-- renewals commits without waiting for its WAL flush, so a crash of the
-- server can lose it. An unlogged table is emptied by crash recovery and is
-- empty on a promoted standby: a process that finds its token gone (or
-- another) gives every lease its TTL again before it expires any.
CREATE UNLOGGED TABLE etcdsql_run (
    id  SMALLINT NOT NULL PRIMARY KEY,
    run BIGINT NOT NULL
);
UPDATE etcdsql_meta SET schema_version = 10;
