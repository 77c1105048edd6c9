#!/usr/bin/env bash
# `make demo`: Lamina end to end on this machine, the way a user runs it:
#
#   1. the local cluster (hack/cluster.sh up: real control plane, kwok GPU nodes,
#      and one real node: containerd, runc, CNI, kubelet, kube-proxy)
#   2. the images, built with buildah from the repo's Dockerfiles and imported into
#      the node (hack/images.sh; cached by content)
#   3. the chart (helm upgrade --install) into namespace lamina-demo, which
#      enforces PodSecurity `restricted`: the operator runs as a real pod from its
#      image, with the chart's ServiceAccount
#   4. a tiny random-weight model on a local PersistentVolume of the node (no model
#      hub is reachable here), then examples/tiny-cpu.yaml with that model: the
#      operator starts a real CPU server pod (vLLM on CPU)
#   5. real requests to /v1/hidden_states and /v1/completions through the Service
#
# Usage: hack/demo.sh [up]   run (again: the release and the LLMDeployment are updated)
#        hack/demo.sh down   uninstall, delete the namespace and the cluster
#
# Environment: LAMINA_CACHE (default ~/.cache/lamina), VENV (default
# $LAMINA_CACHE/venv), LAMINA_DEMO_NAMESPACE (default lamina-demo). Logs and answers:
# $LAMINA_CACHE/demo/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cache="${LAMINA_CACHE:-$HOME/.cache/lamina}"
venv="${VENV:-$cache/venv}"
py="$venv/bin/python"
demo="$cache/demo"
ns="${LAMINA_DEMO_NAMESPACE:-lamina-demo}"
release=lamina
llmd=tiny-cpu
served=tiny-llama
t0=$SECONDS

# shellcheck source=hack/lib.sh
source "$here/lib.sh"
# The demo's lines also say how long it has been running.
log() { printf '[demo %(%H:%M:%S)T +%3ds] %s\n' -1 "$((SECONDS - t0))" "$*" >&2; }

cluster_env() {
	eval "$("$here/cluster.sh" env)"
	export KUBECONFIG PATH
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
	log "helm upgrade --install $release charts/lamina -n $ns (the operator runs as a pod)"
	helm upgrade --install "$release" "$repo/charts/lamina" --namespace "$ns" \
		--set logFormat=plain --force-conflicts --wait --timeout 5m >"$demo/helm.log" 2>&1 ||
		{
			cat "$demo/helm.log" >&2
			kubectl -n "$ns" describe pods -l "app.kubernetes.io/instance=$release" >&2 || true
			die "helm failed"
		}
	# Helm installs CRDs on first install only; keep the cluster's in step with the
	# repository (the same file) on later runs.
	kubectl apply --server-side --force-conflicts \
		-f "$repo/charts/lamina/crds/lamina.dev_llmdeployments.yaml" >/dev/null
	kubectl wait --for=condition=Established crd/llmdeployments.lamina.dev --timeout=60s >/dev/null
	kubectl -n "$ns" get pods -l "app.kubernetes.io/instance=$release" -o wide >&2
}

model_volume() {
	local model
	log "building the tiny random-weight model (cached) and putting it on a local volume"
	model="$("$py" "$repo/tests/tiny_model.py" --arch llama --max-positions 2048 | tail -n 1)"
	[[ -d $model ]] || die "tiny_model printed '$model', not a directory"
	"$here/model-volume.sh" create "$ns" models "$served=$model" >/dev/null
}

# examples/tiny-cpu.yaml with this cluster's model: a path on the claim `models`.
the_example() {
	"$py" - "$repo/examples/tiny-cpu.yaml" "$served" <<'PY'
import json
import sys

import yaml

llmd = yaml.safe_load(open(sys.argv[1]))
llmd["spec"]["model"].update(name=f"/cache/models/{sys.argv[2]}", servedName=sys.argv[2])
llmd["spec"]["modelCache"] = {"persistentVolumeClaim": "models"}
print(json.dumps(llmd))
PY
}

