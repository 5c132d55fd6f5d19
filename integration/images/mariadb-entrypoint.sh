#!/bin/sh
# Entrypoint of the locally built mariadb:10.11 image. It follows the official
# image's interface as far as the suite uses it: `mariadbd [ARGS]` (or bare
# ARGS starting with "-"), MARIADB_ALLOW_EMPTY_ROOT_PASSWORD or
# MARIADB_ROOT_PASSWORD; a fresh data directory is initialised first. Galera
# (galera-4) and rsync, for state transfers, are in the image.
set -eu
case "${1:-mariadbd}" in
  mariadbd | mysqld) [ $# -gt 0 ] && shift ;;
  -*) ;;
  *) exec "$@" ;;
esac
datadir=/var/lib/mysql
install -d -o mysql -g mysql /run/mysqld "$datadir"
if [ ! -d "$datadir/mysql" ]; then
  if [ -z "${MARIADB_ROOT_PASSWORD:-}" ] && [ -z "${MARIADB_ALLOW_EMPTY_ROOT_PASSWORD:-}" ]; then
    echo "set MARIADB_ROOT_PASSWORD or MARIADB_ALLOW_EMPTY_ROOT_PASSWORD" >&2
    exit 1
  fi
  mariadb-install-db --user=mysql --datadir="$datadir" --skip-test-db \
    --auth-root-authentication-method=normal >/dev/null
  pw=$(printf '%s' "${MARIADB_ROOT_PASSWORD:-}" | sed "s/'/''/g")
  mariadbd --user=mysql --datadir="$datadir" --bootstrap --skip-networking <<SQL
FLUSH PRIVILEGES;
ALTER USER root@localhost IDENTIFIED BY '$pw';
CREATE USER root@'%' IDENTIFIED BY '$pw';
GRANT ALL ON *.* TO root@'%' WITH GRANT OPTION;
SQL
fi
exec mariadbd --user=mysql "$@"
