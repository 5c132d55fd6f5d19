#!/usr/bin/env bash
# Runs etcdsql's whole test suite on this machine against real services.
# Installs what is missing (Debian packages; needs root): etcd 3.4 (the
# reference), etcdctl, protoc, openssl, Docker, debootstrap and Pgpool-II; starts the
# Docker engine; builds the images the suite asks for (databases, and the
# base of etcdsql's own image: integration/images/build.sh); then runs `cargo test --workspace` with
# every required target. The suite starts its database containers itself.
#
#   ETCDSQL_TEST_POSTGRES_URL, ETCDSQL_TEST_MYSQL_URL, ETCDSQL_TEST_GALERA_URLS,
#   ETCDSQL_TEST_COCKROACH_URL, ETCDSQL_TEST_TIDB_URL   use these servers instead
#   ETCDSQL_REQUIRE          default: etcd,sqlite,postgres,mariadb,galera,pgpool,image
#                            (plus kube_apiserver and migrate when KUBE_APISERVER is set,
#                            the PgCat and ProxySQL cases when their *_BIN is)
#   KUBE_APISERVER           a kube-apiserver binary (integration/kube/README.md)
#   PGCAT_BIN, PROXYSQL_BIN  PgCat and ProxySQL binaries (docs/compatibility.md; also found on PATH)
#   ETCDSQL_LINT=1           also cargo fmt --check and clippy
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
command -v python3 >/dev/null || need+=(python3)                # kube/run.sh
command -v dockerd >/dev/null || need+=(docker.io)              # database containers
command -v debootstrap >/dev/null || need+=(debootstrap)        # their images
[ -x /usr/sbin/pgpool ] || need+=(pgpool2)                      # the proxy-tier case
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- Docker engine and images ----------------------------------------------
docker_up() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }
if ! docker_up; then
  log "starting dockerd"
  as_root sh -c 'setsid dockerd >/var/log/etcdsql-dockerd.log 2>&1 < /dev/null &'
  for _ in $(seq 60); do docker_up && break; sleep 0.5; done
  docker_up || { log "dockerd did not start (/var/log/etcdsql-dockerd.log)"; exit 1; }
fi
# Containers left by an earlier run that was killed (the label is its pid).
for id in $(docker ps -aq --filter label=org.etcdsql.test); do
  pid=$(docker inspect -f '{{index .Config.Labels "org.etcdsql.test"}}' "$id")
  kill -0 "$pid" 2>/dev/null || docker rm -f "$id" >/dev/null
done
as_root integration/images/build.sh

req=etcd,sqlite,postgres,mariadb,galera,pgpool,image
[ -n "${KUBE_APISERVER:-}" ] && req+=,kube_apiserver,migrate
[ -n "${PGCAT_BIN:-}" ] && req+=,pgcat_session,pgcat_transaction
[ -n "${PROXYSQL_BIN:-}" ] && req+=,proxysql
export ETCDSQL_REQUIRE=${ETCDSQL_REQUIRE:-$req}
log "required: $ETCDSQL_REQUIRE"

if [ "${ETCDSQL_LINT:-}" = 1 ]; then
  log "cargo fmt --check"
  cargo fmt --all -- --check
  log "cargo clippy"
  cargo clippy --workspace --all-targets -- -D warnings
fi

log "cargo test"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
cargo test --workspace --all-targets -- "$@" 2>&1 | tee "$out" || status=$?
# One closing line for the whole run.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1); if ($(i) ~ /^ignored;?$/) s += $(i-1) } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$out"
exit "$status"
