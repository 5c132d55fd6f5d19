-- etcdsql schema v10: PostgreSQL adds an unlogged table that tells a
-- crash (its lease renewals may skip the flush). SQLite's renewals outlive
-- the process, and a machine's crash restarts every process, which gives
-- every lease its TTL again; nothing changes here.
UPDATE etcdsql_meta SET schema_version = 10;
