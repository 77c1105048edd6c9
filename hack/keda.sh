#!/usr/bin/env bash
# The local cluster's autoscaling flavour: Prometheus scraping the server pods and
# KEDA (operator + external metrics API server) built from its Go module, run as host
# processes beside the control plane (no registry or Docker to ship them as images;
# the apiserver, the pods' bridge and the Service routes are all on this host).
#
# Usage: hack/keda.sh build|up|down|status|env
#   build   build KEDA and Prometheus (cached; needs no cluster)
#   up      build/fetch what is missing (cached), apply KEDA's CRDs (from its module),
#           register the external metrics API, start Prometheus and KEDA; idempotent
#   down    stop them (the CRDs and the APIService stay, harmless without KEDA)
#   status  exit 0 when Prometheus and KEDA's metrics API answer
#   env     print PROMETHEUS_URL=... (what a ScaledObject's trigger should query)
#
# - Prometheus $PROMETHEUS_VERSION (its module's tag of Prometheus 3), built from its
#   module: Debian's package (2.42) is built without Kubernetes discovery. It finds
#   pods through the apiserver and scrapes those annotated prometheus.io/scrape=true
#   at prometheus.io/port and /path every 5 s, keeping `namespace` and `pod` labels
#   (hack/cluster/prometheus.yml).
# - KEDA $KEDA_VERSION: keda-operator and keda-adapter built from
#   github.com/kedacore/keda/v2 (its own go.mod, so its replace directives apply;
#   ~6 min cold on 2 cores, cached). They use the cluster's admin kubeconfig; they
#   talk over gRPC with mutual TLS on 127.0.0.1 (a CA made here). The adapter serves
#   v1beta1.external.metrics.k8s.io on the node address; a Service without selector
#   and its Endpoints lead the apiserver's aggregator there.
# - Admission webhooks are not run (they only validate ScaledObjects early).
#
# State: $LAMINA_CACHE/keda/ (logs/, certs/, prometheus data); binaries in
# $LAMINA_CACHE/tools/keda-<version>/ (with KEDA's CRDs) and prometheus-<version>/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/tools.env
source "$here/tools.env"
# shellcheck source=hack/cluster/network.env
source "$here/cluster/network.env"
log_tag="keda"
# shellcheck source=hack/lib.sh
source "$here/lib.sh"

cache="${LAMINA_CACHE:-$HOME/.cache/lamina}"
state="$cache/keda"
run="$state/run"
keda_bin="$cache/tools/keda-$KEDA_VERSION"
prom_bin="$cache/tools/prometheus-$PROMETHEUS_VERSION"
kubeconfig="$cache/cluster/kubeconfig"
PROMETHEUS_ADDRESS=127.0.0.1:19090
GRPC_ADDRESS=127.0.0.1:19666
ADAPTER_PORT=16443

kc() { "$(bin_dir)/kubectl" --kubeconfig "$kubeconfig" "$@"; }
daemon_binary() { # the binary of a daemon, for finding strays (lib.sh's daemon_pids)
	case "$1" in
	prometheus) echo "$prom_bin/prometheus" ;;
	*) echo "$keda_bin/$1" ;;
	esac
}

