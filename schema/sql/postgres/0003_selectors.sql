-- etcdsql schema v3 for PostgreSQL: labels and selectable fields of each
-- Kubernetes object, extracted when it is written, as JSONB objects of
-- strings; NULL where the value is not a readable Kubernetes object.
-- GIN (jsonb_ops) answers label =, in, exists and field = by containment
-- (@>) and key existence (?); the partitioned index covers every partition.
ALTER TABLE etcdsql_live ADD COLUMN labels JSONB, ADD COLUMN fields JSONB;
ALTER TABLE etcdsql_history ADD COLUMN labels JSONB, ADD COLUMN fields JSONB;
-- The writing batch's nonce: tells whether a batch whose COMMIT lost its
-- connection committed, even when another process wrote an identical row.
ALTER TABLE etcdsql_history ADD COLUMN batch BIGINT;
CREATE INDEX etcdsql_live_labels ON etcdsql_live USING GIN (labels);
CREATE INDEX etcdsql_live_fields ON etcdsql_live USING GIN (fields);
-- Rows with NULL labels match every selector: this lets the planner OR
-- them with the GIN scans instead of reading the whole range.
CREATE INDEX etcdsql_live_unreadable ON etcdsql_live (name) WHERE labels IS NULL;
-- 1 once every live row has its selector columns: rows written before this
-- version are indexed by the first server to start (selector::backfill).
ALTER TABLE etcdsql_meta ADD COLUMN selectors_indexed SMALLINT NOT NULL DEFAULT 0;
UPDATE etcdsql_meta SET schema_version = 3,
    selectors_indexed = CASE WHEN EXISTS (SELECT 1 FROM etcdsql_live) THEN 0 ELSE 1 END;
