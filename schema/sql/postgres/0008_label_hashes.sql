-- etcdsql schema v8 for PostgreSQL: MySQL and SQLite hash their selector
-- table's rows again at this version; PostgreSQL has no such table (GIN
-- indexes), so its flag starts done.
ALTER TABLE etcdsql_meta ADD COLUMN label_hashes SMALLINT NOT NULL DEFAULT 2;
UPDATE etcdsql_meta SET schema_version = 8;
