#!/usr/bin/env bash
# `make demo`: Lamina end to end on this machine, no GPU and no container runtime.
#
#   1. the local cluster (hack/cluster.sh up: real control plane, kwok GPU nodes)
#   2. the chart (helm upgrade --install) into namespace lamina-demo, which
#      enforces PodSecurity `restricted`
#   3. the operator as a LOCAL process (kwok pods run no containers), with the
#      chart's ServiceAccount token (not admin): what it can do is what the
#      chart's RBAC grants
#   4. examples/tiny-cpu.yaml, until the LLMDeployment is Ready (kwok plays the pods)
#   5. a real `python -m lamina_server` on CPU with a tiny random-weight model,
#      then real requests to /v1/hidden_states and /v1/completions
#
# Usage: hack/demo.sh [up]   run (again: previous processes are replaced)
#        hack/demo.sh down   stop the processes, uninstall, delete the cluster
#
# Environment: LAMINA_CACHE (default ~/.cache/lamina), VENV (default
# $LAMINA_CACHE/venv), LAMINA_DEMO_PORT (server port, default 8000),
# LAMINA_DEMO_OPERATOR_PORT (operator liveness, default 18080),
# LAMINA_DEMO_NAMESPACE (default lamina-demo), LAMINA_CLUSTER_NAME (default lamina).
# Pid files and logs: $LAMINA_CACHE/demo/ (demo-<cluster name>/ for other clusters).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cache="${LAMINA_CACHE:-$HOME/.cache/lamina}"
venv="${VENV:-$cache/venv}"
py="$venv/bin/python"
cluster_name="${LAMINA_CLUSTER_NAME:-lamina}"
# Another cluster (hack/cluster.sh's LAMINA_CLUSTER_NAME) gets its own demo dir.
if [[ $cluster_name == lamina ]]; then demo="$cache/demo"; else demo="$cache/demo-$cluster_name"; fi
ns="${LAMINA_DEMO_NAMESPACE:-lamina-demo}"
release=lamina
llmd=tiny-cpu
port="${LAMINA_DEMO_PORT:-8000}"
liveness_port="${LAMINA_DEMO_OPERATOR_PORT:-18080}"
t0=$SECONDS

