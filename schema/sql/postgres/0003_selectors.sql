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
UPDATE etcdsql_meta SET schema_version = 3;
