#!/usr/bin/env bash
# Builds the images the integration suite asks for, for machines that
# reach no image registry, from a Debian root filesystem (debootstrap) and
# Debian's packages, under the official images' names:
#   postgres:15          postgresql-15
#   mariadb:10.11        mariadb-server 10.11, galera-4, rsync and iproute2 (state transfer)
#   debian:bookworm-slim a minimal Debian (the base of etcdsql's image)
# An image that already exists (official or ours) is left alone; --force
# rebuilds. Needs root, debootstrap and a running Docker engine.
set -euo pipefail
cd "$(dirname "$0")"
images=(postgres:15 mariadb:10.11)
# The base of etcdsql's own image (examples/deploy/Dockerfile): a minimal
# Debian, as the official debian:bookworm-slim.
if [ "${1:-}" = --force ] || ! docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
  base=$(mktemp -d /var/tmp/etcdsql-base.XXXXXX)
  echo "debootstrap a minimal Debian into $base" >&2
  debootstrap --variant=minbase bookworm "$base" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" \
    >"$base.log" 2>&1 || { tail -20 "$base.log" >&2; rm -rf "$base"; exit 1; }
  rm -rf "$base.log" "$base"/var/cache/apt/archives/*.deb "$base"/var/lib/apt/lists/*
  tar -C "$base" -c . | docker import --change 'CMD ["bash"]' \
    --change 'LABEL org.etcdsql.local-image=debian-bookworm' - debian:bookworm-slim >/dev/null
  rm -rf "$base"
  echo "built debian:bookworm-slim"
fi
need=()
for img in "${images[@]}"; do
  if [ "${1:-}" = --force ] || ! docker image inspect "$img" >/dev/null 2>&1; then
    need+=("$img")
  fi
done
if [ ${#need[@]} -eq 0 ]; then
  echo "images present: ${images[*]}"
  exit 0
fi
root=$(mktemp -d /var/tmp/etcdsql-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
echo "debootstrap into $root (a few minutes)" >&2
debootstrap --variant=minbase --include=postgresql-15,mariadb-server,galera-4,rsync,iproute2,procps \
  bookworm "$root" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$root.log" 2>&1 ||
  { tail -20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# The packages made their own clusters; the entrypoints make fresh ones.
rm -rf "$root"/var/lib/postgresql/15 "$root"/etc/postgresql/15 "$root"/var/lib/mysql/* \
  "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
install -m 0755 postgres-entrypoint.sh mariadb-entrypoint.sh "$root/usr/local/bin/"
for img in "${need[@]}"; do
  case $img in
    postgres:*) changes=(--change 'ENV PGDATA=/var/lib/postgresql/data'
      --change 'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]'
      --change 'CMD ["postgres"]') ;;
    mariadb:*) changes=(--change 'ENTRYPOINT ["/usr/local/bin/mariadb-entrypoint.sh"]'
      --change 'CMD ["mariadbd"]') ;;
  esac
  tar -C "$root" -c . | docker import "${changes[@]}" \
    --change 'LABEL org.etcdsql.local-image=debian-bookworm' - "$img" >/dev/null
  echo "built $img"
done
