-- etcdsql schema v9 for PostgreSQL: MySQL adds a table to flush its redo
-- log through (a commit there can be visible before it is durable).
-- PostgreSQL flushes a commit before showing it; nothing changes here.
UPDATE etcdsql_meta SET schema_version = 9;
