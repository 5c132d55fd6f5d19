#!/bin/sh
# Entrypoint of the locally built postgres:15 image. It follows the official
# image's interface as far as the suite uses it: `postgres [ARGS]` (or bare
# ARGS starting with "-"), PGDATA, POSTGRES_USER, POSTGRES_PASSWORD and
# POSTGRES_HOST_AUTH_METHOD; a fresh data directory is initialised first.
set -eu
bin=/usr/lib/postgresql/15/bin
: "${PGDATA:=/var/lib/postgresql/data}"
case "${1:-postgres}" in
  postgres) [ $# -gt 0 ] && shift ;;
  -*) ;;
  *) exec "$@" ;;
esac
install -d -o postgres -g postgres -m 0700 "$PGDATA"
install -d -o postgres -g postgres /var/run/postgresql
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
    echo "set POSTGRES_PASSWORD, or POSTGRES_HOST_AUTH_METHOD=trust" >&2
    exit 1
  fi
  pwfile=$(mktemp)
  printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
  chown postgres "$pwfile"
  runuser -u postgres -- "$bin/initdb" -D "$PGDATA" -U "${POSTGRES_USER:-postgres}" \
    --auth-local=trust --auth-host="$auth" ${POSTGRES_PASSWORD:+--pwfile="$pwfile"} >/dev/null
  rm -f "$pwfile"
  echo "host all all all $auth" >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
fi
# docker stop sends SIGTERM; PostgreSQL's fast shutdown is SIGINT (the
# official image sets STOPSIGNAL, which `docker import` cannot).
setpriv --reuid=postgres --regid=postgres --init-groups "$bin/postgres" -D "$PGDATA" "$@" &
pid=$!
trap 'kill -INT $pid' TERM INT
status=0
wait $pid || status=$?
if kill -0 $pid 2>/dev/null; then wait $pid || status=$?; fi
exit $status
