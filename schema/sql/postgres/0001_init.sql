-- etcdsql schema v1 for PostgreSQL (and CockroachDB).
CREATE TABLE IF NOT EXISTS etcdsql_meta (
    id               SMALLINT PRIMARY KEY,
    revision         BIGINT NOT NULL,
    compact_revision BIGINT NOT NULL,
    cluster_id       BIGINT NOT NULL,
    schema_version   INTEGER NOT NULL
);
INSERT INTO etcdsql_meta (id, revision, compact_revision, cluster_id, schema_version)
VALUES (1, 1, -1, floor(random() * 9000000000000000000)::BIGINT + 1, 1)
ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS etcdsql_live (
    name            BYTEA PRIMARY KEY,
    value           BYTEA NOT NULL,
    create_revision BIGINT NOT NULL,
    mod_revision    BIGINT NOT NULL,
    version         BIGINT NOT NULL,
    lease           BIGINT NOT NULL
);
-- Counts and past-revision reads of a range read names and revisions only.
CREATE INDEX IF NOT EXISTS etcdsql_live_revision ON etcdsql_live (name, mod_revision);
CREATE INDEX IF NOT EXISTS etcdsql_live_lease ON etcdsql_live (lease) WHERE lease <> 0;
CREATE TABLE IF NOT EXISTS etcdsql_history (
    revision        BIGINT NOT NULL,
    sub             INTEGER NOT NULL,
    name            BYTEA NOT NULL,
    value           BYTEA NOT NULL,
    create_revision BIGINT NOT NULL,
    version         BIGINT NOT NULL,
    lease           BIGINT NOT NULL,
    deleted         SMALLINT NOT NULL,
    prev_revision   BIGINT NOT NULL,
    PRIMARY KEY (revision, sub)
);
CREATE UNIQUE INDEX IF NOT EXISTS etcdsql_history_name ON etcdsql_history (name, revision);
CREATE TABLE IF NOT EXISTS etcdsql_lease (
    id            BIGINT PRIMARY KEY,
    ttl           BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS etcdsql_lease_expiry ON etcdsql_lease (expires_at_ms);
