-- etcdsql schema v3 for SQLite: labels and selectable fields of each
-- Kubernetes object, extracted when it is written, as JSON text; NULL where
-- the value is not a readable Kubernetes object.
ALTER TABLE etcdsql_live ADD COLUMN labels TEXT;
ALTER TABLE etcdsql_live ADD COLUMN fields TEXT;
ALTER TABLE etcdsql_history ADD COLUMN labels TEXT;
ALTER TABLE etcdsql_history ADD COLUMN fields TEXT;
-- The writing batch's nonce (see the PostgreSQL migration).
ALTER TABLE etcdsql_history ADD COLUMN batch INTEGER;
-- The index for selectors: one row per live key and hash of a (label,
-- value), a label's presence, or a (field, value); hash 0 marks a value
-- that is not a readable object. Positive terms find candidates here; the
-- JSON columns decide.
CREATE TABLE etcdsql_label (
    h    INTEGER NOT NULL,
    name BLOB NOT NULL,
    PRIMARY KEY (h, name)
) WITHOUT ROWID;
CREATE INDEX etcdsql_label_name ON etcdsql_label (name);
-- 1 once every live row has its selector columns: rows written before this
-- version are indexed by the first server to start (selector::backfill).
ALTER TABLE etcdsql_meta ADD COLUMN selectors_indexed SMALLINT NOT NULL DEFAULT 0;
UPDATE etcdsql_meta SET schema_version = 3,
    selectors_indexed = CASE WHEN EXISTS (SELECT 1 FROM etcdsql_live) THEN 0 ELSE 1 END;
