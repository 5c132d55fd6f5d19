-- etcd's auth store, shared by every etcdsql on the database: users and
-- roles as etcd's authUsers and authRoles buckets hold them (authpb.User,
-- authpb.Role), simple tokens, and whether auth is on with its revision.
CREATE TABLE etcdsql_auth_user (
    name BYTEA PRIMARY KEY,
    data BYTEA NOT NULL
);
CREATE TABLE etcdsql_auth_role (
    name BYTEA PRIMARY KEY,
    data BYTEA NOT NULL
);
CREATE TABLE etcdsql_auth_token (
    token       BYTEA PRIMARY KEY,
    name        BYTEA NOT NULL,
    revision    BIGINT NOT NULL,
    expires_ms  BIGINT NOT NULL
);
ALTER TABLE etcdsql_meta ADD COLUMN auth_enabled SMALLINT NOT NULL DEFAULT 0,
    ADD COLUMN auth_revision BIGINT NOT NULL DEFAULT 1;
UPDATE etcdsql_meta SET schema_version = 5;
