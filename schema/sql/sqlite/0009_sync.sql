-- etcdsql schema v9 for SQLite: MySQL adds a table to flush its redo log
-- through (a commit there can be visible before it is durable). SQLite
-- syncs its write-ahead log before showing a commit; nothing changes here.
UPDATE etcdsql_meta SET schema_version = 9;
