-- etcd's alarms (Maintenance.Alarm), shared by every etcdsql on the
-- database: one row per raised (member, alarm type).
CREATE TABLE etcdsql_alarm (
    member_id BIGINT NOT NULL,
    alarm     INTEGER NOT NULL,
    PRIMARY KEY (member_id, alarm)
) ENGINE = InnoDB;
UPDATE etcdsql_meta SET schema_version = 4;
