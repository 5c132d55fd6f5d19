# Shared by run.sh and migrate.sh (sourced).

# Both scripts' start. Checks KUBE_APISERVER; sets KUBECTL, target (the
# database argument $2, default sqlite), work (a temporary directory named
# after $1, removed on exit, when the processes in pids are stopped) and
# ETCDSQL_BIN (a release build made here unless given).
begin() {
  if [ -z "${KUBE_APISERVER:-}" ]; then
    echo "KUBE_APISERVER is not set: give the path of a kube-apiserver binary (see integration/kube/README.md)." >&2
    exit 2
  fi
  KUBECTL=${KUBECTL:-kubectl}
  target=${2:-sqlite}
  work=$(mktemp -d "/tmp/etcdsql-$1.XXXXXX")
  pids=()
  trap cleanup EXIT
  checks=0
  if [ -z "${ETCDSQL_BIN:-}" ]; then
    cargo build --release -q -p etcdsql
    ETCDSQL_BIN=target/release/etcdsql
  fi
}
# Stops the processes in pids: SIGTERM, then SIGKILL to any still running
# after 20 s (kube-apiserver 1.36 can outlive its store's stop).
cleanup() {
  local p alive
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 100); do
    alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
check() { checks=$((checks + 1)); echo "ok $checks - $*"; }

# Waits up to 20 s for the etcd API on 127.0.0.1:$1; fails (returns 1) if
# it never answers.
wait_etcd_api() {
  for _ in $(seq 100); do
    ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$1" endpoint health >/dev/null 2>&1 && return
    sleep 0.2
  done
  return 1
}

# The apiserver's credentials in $work (a service-account key and a static
# admin token), its port (api_port) and a kubeconfig for it (KUBECONFIG).
apiserver_setup() {
  openssl genrsa -out "$work/sa.key" 2048 2>/dev/null
  echo "etcdsql-kube-token,admin,admin,system:masters" > "$work/tokens.csv"
  api_port=$(free_port)
  export KUBECONFIG="$work/kubeconfig"
  "$KUBECTL" config set-cluster etcdsql --server "https://127.0.0.1:$api_port" --insecure-skip-tls-verify=true >/dev/null
  "$KUBECTL" config set-credentials admin --token etcdsql-kube-token >/dev/null
  "$KUBECTL" config set-context etcdsql --cluster etcdsql --user admin >/dev/null
  "$KUBECTL" config use-context etcdsql >/dev/null
}

# Starts kube-apiserver on the etcd API at 127.0.0.1:$1, logging to $2, with
# any further arguments as more flags, and waits up to 120 s until it is
# ready (returns 1 if it never is). Sets api_pid (also in pids).
start_apiserver() {
  local store=$1 log=$2
  shift 2
  "$KUBE_APISERVER" "$@" \
    --etcd-servers "http://127.0.0.1:$store" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --cert-dir "$work/certs" \
    --token-auth-file "$work/tokens.csv" --authorization-mode AlwaysAllow \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$work/sa.key" --service-account-signing-key-file "$work/sa.key" \
    --service-cluster-ip-range 10.96.0.0/24 \
    > "$log" 2>&1 &
  api_pid=$!
  pids+=("$api_pid")
  for _ in $(seq 120); do
    "$KUBECTL" get --raw /readyz >/dev/null 2>&1 && return
    sleep 1
  done
  return 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Writes the widgets.etcdsql.example.com CRD to $1.
write_crd() {
  cat > "$1" <<'YAML'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.etcdsql.example.com
spec:
  group: etcdsql.example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
YAML
}

# Prints the storage errors in apiserver log $1; succeeds if there is one.
# On a fresh store the apiserver's lease reconciler first removes a master
# lease that was never written; it logs that as a StorageError on etcd 3.4
# too, so it is not counted.
storage_errors() {
  grep -iE "etcdserver:|rpc error|storage.*(error|failed)|failed to (list|watch|get).*etcd|compaction.*fail" "$1" \
    | grep -v "Unable to remove old endpoints from kubernetes service: StorageError: key not found, Code: 1, Key: /registry/masterleases/"
}