apply_example() {
	the_example | kubectl -n "$ns" apply -f - >/dev/null
	log "applied examples/tiny-cpu.yaml (model /cache/models/$served); waiting for llmd/$llmd"
	local deadline=$((SECONDS + 900)) line last=""
	until kubectl -n "$ns" wait --for=condition=Ready "llmd/$llmd" --timeout=10s >/dev/null 2>&1; do
		line="$(kubectl -n "$ns" get pods -l "app.kubernetes.io/instance=$llmd" --no-headers 2>/dev/null |
			awk '{print $1" "$2" "$3" restarts="$4}' | tr '\n' ' ')"
		if [[ $line != "$last" ]]; then
			log "  server pod: ${line:-not created yet} (vLLM on CPU starts in about a minute)"
			last="$line"
		fi
		((SECONDS < deadline)) || {
			kubectl -n "$ns" describe "llmd/$llmd" >&2 || true
			kubectl -n "$ns" logs -l "app.kubernetes.io/instance=$llmd" --tail=30 >&2 || true
			die "llmd/$llmd did not become Ready in 15 minutes"
		}
	done
	kubectl -n "$ns" get "llmd/$llmd" >&2
	kubectl -n "$ns" get deployment,service,pods -l "app.kubernetes.io/instance=$llmd" -o wide >&2
}

call_server() {
	local base
	base="http://$(kubectl -n "$ns" get service "$llmd" -o jsonpath='{.spec.clusterIP}:{.spec.ports[0].port}')"
	log "through the Service $llmd at $base (its ClusterIP, via kube-proxy)"
	log "POST /v1/hidden_states"
	curl -fsS "$base/v1/hidden_states" -H 'Content-Type: application/json' \
		-d '{"prompts": ["What is AI?", "Kubernetes runs containers in pods."], "layers": [-2, 0]}' \
		>"$demo/hidden_states.json" || die "/v1/hidden_states failed"
	log "POST /v1/completions"
	curl -fsS "$base/v1/completions" -H 'Content-Type: application/json' \
		-d '{"model": "'"$served"'", "prompt": "What is AI?", "max_tokens": 8, "temperature": 0}' \
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
  eval "\$(hack/cluster.sh env)"
  kubectl -n $ns get llmd                    # the LLMDeployment: Ready, endpoint
  kubectl -n $ns describe llmd $llmd         # conditions and events
  kubectl -n $ns get deploy,svc,pods -l app.kubernetes.io/instance=$llmd   # its children
  kubectl -n $ns logs deploy/$llmd           # the server (the KV cache and threads it chose)
  kubectl -n $ns logs deploy/$release        # the operator
  curl -s \$(kubectl -n $ns get svc $llmd -o jsonpath='{.spec.clusterIP}'):8000/metrics | grep ^lamina_
  answers: $demo/*.json    undo: make demo-down
EOF
}

up() {
	mkdir -p "$demo"
	[[ -x $py ]] || die "no Python environment at $venv (run: make venv)"
	log "local cluster with a real node (hack/cluster.sh up)"
	"$here/cluster.sh" up >"$demo/cluster.log" 2>&1 || {
		tail -n 30 "$demo/cluster.log" >&2
		die "hack/cluster.sh up failed"
	}
	cluster_env
	log "images: operator and CPU server (hack/images.sh load; the first build takes ~10 min)"
	"$here/images.sh" load operator server-cpu
	install_chart
	model_volume
	apply_example
	call_server
	where_to_look
	log "done in $((SECONDS - t0))s"
}

down() {
	mkdir -p "$demo"
	if "$here/cluster.sh" status >/dev/null 2>&1; then
		cluster_env
		kubectl -n "$ns" delete llmd --all --timeout=120s >/dev/null 2>&1 || true
		if helm status "$release" -n "$ns" >/dev/null 2>&1; then
			log "helm uninstall $release"
			helm uninstall "$release" -n "$ns" --wait --timeout 2m >/dev/null || true
		fi
		# Remove what an uninstalled operator can no longer finalize.
		kubectl -n "$ns" get llmd -o name 2>/dev/null | while read -r obj; do
			kubectl -n "$ns" patch "$obj" --type=merge -p '{"metadata":{"finalizers":null}}' >/dev/null || true
		done
		"$here/model-volume.sh" delete "$ns" models || true
		kubectl delete namespace "$ns" --ignore-not-found --wait=false >/dev/null || true
	fi
	log "deleting the local cluster (hack/cluster.sh down)"
	"$here/cluster.sh" down
	log "down in $((SECONDS - t0))s"
}

case "${1:-up}" in
up) up ;;
down) down ;;
*) usage ;;
esac
