#!/usr/bin/env bash
# Runs etcdsql's whole test suite on this machine against real services:
# installs what is missing (Debian packages; needs root), starts PostgreSQL
# and MariaDB if they are down, points the suite at them, and runs
# `cargo test --workspace` with every backend required.
#
#   ETCDSQL_TEST_POSTGRES_URL / ETCDSQL_TEST_MYSQL_URL   use other servers
#   ETCDSQL_REQUIRE                                       default: all targets
#   ETCDSQL_LINT=1                                        also fmt and clippy
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '== %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

# --- packages -------------------------------------------------------------
need=()
command -v protoc >/dev/null || need+=(protobuf-compiler)      # etcd-client's build
command -v etcd >/dev/null || need+=(etcd-server)               # the reference
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v openssl >/dev/null || need+=(openssl)                # TLS test certificates
if [ -z "${ETCDSQL_TEST_POSTGRES_URL:-}" ]; then
  command -v pg_ctlcluster >/dev/null || need+=(postgresql)
fi
if [ -z "${ETCDSQL_TEST_MYSQL_URL:-}" ]; then
  command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
fi
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- PostgreSQL -------------------------------------------------------------
pg_ok() { psql "$1" -qAtc 'select 1' >/dev/null 2>&1; }
if [ -z "${ETCDSQL_TEST_POSTGRES_URL:-}" ]; then
  url=postgres://postgres@127.0.0.1:5432/postgres
  if ! pg_ok "$url"; then
    ver=$(ls /etc/postgresql | sort -n | tail -1)
    if ! pg_lsclusters -h | grep -q online; then
      log "starting PostgreSQL $ver"
      as_root pg_ctlcluster --skip-systemctl-redirect "$ver" main start
    fi
    for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 && break; sleep 0.2; done
  fi
  if ! pg_ok "$url"; then
    # A fresh Debian cluster refuses passwordless TCP logins: give the
    # postgres role a password for the tests (over the local socket).
    log "setting a test password for the postgres role"
    as_root su postgres -c "psql -qc \"ALTER ROLE postgres PASSWORD 'etcdsql-test'\"" >/dev/null
    url=postgres://postgres:etcdsql-test@127.0.0.1:5432/postgres
  fi
  pg_ok "$url" || { log "PostgreSQL at 127.0.0.1:5432 is not usable"; exit 1; }
  export ETCDSQL_TEST_POSTGRES_URL=$url
fi

# --- MariaDB ----------------------------------------------------------------
my_ok() { mariadb "$@" -h 127.0.0.1 -P 3306 -e 'select 1' >/dev/null 2>&1; }
if [ -z "${ETCDSQL_TEST_MYSQL_URL:-}" ]; then
  if ! my_ok -uroot && ! my_ok -uetcdsql_test -petcdsql-test; then
    if ! mariadb-admin ping >/dev/null 2>&1; then
      log "starting MariaDB"
      as_root install -d -o mysql -g mysql /run/mysqld
      as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
      for _ in $(seq 100); do mariadb-admin ping >/dev/null 2>&1 && break; sleep 0.2; done
    fi
  fi
  if my_ok -uroot; then
    export ETCDSQL_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/mysql
  else
    # Debian's root logs in through the socket only: make a test user.
    my_ok -uetcdsql_test -petcdsql-test || as_root mariadb -e "
      CREATE USER IF NOT EXISTS 'etcdsql_test'@'127.0.0.1' IDENTIFIED BY 'etcdsql-test';
      GRANT ALL ON *.* TO 'etcdsql_test'@'127.0.0.1'"
    my_ok -uetcdsql_test -petcdsql-test || { log "MariaDB at 127.0.0.1:3306 is not usable"; exit 1; }
    export ETCDSQL_TEST_MYSQL_URL=mysql://etcdsql_test:etcdsql-test@127.0.0.1:3306/mysql
  fi
fi

export ETCDSQL_REQUIRE=${ETCDSQL_REQUIRE:-etcd,sqlite,postgres,mariadb}
log "postgres: ${ETCDSQL_TEST_POSTGRES_URL%%@*}@…  mysql: ${ETCDSQL_TEST_MYSQL_URL%%@*}@…  required: $ETCDSQL_REQUIRE"

if [ "${ETCDSQL_LINT:-}" = 1 ]; then
  log "cargo fmt --check"
  cargo fmt --all -- --check
  log "cargo clippy"
  cargo clippy --workspace --all-targets -- -D warnings
fi

# A real kube-apiserver, where one is given (KUBE_APISERVER); see
# integration/kube/README.md. It runs after the suite.
kube=${KUBE_APISERVER:-}

log "cargo test"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
cargo test --workspace --all-targets -- "$@" 2>&1 | tee "$out" || status=$?
if [ "$status" -eq 0 ]; then
  if [ -n "$kube" ]; then
    for db in sqlite "${ETCDSQL_TEST_POSTGRES_URL%/*}/etcdsql_kube_$$"; do
      if [ "$db" != sqlite ]; then
        psql "$ETCDSQL_TEST_POSTGRES_URL" -qc "CREATE DATABASE etcdsql_kube_$$" || status=1
      fi
      KUBE_APISERVER=$kube ETCDSQL_BIN=target/debug/etcdsql integration/kube/run.sh "$db" 2>&1 | grep -E '^(ok|FAILED)|passed|failed' | tee -a "$out" || status=1
      if [ "$db" != sqlite ]; then
        psql "$ETCDSQL_TEST_POSTGRES_URL" -qc "DROP DATABASE IF EXISTS etcdsql_kube_$$ WITH (FORCE)" || true
      fi
    done
    grep -q "^FAILED" "$out" && status=1
  else
    echo "skipped: kube-apiserver on etcdsql: KUBE_APISERVER is not set"
  fi
fi
# One closing line for the whole run.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1); if ($(i) ~ /^ignored;?$/) s += $(i-1) } }
     /^kube-apiserver on etcdsql/ { p += $(NF-3); f += $(NF-1) }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$out"
exit "$status"
