-- etcdsql schema v7: PostgreSQL and SQLite drop the (name, mod_revision)
-- index at this version. InnoDB keeps it: its rows are clustered with
-- their values, so counting a range's names reads this index instead.
UPDATE etcdsql_meta SET schema_version = 7;