# ------------------------------------------------------------------- builds
# build MODULE@VERSION DEST PACKAGE...: compile main packages inside the module's own
# source (so its go.mod's replace directives apply), binaries into DEST.
build() {
	local module="$1" dest="$2" src dir
	shift 2
	command -v go >/dev/null || die "the Go toolchain (go >= 1.26) is required to build $module"
	export GOFLAGS=-mod=mod GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0
	dir="$(go mod download -json "$module" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')"
	[[ -d $dir ]] || die "could not download $module"
	src="$cache/tools/src/$(basename "$dest")"
	rm -rf "$src"
	mkdir -p "$(dirname "$src")" "$dest"
	cp -r "$dir" "$src"
	chmod -R u+w "$src"
	(cd "$src" && go build -trimpath -ldflags='-s -w' -o "$src/out/" "$@")
	mv "$src"/out/* "$dest/"
	[[ $module != github.com/kedacore/* ]] || cp "$src"/config/crd/bases/*.yaml "$dest/crds/"
	rm -rf "$src"
}

build_keda() {
	[[ -x $keda_bin/keda-operator && -x $keda_bin/keda-adapter ]] && return 0
	local t0=$SECONDS
	log "KEDA $KEDA_VERSION: building operator and adapter from its module (~6 min cold)"
	mkdir -p "$keda_bin/crds"
	build "github.com/kedacore/keda/v2@$KEDA_VERSION" "$keda_bin" ./cmd/operator ./cmd/adapter
	mv "$keda_bin/operator" "$keda_bin/keda-operator"
	mv "$keda_bin/adapter" "$keda_bin/keda-adapter"
	log "KEDA: built in $((SECONDS - t0))s"
}

build_prometheus() {
	[[ -x $prom_bin/prometheus ]] && return 0
	local t0=$SECONDS
	log "Prometheus $PROMETHEUS_VERSION: building from its module (~8 min cold)"
	build "github.com/prometheus/prometheus@$PROMETHEUS_VERSION" "$prom_bin" ./cmd/prometheus
	log "Prometheus: built in $((SECONDS - t0))s"
}

# ------------------------------------------------------------------ certificates
certs() { # a CA and one certificate (server and client) for KEDA's gRPC and the adapter
	local d="$state/certs"
	[[ -s $d/tls.crt ]] && return 0
	mkdir -p "$d"
	openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=lamina-keda-ca" \
		-keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
	openssl req -newkey rsa:2048 -nodes -subj "/CN=keda" -keyout "$d/tls.key" \
		-out "$d/tls.csr" 2>/dev/null
	printf "%s\n" "subjectAltName=IP:127.0.0.1,IP:$NODE_IP,DNS:localhost,DNS:keda-metrics-apiserver.keda.svc" \
		"extendedKeyUsage=serverAuth,clientAuth" >"$d/ext.cnf"
	openssl x509 -req -in "$d/tls.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
		-days 3650 -extfile "$d/ext.cnf" -out "$d/tls.crt" 2>/dev/null
}

# ------------------------------------------------------------------ cluster side
register() { # KEDA's CRDs, its namespace, and the external metrics API pointing here
	kc apply --server-side --force-conflicts -f "$keda_bin/crds/" >/dev/null
	kc apply --server-side --force-conflicts -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: keda}
---
apiVersion: v1
kind: Service
metadata: {name: keda-metrics-apiserver, namespace: keda}
spec:
  ports: [{name: https, port: 443, targetPort: $ADAPTER_PORT}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: keda-metrics-apiserver, namespace: keda}
subsets:
- addresses: [{ip: $NODE_IP}]
  ports: [{name: https, port: $ADAPTER_PORT}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.external.metrics.k8s.io}
spec:
  service: {name: keda-metrics-apiserver, namespace: keda, port: 443}
  group: external.metrics.k8s.io
  version: v1beta1
  groupPriorityMinimum: 100
  versionPriority: 100
  caBundle: $(base64 -w0 "$state/certs/ca.crt")
EOF
}

# ------------------------------------------------------------------- daemons
start_prometheus() {
	pid_alive prometheus && return 0
	mkdir -p "$state/prometheus"
	sed "s#@KUBECONFIG@#$kubeconfig#" "$here/cluster/prometheus.yml" >"$state/prometheus.yml"
	start prometheus "$prom_bin/prometheus" --config.file="$state/prometheus.yml" \
		--storage.tsdb.path="$state/prometheus" --storage.tsdb.retention.time=1d \
		--web.listen-address="$PROMETHEUS_ADDRESS"
}

start_keda() {
	local env=(env KUBECONFIG="$kubeconfig" WATCH_NAMESPACE="" POD_NAMESPACE=keda
		KEDA_CLUSTER_OBJECT_NAMESPACE=keda)
	pid_alive keda-operator || start keda-operator "${env[@]}" "$keda_bin/keda-operator" \
		--metrics-bind-address=127.0.0.1:19080 --health-probe-bind-address=127.0.0.1:19081 \
		--metrics-service-bind-address="$GRPC_ADDRESS" --cert-dir="$state/certs" \
		--ca-dir="$state/certs" --enable-cert-rotation=false --leader-elect=false \
		--zap-log-level=info
	pid_alive keda-adapter || start keda-adapter "${env[@]}" "$keda_bin/keda-adapter" \
		--secure-port="$ADAPTER_PORT" --bind-address="$NODE_IP" --port=19082 \
		--cert-dir="$state/certs" --tls-cert-file="$state/certs/tls.crt" \
		--tls-private-key-file="$state/certs/tls.key" \
		--client-ca-file="$LAMINA_CLUSTER_PKI/ca.crt" \
		--kubeconfig="$kubeconfig" --lister-kubeconfig="$kubeconfig" \
		--authentication-kubeconfig="$kubeconfig" --authorization-kubeconfig="$kubeconfig" \
		--metrics-service-address="$GRPC_ADDRESS" --zap-log-level=info
}

answers() { # the external metrics API through the apiserver, and Prometheus
	curl -fsS "http://$PROMETHEUS_ADDRESS/-/ready" >/dev/null &&
		kc get --raw /apis/external.metrics.k8s.io/v1beta1 >/dev/null
}

up() {
	build_keda
	build_prometheus
	certs
	mkdir -p "$run"
	register
	start_prometheus
	start_keda
	local t0=$SECONDS
	wait_for 120 "Prometheus and KEDA's external metrics API" answers
	log "ready in $((SECONDS - t0))s: Prometheus http://$PROMETHEUS_ADDRESS, logs $state/logs"
}

down() {
	local d
	for d in keda-adapter keda-operator prometheus; do stop "$d"; done
}

export LAMINA_CLUSTER_PKI="${LAMINA_CLUSTER_PKI:-$cache/cluster/kwok/clusters/lamina/pki}"
case "${1:-}" in
build)
	build_keda
	build_prometheus
	;;
up) up ;;
down) down ;;
status) answers ;;
env) echo "PROMETHEUS_URL=http://$PROMETHEUS_ADDRESS" ;;
*) usage ;;
esac
