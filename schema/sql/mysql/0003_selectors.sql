-- etcdsql schema v3 for MySQL/MariaDB/TiDB: labels and selectable fields of
-- each Kubernetes object, extracted when it is written, as JSON objects of
-- strings; NULL where the value is not a readable Kubernetes object.
-- Selectors read them with JSON_EXTRACT inside the key range (no index:
-- MariaDB has no multi-valued indexes).
ALTER TABLE etcdsql_live ADD COLUMN labels JSON NULL, ADD COLUMN fields JSON NULL;
-- batch: the writing batch's nonce: tells whether a batch whose COMMIT lost
-- its connection committed, even when another process wrote an identical row.
ALTER TABLE etcdsql_history ADD COLUMN labels JSON NULL, ADD COLUMN fields JSON NULL,
    ADD COLUMN batch BIGINT NULL;
UPDATE etcdsql_meta SET schema_version = 3;
