-- etcdsql schema v7 for PostgreSQL: updates of a live row change no
-- indexed column unless its labels, fields or lease change, so PostgreSQL
-- makes them heap-only (HOT): no new index entries, less WAL. The
-- (name, mod_revision) index changed on every update; counts at a past
-- revision are found from the history after it instead (sql::total).
-- Live partitions keep a fifth of each page free for the next versions of
-- its rows (partitions added later are created so, etcdsql_partitions::ddl).
-- The GIN indexes skip values that are not Kubernetes objects (NULL
-- labels and fields), which no selector term reads them for.
DROP INDEX etcdsql_live_revision;
DROP INDEX etcdsql_live_labels;
DROP INDEX etcdsql_live_fields;
CREATE INDEX etcdsql_live_labels ON etcdsql_live USING GIN (labels) WHERE labels IS NOT NULL;
CREATE INDEX etcdsql_live_fields ON etcdsql_live USING GIN (fields) WHERE fields IS NOT NULL;
DO $$
DECLARE p regclass;
BEGIN
    FOR p IN SELECT inhrelid::regclass FROM pg_inherits
             WHERE inhparent = 'etcdsql_live'::regclass LOOP
        EXECUTE format('ALTER TABLE %s SET (fillfactor = 80)', p);
    END LOOP;
END $$;
UPDATE etcdsql_meta SET schema_version = 7;
