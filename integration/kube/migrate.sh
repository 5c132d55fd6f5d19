#!/usr/bin/env bash
# A kube-apiserver moved from etcd 3.4 to etcdsql and back (docs/migration.md):
# the apiserver writes namespaces, configmaps, a secret, a deployment, a CRD
# and its objects on etcd; it is stopped, etcd snapshotted, the snapshot
# imported; on etcdsql the same apiserver lists every object with the same
# resourceVersion, a watch from the pre-migration resourceVersion resumes,
# writes continue, and examples/deploy's manifests pass
# `kubectl apply --dry-run=server`. Then `etcdsql export`, `etcdctl snapshot
# restore`, and the apiserver on etcd again lists what it had on etcdsql.
#
#   KUBE_APISERVER=/path/to/kube-apiserver integration/kube/migrate.sh [sqlite|DSN]
#
# Needs etcd and etcdctl (3.4) on PATH. KUBECTL and ETCDSQL_BIN as in run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

. integration/kube/common.sh
begin migrate "${1:-}"
fail() {
  echo "FAILED: $*" >&2
  for f in "$work"/apiserver-*.log; do echo "--- $f (tail)" >&2; tail -20 "$f" >&2; done
  exit 1
}
# Stops a process started here and waits for it.
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

if [ "$target" = sqlite ]; then
  store_args=(--data-dir "$work/etcdsql")
else
  store_args=(--endpoint "$target")
fi

etcd_on() { # data-dir name; sets store_port and store_pid
  store_port=$(free_port)
  local peer="http://127.0.0.1:$(free_port)"
  etcd --name "$2" --data-dir "$1" \
    --listen-client-urls "http://127.0.0.1:$store_port" --advertise-client-urls "http://127.0.0.1:$store_port" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" --initial-cluster "$2=$peer" \
    > "$work/etcd-$2.log" 2>&1 &
  store_pid=$!
  pids+=("$store_pid")
  wait_etcd_api "$store_port" || fail "etcd ($2) did not start"
}

etcdsql_on() { # sets store_port and store_pid
  store_port=$(free_port)
  "$ETCDSQL_BIN" "${store_args[@]}" --listen-client-urls "http://127.0.0.1:$store_port" \
    --listen-metrics-urls "http://127.0.0.1:$(free_port)" 2>> "$work/etcdsql.log" &
  store_pid=$!
  pids+=("$store_pid")
  wait_etcd_api "$store_port" || { cat "$work/etcdsql.log" >&2; fail "etcdsql did not start"; }
}

# One set of credentials, certificates and flags for every apiserver start.
apiserver_setup
k() { "$KUBECTL" "$@" 2>> "$work/kubectl.err"; }

apiserver_on() { # label [flags]; sets api_pid
  local label=$1
  shift
  start_apiserver "$store_port" "$work/apiserver-$label.log" "$@" \
    || fail "kube-apiserver on $label did not become ready"
}

# Every object of the kinds written here: namespace/name resourceVersion.
inventory() {
  local kind
  for kind in namespaces configmaps secrets deployments.apps customresourcedefinitions widgets.etcdsql.example.com; do
    k get "$kind" -A -o jsonpath='{range .items[*]}{.kind} {.metadata.namespace}/{.metadata.name} {.metadata.resourceVersion}{"\n"}{end}' \
      || fail "listing $kind"
  done | sort
}

# 1. A cluster on etcd 3.4.
etcd_on "$work/etcd" source
apiserver_on etcd
check "kube-apiserver $("$KUBE_APISERVER" --version) ready on etcd $(etcd --version | head -1 | awk '{print $3}')"
k create namespace mig >/dev/null || fail "create namespace"
for i in $(seq 1 20); do k -n mig create configmap "cm-$i" --from-literal=i="$i" >/dev/null || fail "configmap $i"; done
k -n mig patch configmap cm-3 -p '{"data":{"i":"three"}}' >/dev/null || fail "update configmap"
k -n mig delete configmap cm-4 >/dev/null || fail "delete configmap"
k -n mig create secret generic creds --from-literal=password=s3cret >/dev/null || fail "create secret"
k -n mig create deployment web --image=registry.invalid/web:1 >/dev/null || fail "create deployment"
k -n mig scale deployment web --replicas=2 >/dev/null || fail "scale deployment"
write_crd "$work/crd.yaml"
k apply -f "$work/crd.yaml" >/dev/null || fail "create CRD"
k wait --for condition=established --timeout=60s crd/widgets.etcdsql.example.com >/dev/null || fail "CRD established"
for i in 1 2 3; do
  printf 'apiVersion: etcdsql.example.com/v1\nkind: Widget\nmetadata: {name: w%s, namespace: mig, labels: {tier: t%s}}\nspec: {size: %s}\n' "$i" "$i" "$i" \
    | k apply -f - >/dev/null || fail "create widget $i"
done
inventory > "$work/on-etcd.txt"
cm_rv=$(k get --raw /api/v1/namespaces/mig/configmaps | python3 -c 'import json,sys; print(json.load(sys.stdin)["metadata"]["resourceVersion"])')
[ -n "$cm_rv" ] || fail "no list resourceVersion"
[ "$(grep -c '^ConfigMap mig/' "$work/on-etcd.txt")" = 19 ] && [ "$(grep -c '^Widget ' "$work/on-etcd.txt")" = 3 ] \
  || { cat "$work/on-etcd.txt" >&2; fail "objects on etcd"; }
check "$(wc -l < "$work/on-etcd.txt") objects on etcd (19 configmaps, a secret, a deployment, a CRD, 3 widgets, namespaces)"

# 2. Stop the apiserver, snapshot, import.
stop "$api_pid"
ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$store_port" snapshot save "$work/etcd.db" > "$work/save.log" 2>&1 \
  || { cat "$work/save.log" >&2; fail "snapshot save"; }
stop "$store_pid"
"$ETCDSQL_BIN" import "${store_args[@]}" --snapshot "$work/etcd.db" 2> "$work/import.log" \
  || { cat "$work/import.log" >&2; fail "etcdsql import"; }
check "snapshot imported: $(grep -o 'imported.*' "$work/import.log" | tail -1)"

# 3. The same apiserver on etcdsql. Without its watch cache, so that a
# watch reads etcdsql from the given revision (a fresh cache starts at the
# current revision and answers older ones 410 Gone, on etcd too; clients
# then relist once).
etcdsql_on
apiserver_on etcdsql --watch-cache=false
inventory > "$work/on-etcdsql.txt"
diff "$work/on-etcd.txt" "$work/on-etcdsql.txt" >&2 || fail "objects or resourceVersions differ after the import"
check "kube-apiserver on etcdsql lists the same $(wc -l < "$work/on-etcdsql.txt") objects with the same resourceVersions"

# A watch from the list's resourceVersion taken on etcd resumes: it gets
# what happens next, not 410 Gone (the history came across).
curl -skN -H "Authorization: Bearer etcdsql-kube-token" \
  "https://127.0.0.1:$api_port/api/v1/namespaces/mig/configmaps?watch=1&resourceVersion=$cm_rv&timeoutSeconds=15" > "$work/watch.out" &
watch_pid=$!
pids+=("$watch_pid")
sleep 1
k -n mig create configmap after-move --from-literal=i=new >/dev/null || fail "create after the move"
k -n mig patch configmap cm-5 -p '{"data":{"i":"five"}}' >/dev/null || fail "update after the move"
for _ in $(seq 50); do
  grep -q '"name":"cm-5"' "$work/watch.out" 2>/dev/null && break
  sleep 0.2
done
stop "$watch_pid"
grep -q '"type":"ADDED".*"name":"after-move"' "$work/watch.out" && grep -q '"type":"MODIFIED".*"name":"cm-5"' "$work/watch.out" \
  || { cat "$work/watch.out" >&2; fail "the watch from resourceVersion $cm_rv did not resume"; }
grep -q '"code":410\|Expired' "$work/watch.out" && fail "the watch from resourceVersion $cm_rv expired"
new_rv=$(k -n mig get configmap after-move -o jsonpath='{.metadata.resourceVersion}')
[ "$new_rv" -gt "$cm_rv" ] || fail "resourceVersion $new_rv after the move is not above $cm_rv"
check "a watch from resourceVersion $cm_rv (taken on etcd) resumed: ADDED and MODIFIED seen; new writes at $new_rv"

# The deployment manifests, checked by the apiserver without being stored.
manifest=examples/deploy/kubernetes/etcdsql.yaml
if ! k api-versions | grep -qx policy/v1; then
  # PodDisruptionBudget is policy/v1 from Kubernetes 1.21; older servers
  # serve the same fields as policy/v1beta1.
  sed 's#^apiVersion: policy/v1$#apiVersion: policy/v1beta1#' "$manifest" > "$work/manifest.yaml"
  manifest=$work/manifest.yaml
fi
: > "$work/kubectl.err"
out=$(k apply --dry-run=server -f "$manifest") || { cat "$work/kubectl.err" >&2; fail "kubectl apply --dry-run=server"; }
echo "$out" | grep -q "(server dry run)" || fail "no server dry run: $out"
[ "$(echo "$out" | wc -l)" = "$(grep -c '^kind:' "$manifest")" ] || fail "dry run: $out"
k -n kube-system get deployment etcdsql >/dev/null 2>&1 && fail "the dry run stored a deployment"
check "examples/deploy manifests accepted by kubectl apply --dry-run=server ($(echo "$out" | wc -l) objects), none stored"
inventory > "$work/after.txt"

# 4. And back: export, restore into etcd, the apiserver on etcd again.
stop "$api_pid"
stop "$store_pid"
"$ETCDSQL_BIN" export "${store_args[@]}" --output "$work/back.db" 2> "$work/export.log" \
  || { cat "$work/export.log" >&2; fail "etcdsql export"; }
peer="http://127.0.0.1:$(free_port)"
ETCDCTL_API=3 etcdctl snapshot restore "$work/back.db" --data-dir "$work/etcd-back" --name back \
  --initial-cluster "back=$peer" --initial-advertise-peer-urls "$peer" > "$work/restore.log" 2>&1 \
  || { cat "$work/restore.log" >&2; fail "etcdctl snapshot restore"; }
etcd_on "$work/etcd-back" back
apiserver_on etcd-back
inventory > "$work/back.txt"
diff "$work/after.txt" "$work/back.txt" >&2 || fail "objects or resourceVersions differ after the way back"
[ "$(k -n mig get configmap cm-5 -o jsonpath='{.data.i}')" = five ] || fail "cm-5 after the way back"
check "exported and restored into etcd: the apiserver lists the same $(wc -l < "$work/back.txt") objects and resourceVersions"

for log in "$work"/apiserver-*.log; do
  if storage_errors "$log" >&2; then
    fail "storage errors in $(basename "$log")"
  fi
done
check "no storage errors in the apiserver logs"
echo "kube-apiserver moved etcd → etcdsql → etcd ($target): $checks passed, 0 failed"
