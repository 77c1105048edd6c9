#!/usr/bin/env bash
# Models on the local real node the way users' weights reach pods: a local
# PersistentVolume on the node (a directory of this machine) holding model
# directories, pre-bound to a PersistentVolumeClaim. An LLMDeployment with
# `modelCache.persistentVolumeClaim: CLAIM` sees them at /cache/models/<name>.
#
# Usage: hack/model-volume.sh create NAMESPACE CLAIM NAME=MODEL_DIR...
#        hack/model-volume.sh delete NAMESPACE CLAIM
#
# The PersistentVolume is named <namespace>-<claim>; its directory is
# $LAMINA_CACHE/volumes/<namespace>-<claim>. Uses KUBECONFIG and kubectl from PATH
# (eval "$(hack/cluster.sh env)").
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${LAMINA_CACHE:-$HOME/.cache/lamina}"
node=lamina-node
storage_class=lamina-local

log_tag=model-volume
# shellcheck source=hack/lib.sh
source "$here/lib.sh"

create() {
	local ns="$1" claim="$2" pv="$1-$2" dir="$cache/volumes/$1-$2" pair name src
	shift 2
	(($#)) || die "give at least one NAME=MODEL_DIR"
	rm -rf "$dir"
	mkdir -p "$dir/models"
	for pair in "$@"; do
		name="${pair%%=*}" src="${pair#*=}"
		[[ -d $src ]] || die "$src is not a directory"
		cp -r "$src" "$dir/models/$name"
	done
	# The server runs as a non-root user and writes its caches beside the models.
	chmod -R a+rwX "$dir"
	kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: $pv, labels: {lamina.dev/model-volume: "true"}}
spec:
  capacity: {storage: 2Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: $storage_class
  claimRef: {namespace: $ns, name: $claim}
  local: {path: $dir}
  nodeAffinity:
    required:
      nodeSelectorTerms:
      - matchExpressions:
        - {key: kubernetes.io/hostname, operator: In, values: [$node]}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: $claim, namespace: $ns}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: $storage_class
  volumeName: $pv
  resources: {requests: {storage: 2Gi}}
EOF
	kubectl -n "$ns" wait --for=jsonpath='{.status.phase}'=Bound "pvc/$claim" --timeout=60s >/dev/null
	echo "$pv"
}

delete() {
	local ns="$1" claim="$2"
	kubectl -n "$ns" delete pvc "$claim" --ignore-not-found --wait=false >/dev/null
	kubectl delete pv "$ns-$claim" --ignore-not-found --wait=false >/dev/null
	rm -rf "${cache:?}/volumes/$ns-$claim"
}

case "${1:-}" in
create)
	shift
	(($# >= 3)) || die "usage: model-volume.sh create NAMESPACE CLAIM NAME=MODEL_DIR..."
	create "$@"
	;;
delete)
	shift
	(($# == 2)) || die "usage: model-volume.sh delete NAMESPACE CLAIM"
	delete "$@"
	;;
*) usage ;;
esac
