-- etcdsql schema v3 for MySQL/MariaDB/TiDB: labels and selectable fields of
-- each Kubernetes object, extracted when it is written, as JSON objects of
-- strings; NULL where the value is not a readable Kubernetes object.
-- batch: the writing batch's nonce: tells whether a batch whose COMMIT lost
-- its connection committed, even when another process wrote an identical row.
ALTER TABLE etcdsql_live ADD COLUMN labels JSON NULL, ADD COLUMN fields JSON NULL;
ALTER TABLE etcdsql_history ADD COLUMN labels JSON NULL, ADD COLUMN fields JSON NULL,
    ADD COLUMN batch BIGINT NULL;
-- The index for selectors (MariaDB has no multi-valued JSON indexes): one
-- row per live key and hash of a (label, value), a label's presence, or a
-- (field, value); hash 0 marks a value that is not a readable object. A
-- selector's positive terms find candidates here; the JSON columns decide.
CREATE TABLE etcdsql_label (
    h    BIGINT NOT NULL,
    name VARBINARY(3000) NOT NULL,
    PRIMARY KEY (h, name),
    KEY etcdsql_label_name (name)
) ENGINE = InnoDB;
-- 1 once every live row has its selector columns: rows written before this
-- version are indexed by the first server to start (selector::backfill).
ALTER TABLE etcdsql_meta ADD COLUMN selectors_indexed SMALLINT NOT NULL DEFAULT 0;
UPDATE etcdsql_meta SET schema_version = 3,
    selectors_indexed = CASE WHEN EXISTS (SELECT 1 FROM etcdsql_live) THEN 0 ELSE 1 END;
