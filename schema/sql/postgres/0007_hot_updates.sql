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
-- Values are compressed with LZ4 rather than pglz, where the server has it
-- (PostgreSQL 14 or later, built with lz4): pglz took about a fifth of the
-- writing backend's CPU on 1-4 KiB objects, each compressed twice (live
-- and history). Partitions created later take it from their parent; rows
-- already written keep pglz, which reads as before.
DO $$
DECLARE t regclass;
BEGIN
    FOR t IN SELECT relid FROM pg_partition_tree('etcdsql_live')
             UNION ALL SELECT relid FROM pg_partition_tree('etcdsql_history') LOOP
        EXECUTE format('ALTER TABLE %s ALTER COLUMN value SET COMPRESSION lz4', t);
    END LOOP;
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'values stay compressed with pglz: %', SQLERRM;
END $$;
UPDATE etcdsql_meta SET schema_version = 7;
