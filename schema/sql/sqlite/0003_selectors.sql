-- etcdsql schema v3 for SQLite: labels and selectable fields of each
-- Kubernetes object, extracted when it is written, as JSON text; NULL where
-- the value is not a readable Kubernetes object.
ALTER TABLE etcdsql_live ADD COLUMN labels TEXT;
ALTER TABLE etcdsql_live ADD COLUMN fields TEXT;
ALTER TABLE etcdsql_history ADD COLUMN labels TEXT;
ALTER TABLE etcdsql_history ADD COLUMN fields TEXT;
-- The writing batch's nonce (see the PostgreSQL migration).
ALTER TABLE etcdsql_history ADD COLUMN batch INTEGER;
UPDATE etcdsql_meta SET schema_version = 3;
