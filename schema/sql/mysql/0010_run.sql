-- etcdsql schema v10: PostgreSQL adds an unlogged table that tells a
-- crash (its lease renewals may skip the flush). MySQL's renewals are
-- durable commits; nothing changes here.
UPDATE etcdsql_meta SET schema_version = 10;
