# Shared by run.sh and migrate.sh (sourced).

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
