#!/usr/bin/env bash
# An unmodified kube-apiserver on etcdsql, driven with kubectl: namespaces,
# configmaps, secrets, deployments, a CRD and its custom resources are
# created, updated, listed, watched and deleted; the apiserver log must show
# no storage errors.
#
#   KUBE_APISERVER=/path/to/kube-apiserver integration/kube/run.sh [sqlite|DSN]
#
# KUBECTL picks kubectl (default: kubectl on PATH). ETCDSQL_BIN picks the
# etcdsql binary (default: a release build made here). The argument is the
# database: "sqlite" (default) or a DSN such as postgres://…/db (the
# database must exist and be empty). Everything listens on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/../.."

. integration/kube/common.sh
begin kube "${1:-}"
fail() { echo "FAILED: $*" >&2; echo "--- apiserver log (tail)" >&2; tail -30 "$work/apiserver.log" >&2; exit 1; }

etcd_port=$(free_port)
if [ "$target" = sqlite ]; then
  endpoint_args=(--data-dir "$work/etcdsql")
else
  endpoint_args=(--endpoint "$target" --auto-migrate)
fi
"$ETCDSQL_BIN" "${endpoint_args[@]}" --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-metrics-urls "http://127.0.0.1:$(free_port)" 2> "$work/etcdsql.log" &
pids+=($!)

apiserver_setup
start_apiserver "$etcd_port" "$work/apiserver.log" || fail "kube-apiserver did not become ready"
check "kube-apiserver $("$KUBE_APISERVER" --version) ready on etcdsql ($target)"

k() { "$KUBECTL" "$@"; }

# A watch running through all of it.
k get configmaps -n etcdsql-test --watch -o name > "$work/watch.out" 2>&1 &
watch_pid=$!
pids+=($watch_pid)

k create namespace etcdsql-test >/dev/null || fail "create namespace"
check "namespace created"
sleep 1
k -n etcdsql-test create configmap app --from-literal=color=blue >/dev/null || fail "create configmap"
k -n etcdsql-test patch configmap app -p '{"data":{"color":"green"}}' >/dev/null || fail "update configmap"
[ "$(k -n etcdsql-test get configmap app -o jsonpath='{.data.color}')" = green ] || fail "read configmap"
check "configmap created, updated, read"
for i in $(seq 1 30); do k -n etcdsql-test create configmap "bulk-$i" --from-literal=i="$i" >/dev/null; done
[ "$(k -n etcdsql-test get configmaps --chunk-size=7 -o name | grep -c bulk-)" = 30 ] || fail "paged list"
# Labels for the suite's selector checks on what the apiserver stored.
k -n etcdsql-test label configmap $(seq -f 'bulk-%g' 2 2 30) parity=even >/dev/null || fail "label configmaps"
k -n etcdsql-test label configmap $(seq -f 'bulk-%g' 1 2 29) parity=odd >/dev/null || fail "label configmaps"
[ "$(k -n etcdsql-test get configmaps -l parity=even -o name | wc -l)" = 15 ] || fail "labelled configmaps"
check "30 configmaps listed in pages of 7, labelled"
k -n etcdsql-test create secret generic creds --from-literal=password=s3cret >/dev/null || fail "create secret"
[ "$(k -n etcdsql-test get secret creds -o jsonpath='{.data.password}' | base64 -d)" = s3cret ] || fail "read secret"
check "secret created and read"
k -n etcdsql-test create deployment web --image=registry.invalid/web:1 >/dev/null || fail "create deployment"
k -n etcdsql-test scale deployment web --replicas=3 >/dev/null || fail "scale deployment"
[ "$(k -n etcdsql-test get deployment web -o jsonpath='{.spec.replicas}')" = 3 ] || fail "read deployment"
k get deployments -A -o name | grep -q deployment.apps/web || fail "list deployments"
check "deployment created, scaled, listed"

write_crd "$work/crd.yaml"
k apply -f "$work/crd.yaml" >/dev/null || fail "create CRD"
k wait --for condition=established --timeout=60s crd/widgets.etcdsql.example.com >/dev/null || fail "CRD established"
for i in 1 2 3; do
  printf 'apiVersion: etcdsql.example.com/v1\nkind: Widget\nmetadata: {name: w%s, namespace: etcdsql-test, labels: {tier: t%s}}\nspec: {size: %s}\n' "$i" "$i" "$i" \
    | k apply -f - >/dev/null || fail "create widget $i"
done
k -n etcdsql-test patch widget w2 --type merge -p '{"spec":{"size":20}}' >/dev/null || fail "update widget"
[ "$(k -n etcdsql-test get widget w2 -o jsonpath='{.spec.size}')" = 20 ] || fail "read widget"
[ "$(k -n etcdsql-test get widgets -l tier=t3 -o name)" = widget.etcdsql.example.com/w3 ] || fail "label-selected list"
k -n etcdsql-test delete widget w1 >/dev/null || fail "delete widget"
[ "$(k -n etcdsql-test get widgets -o name | wc -l)" = 2 ] || fail "list widgets"
check "CRD established; custom resources created, updated, listed, deleted"

k -n etcdsql-test delete configmap app >/dev/null || fail "delete configmap"
k -n etcdsql-test delete deployment web >/dev/null || fail "delete deployment"
k -n etcdsql-test delete secret creds >/dev/null || fail "delete secret"
k -n etcdsql-test get configmap app >/dev/null 2>&1 && fail "deleted configmap still readable"
check "configmap, deployment, secret deleted"

sleep 2
kill "$watch_pid" 2>/dev/null || true
grep -q "configmap/app" "$work/watch.out" && grep -q "configmap/bulk-30" "$work/watch.out" \
  || { cat "$work/watch.out" >&2; fail "kubectl get --watch did not see the changes"; }
check "kubectl get --watch saw $(wc -l < "$work/watch.out") changes"

k delete namespace etcdsql-test --wait=false >/dev/null || fail "delete namespace"
check "namespace deletion accepted"

if storage_errors "$work/apiserver.log" >&2; then
  fail "storage errors in the kube-apiserver log"
fi
check "no storage errors in the kube-apiserver log"
echo "kube-apiserver on etcdsql ($target): $checks passed, 0 failed"
