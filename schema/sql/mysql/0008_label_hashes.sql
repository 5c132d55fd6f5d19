-- etcdsql schema v8: etcdsql_label stores FNV-1a's top 63 bits (never 0 or
-- 1). Before, every hash with its top bit set was stored as 1, so nearly
-- every object had a row there and half of all selector terms took every
-- object as a candidate. label_hashes is 1 while rows hashed the old way
-- may remain: the first server to start hashes every live row's rows again
-- (selector::backfill), deletes the rows of value 1 and sets it to 2.
-- Until then selectors look for both hashes.
ALTER TABLE etcdsql_meta ADD COLUMN label_hashes SMALLINT NOT NULL DEFAULT 2;
UPDATE etcdsql_meta SET schema_version = 8,
    label_hashes = CASE WHEN EXISTS (SELECT 1 FROM etcdsql_label) THEN 1 ELSE 2 END;
