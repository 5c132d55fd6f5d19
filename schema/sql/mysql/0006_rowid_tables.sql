-- SQLite's tables change layout at this version (its 0006_rowid_tables.sql);
-- this database's do not.
UPDATE etcdsql_meta SET schema_version = 6;