log() { printf '[demo %(%H:%M:%S)T +%3ds] %s\n' -1 "$((SECONDS - t0))" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# ------------------------------------------------------------ local processes
# Each process has a pid file; it is ours only if its command line still says
# what we started (a stale pid may have been reused by something else).
pid_of() { # pid_of NAME PATTERN -> pid of a live demo process, or nothing
	local file="$demo/$1.pid" pid
	[[ -s $file ]] || return 0
	pid="$(<"$file")"
	if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2"; then
		echo "$pid"
	fi
}

stop_process() { # stop_process NAME PATTERN
	local pid
	pid="$(pid_of "$1" "$2")"
	if [[ -n $pid ]]; then
		log "stopping the previous $1 (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		for _ in $(seq 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.2
		done
		kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$demo/$1.pid"
}

wait_for() { # wait_for SECONDS DESCRIPTION CMD...
	local deadline=$((SECONDS + $1)) what="$2"
	shift 2
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || return 1
		sleep 1
	done
}

alive() { kill -0 "$1" 2>/dev/null; }

# ------------------------------------------------------------------- cluster
cluster_env() {
	eval "$("$here/cluster.sh" env)"
	export KUBECONFIG PATH
	admin_kubeconfig="$KUBECONFIG"
}

# A kubeconfig with the chart ServiceAccount's token and the cluster's
# address and CA, but none of the admin's credentials.
operator_kubeconfig() {
	local out="$demo/operator.kubeconfig" sa token server ca_data skip
	sa="$(kubectl -n "$ns" get deployment "$release" -o jsonpath='{.spec.template.spec.serviceAccountName}')"
	token="$(kubectl -n "$ns" create token "$sa" --duration=24h)"
	server="$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
	ca_data="$(kubectl config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
	skip="$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.insecure-skip-tls-verify}')"
	rm -f "$out"
	(
		umask 077
		export KUBECONFIG="$out"
		if [[ -n $ca_data ]]; then
			base64 -d <<<"$ca_data" >"$demo/ca.crt"
			kubectl config set-cluster lamina --server="$server" \
				--certificate-authority="$demo/ca.crt" --embed-certs=true >/dev/null
		else
			kubectl config set-cluster lamina --server="$server" \
				--insecure-skip-tls-verify="${skip:-false}" >/dev/null
		fi
		kubectl config set-credentials "$sa" --token="$token" >/dev/null
		kubectl config set-context lamina-operator --cluster=lamina --user="$sa" \
			--namespace="$ns" >/dev/null
		kubectl config use-context lamina-operator >/dev/null
	)
	rm -f "$demo/ca.crt"
	log "operator credentials: ServiceAccount $ns/$sa (token from kubectl create token)"
	echo "$out"
}

# --------------------------------------------------------------------- steps
install_chart() {
	kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $ns
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/warn: restricted
EOF
	log "helm upgrade --install $release charts/lamina -n $ns"
	helm upgrade --install "$release" "$repo/charts/lamina" --namespace "$ns" \
		--set logFormat=plain --force-conflicts --wait --timeout 3m >"$demo/helm.log" 2>&1 ||
		{
			cat "$demo/helm.log" >&2
			die "helm failed"
		}
	# Helm installs CRDs on first install only; keep the cluster's in step with the
	# repository (the same file) on later runs.
	kubectl apply --server-side --force-conflicts \
		-f "$repo/charts/lamina/crds/lamina.dev_llmdeployments.yaml" >/dev/null
	kubectl wait --for=condition=Established crd/llmdeployments.lamina.dev --timeout=60s >/dev/null
	log "chart installed; operator pod (simulated by kwok): $(kubectl -n "$ns" get pods \
		-l app.kubernetes.io/instance=$release --no-headers 2>/dev/null | awk '{print $1" "$3}' | head -1)"
}

start_operator() {
	local kubeconfig pid
	stop_process operator "lamina_operator"
	kubeconfig="$(operator_kubeconfig)"
	# The chart's Deployment runs the same program with the same arguments.
	KUBECONFIG="$kubeconfig" nohup "$py" -m lamina_operator --namespace "$ns" \
		--liveness "http://127.0.0.1:$liveness_port/healthz" --metrics-port 0 \
		--log-format plain >"$demo/operator.log" 2>&1 &
	pid=$!
	echo "$pid" >"$demo/operator.pid"
	wait_for 60 "operator liveness" curl -fsS "http://127.0.0.1:$liveness_port/healthz" ||
		{
			tail -n 30 "$demo/operator.log" >&2
			die "the operator did not come up (log: $demo/operator.log)"
		}
	alive "$pid" || die "the operator exited (log: $demo/operator.log)"
	log "operator running locally (pid $pid, log $demo/operator.log)"
}

apply_example() {
	kubectl -n "$ns" apply -f "$repo/examples/tiny-cpu.yaml" >/dev/null
	log "applied examples/tiny-cpu.yaml; waiting for llmd/$llmd to be Ready"
	kubectl -n "$ns" wait --for=condition=Ready "llmd/$llmd" --timeout=180s >/dev/null ||
		{
			kubectl -n "$ns" get llmd "$llmd" -o yaml >&2 || true
			tail -n 30 "$demo/operator.log" >&2
			die "llmd/$llmd did not become Ready"
		}
	kubectl -n "$ns" get "llmd/$llmd" >&2
	kubectl -n "$ns" get deployment,service,pods -l "app.kubernetes.io/instance=$llmd" >&2 || true
}

start_server() {
	local model pid
	log "building the tiny random-weight model (cached)"
	model="$("$py" -m lamina_server.tiny_model --arch llama | tail -n 1)"
	[[ -d $model ]] || die "tiny_model printed '$model', not a directory"
	stop_process server "lamina_server"
	if curl -fsS -o /dev/null "http://127.0.0.1:$port/health" 2>/dev/null; then
		die "port $port is taken by another process; set LAMINA_DEMO_PORT"
	fi
	log "starting python -m lamina_server on CPU (model $model, port $port)"
	VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" \
		nohup "$py" -m lamina_server --model "$model" --served-model-name tiny-llama \
		--host 127.0.0.1 --port "$port" --dtype float32 --max-model-len 1024 \
		>"$demo/server.log" 2>&1 &
	pid=$!
	echo "$pid" >"$demo/server.pid"
	local deadline=$((SECONDS + 600))
	until curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null; do
		if ! alive "$pid"; then
			tail -n 40 "$demo/server.log" >&2
			die "the server exited (log: $demo/server.log)"
		fi
		((SECONDS < deadline)) || die "the server was not ready after 600s (log: $demo/server.log)"
		sleep 1
	done
	log "server ready (pid $pid, log $demo/server.log)"
}

call_server() {
	local base="http://127.0.0.1:$port"
	log "POST /v1/hidden_states"
	curl -fsS "$base/v1/hidden_states" -H 'Content-Type: application/json' \
		-d '{"prompts": ["What is AI?", "Kubernetes runs containers in pods."], "layers": [-2, 0]}' \
		>"$demo/hidden_states.json" || die "/v1/hidden_states failed"
	log "POST /v1/completions"
	curl -fsS "$base/v1/completions" -H 'Content-Type: application/json' \
		-d '{"model": "tiny-llama", "prompt": "What is AI?", "max_tokens": 8, "temperature": 0}' \
		>"$demo/completions.json" || die "/v1/completions failed"
	"$py" - "$demo/hidden_states.json" "$demo/completions.json" <<'EOF'
import json
import sys

hidden = json.load(open(sys.argv[1]))
completion = json.load(open(sys.argv[2]))
prompts = ["What is AI?", "Kubernetes runs containers in pods."]


def shape(x):
    dims = []
    while isinstance(x, list):
        dims.append(len(x))
        x = x[0] if x else None
    return dims


def head(x, n=4):
    while isinstance(x, list) and x and isinstance(x[0], list):
        x = x[0]
    return "[" + ", ".join(f"{v:+.4f}" for v in x[:n]) + ", ...]" if isinstance(x, list) else x


meta = hidden.get("metadata", {})
print("\n/v1/hidden_states  (model %s, %s layers, hidden size %s, %s, pooling %s)" % (
    hidden.get("model"), meta.get("num_layers"), meta.get("hidden_size"),
    meta.get("dtype"), meta.get("pooling")))
for item in hidden.get("data", []):
    i = item.get("index", 0)
    print(f"  prompt {i} {prompts[i]!r}: {item.get('prompt_tokens')} tokens")
    for layer in item.get("layers", []):
        vector = layer.get("hidden_state")
        print(f"    layer {layer.get('layer'):>3} (= {layer.get('resolved_layer')}): "
              f"shape {shape(vector)}  {head(vector)}")
if not hidden.get("data"):
    print(f"  hidden_states shape {shape(hidden.get('hidden_states'))}, "
          f"prompt tokens {hidden.get('prompt_tokens')}: {head(hidden.get('hidden_states'))}")
choice = completion["choices"][0]
usage = completion.get("usage") or {}
print(f"\n/v1/completions  (model {completion.get('model')})")
print(f"  'What is AI?' -> {choice.get('text')!r}  (random weights: gibberish is expected)")
print(f"  tokens: {usage.get('prompt_tokens')} prompt + {usage.get('completion_tokens')} completion")
print()
EOF
}

where_to_look() {
	cat >&2 <<EOF
Where to look:
  export KUBECONFIG=$admin_kubeconfig PATH=$(dirname "$(command -v kubectl)"):\$PATH
  kubectl -n $ns get llmd                    # the LLMDeployment: Ready, endpoint
  kubectl -n $ns describe llmd $llmd         # conditions and events
  kubectl -n $ns get deploy,svc,pods -l app.kubernetes.io/instance=$llmd   # its children
  kubectl -n $ns get deploy $release -o yaml # the chart's operator Deployment
  kubectl auth can-i --list --as=system:serviceaccount:$ns:$release -n $ns
  curl localhost:$port/health
  curl -s localhost:$port/metrics | grep ^lamina_
  logs: $demo/operator.log  $demo/server.log  (responses: $demo/*.json)
  undo: make demo-down
EOF
}

up() {
	mkdir -p "$demo"
	[[ -x $py ]] || die "no Python environment at $venv (run: make venv)"
	log "local cluster (hack/cluster.sh up)"
	"$here/cluster.sh" up >"$demo/cluster.log" 2>&1 || {
		tail -n 30 "$demo/cluster.log" >&2
		die "hack/cluster.sh up failed"
	}
	cluster_env
	install_chart
	start_operator
	apply_example
	start_server
	call_server
	where_to_look
	log "done in $((SECONDS - t0))s"
}

down() {
	mkdir -p "$demo"
	stop_process server "lamina_server"
	stop_process operator "lamina_operator"
	if "$here/cluster.sh" status >/dev/null 2>&1; then
		cluster_env
		if helm status "$release" -n "$ns" >/dev/null 2>&1; then
			log "helm uninstall $release"
			helm uninstall "$release" -n "$ns" --wait --timeout 2m >/dev/null || true
		fi
		# Remove what the uninstalled operator can no longer finalize.
		kubectl -n "$ns" get llmd -o name 2>/dev/null | while read -r obj; do
			kubectl -n "$ns" patch "$obj" --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null || true
		done
		kubectl delete namespace "$ns" --ignore-not-found --wait=false >/dev/null || true
	fi
	log "deleting the local cluster (hack/cluster.sh down)"
	"$here/cluster.sh" down
	rm -f "$demo/operator.kubeconfig"
	log "down in $((SECONDS - t0))s"
}

case "${1:-up}" in
up) up ;;
down) down ;;
*)
	sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac
