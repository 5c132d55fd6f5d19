-- etcdsql schema v7 for SQLite: the (name, mod_revision) index changed on
-- every write; counts at a past revision are found from the history after
-- it instead (sql::total), and the key's own index covers the rest.
DROP INDEX etcdsql_live_revision;
UPDATE etcdsql_meta SET schema_version = 7;
