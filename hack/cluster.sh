#!/usr/bin/env bash
# The local Kubernetes cluster for tests and the demo: a real control plane
# (etcd, kube-apiserver with RBAC + default admission incl. PodSecurity,
# kube-controller-manager, kube-scheduler) run as plain processes by
# `kwokctl --runtime binary`, kwok simulating 4 GPU nodes
# (hack/cluster/gpu-nodes.yaml) and the lifecycle of pods bound to them, and one
# real node (hack/node.sh: containerd, runc, CNI, kubelet, kube-proxy) whose pods
# run real images (hack/images.sh).
#
# Usage: hack/cluster.sh up|down|status|kubeconfig|env|pids
#   up          create the cluster and wait for Ready nodes; does nothing
#               to a healthy cluster, recreates an unhealthy one
#   down        delete the cluster; leaves no process behind
#   status      exit 0 when the apiserver answers, print nodes
#   kubeconfig  print the kubeconfig path
#   env         print `export KUBECONFIG=... PATH=...` lines for eval
#   pids        print the PIDs of the cluster's processes (etcd, kube-*, kwok)
#
# Environment:
#   LAMINA_CACHE         default $HOME/.cache/lamina
#   LAMINA_CLUSTER_NAME  default lamina (other names give independent clusters)
#   KWOKCTL_LOG_LEVEL    default WARN (DEBUG, INFO, WARN, ERROR)
#   LAMINA_REAL_NODE     1 (default for the cluster named lamina) or 0 (default
#                        for other names: one real node per machine)
#   tool overrides (KUBEBUILDER_ASSETS, KUBECTL, ...): see hack/cluster-tools.sh
#
# State lives in $LAMINA_CACHE/cluster/: kwok/ is kwokctl's work dir and the
# kubeconfig is $LAMINA_CACHE/cluster/kubeconfig (kubeconfig-<name> for a
# cluster not named lamina). ~/.kube/config is never touched.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/tools.env
source "$here/tools.env"

cache="${LAMINA_CACHE:-$HOME/.cache/lamina}"
name="${LAMINA_CLUSTER_NAME:-lamina}"
[[ $name =~ ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ ]] || {
	echo "bad LAMINA_CLUSTER_NAME: $name" >&2
	exit 2
}
state="$cache/cluster"
export KWOK_WORKDIR="$state/kwok"
cluster_dir="$KWOK_WORKDIR/clusters/$name"
if [[ $name == lamina ]]; then
	kubeconfig="$state/kubeconfig"
else
	kubeconfig="$state/kubeconfig-$name"
fi

real_node="${LAMINA_REAL_NODE:-$([[ $name == lamina ]] && echo 1 || echo 0)}"
# shellcheck source=hack/cluster/network.env
source "$here/cluster/network.env"

log_tag="cluster $name"
# shellcheck source=hack/lib.sh
source "$here/lib.sh"


kc() { "$(bin_dir)/kubectl" --kubeconfig "$kubeconfig" "$@"; }

healthy() {
	[[ -s $kubeconfig ]] && kc --request-timeout=5s get --raw /readyz >/dev/null 2>&1
}

# Processes started for this cluster reference its work dir on their
# command line (config, pki, pid and log paths all live there).
cluster_pids() { pgrep -f -- "$cluster_dir/" || true; }

kill_leftovers() {
	local pids
	pids="$(cluster_pids)"
	[[ -z $pids ]] && return 0
	log "stopping leftover processes: $(echo "$pids" | tr '\n' ' ')"
	# shellcheck disable=SC2086
	kill $pids 2>/dev/null || true
	for _ in $(seq 50); do
		[[ -z "$(cluster_pids)" ]] && return 0
		sleep 0.2
	done
	pids="$(cluster_pids)"
	# shellcheck disable=SC2086
	[[ -n $pids ]] && kill -9 $pids 2>/dev/null || true
	sleep 0.5
	[[ -z "$(cluster_pids)" ]] || die "processes survive: $(cluster_pids | tr '\n' ' ')"
}

kwokctl_() {
	local b
	b="$(bin_dir)"
	# kwokctl picks up the binaries from these (flags repeat them below).
	KWOK_KUBE_APISERVER_BINARY="$b/kube-apiserver" \
		KWOK_KUBE_CONTROLLER_MANAGER_BINARY="$b/kube-controller-manager" \
		KWOK_KUBE_SCHEDULER_BINARY="$b/kube-scheduler" \
		KWOK_KWOK_CONTROLLER_BINARY="$b/kwok" \
		KWOK_ETCD_BINARY="$b/etcd" \
		KWOK_KUBECTL_BINARY="$b/kubectl" \
		PATH="$b:$PATH" \
		"$b/kwokctl" --v "${KWOKCTL_LOG_LEVEL:-WARN}" --name "$name" "$@" 9>&-
	# (9>&-: the daemons kwokctl forks must not inherit our lock)
}

kwokctl_config() { # hack/cluster/kwokctl.yaml with this cluster's values
	local out="$state/kwokctl-$name.yaml"
	sed -e "s#\${NODE_IP}#$NODE_IP#g" -e "s#\${SERVICE_CIDR}#$SERVICE_CIDR#g" \
		-e "s#\${KUBERNETES_SERVICE_IP}#$KUBERNETES_SERVICE_IP#g" \
		-e "s#\${PKI}#$cluster_dir/pki#g" "$here/cluster/kwokctl.yaml" >"$out"
	echo "$out"
}

node_() { # hack/node.sh with this cluster's credentials
	LAMINA_CLUSTER_PKI="$cluster_dir/pki" LAMINA_CLUSTER_KUBECONFIG="$kubeconfig" \
		"$here/node.sh" "$@" 9>&-
}

create() {
	local b t0=$SECONDS
	b="$(bin_dir)"
	log "creating cluster (kwokctl --runtime binary, Kubernetes $KUBE_VERSION)"
	kwokctl_ create cluster \
		--config "$(kwokctl_config)" \
		--runtime binary \
		--kube-authorization \
		--kube-admission \
		--kubeconfig "" \
		--kube-apiserver-binary "$b/kube-apiserver" \
		--kube-controller-manager-binary "$b/kube-controller-manager" \
		--kube-scheduler-binary "$b/kube-scheduler" \
		--kwok-controller-binary "$b/kwok" \
		--etcd-binary "$b/etcd" \
		--timeout 5m \
		--wait 3m >&2
	log "control plane up in $((SECONDS - t0))s"
}

write_kubeconfig() {
	mkdir -p "$state"
	kwokctl_ get kubeconfig >"$kubeconfig.tmp"
	chmod 600 "$kubeconfig.tmp"
	mv -f "$kubeconfig.tmp" "$kubeconfig"
}

add_nodes() {
	sed "s/\${KUBE_VERSION}/$KUBE_VERSION/g" "$here/cluster/gpu-nodes.yaml" | kc apply -f - >&2
	log "waiting for nodes to be Ready"
	kc wait --for=condition=Ready node -l type=kwok --timeout=180s >&2
	# Pods need the namespace's default ServiceAccount (made by the
	# controller manager) before they can be created.
	wait_for 120 "the default ServiceAccount" kc -n default get serviceaccount default
}

up() {
	mkdir -p "$state"
	exec 9>"$state/.lock-$name"
	flock 9
	if healthy; then
		log "already up"
	else
		if [[ -d $cluster_dir ]]; then
			# e.g. after a reboot. `kwokctl start` of a half-dead cluster is
			# slow and unreliable; a fresh cluster takes seconds.
			log "cluster exists but is not healthy; recreating it (its objects are lost)"
			kwokctl_ delete cluster >&2 || true
		fi
		kill_leftovers
		rm -rf "$cluster_dir"
		if ((real_node)); then
			# A node whose processes died (a reboot, a killed session) leaves state
			# behind: clear it, then the bridge comes first (the apiserver
			# advertises its address).
			node_ down
			node_ net-up
		fi
		create
		write_kubeconfig
		wait_for 120 "the apiserver" healthy
	fi
	add_nodes
	if ((real_node)); then
		node_ up
	fi
	log "ready: $(kc get nodes -l type=kwok --no-headers | wc -l) GPU nodes (kwok)$( ((real_node)) && echo ", 1 real node")"
	echo "kubeconfig: $kubeconfig"
	echo "export KUBECONFIG=$kubeconfig PATH=$(bin_dir):\$PATH"
}

down() {
	mkdir -p "$state"
	exec 9>"$state/.lock-$name"
	flock 9
	if [[ $name == lamina ]]; then
		"$here/keda.sh" down # the autoscaling flavour's processes, if it ran
	fi
	if ((real_node)); then
		log "stopping the real node"
		node_ down
	fi
	if [[ -d $cluster_dir ]]; then
		log "deleting cluster"
		kwokctl_ delete cluster >&2 || log "kwokctl delete failed; cleaning up by hand"
	fi
	kill_leftovers
	rm -rf "$cluster_dir" "$kubeconfig"
	log "down"
}

case "${1:-}" in
up) up ;;
down) down ;;
status)
	if healthy; then
		echo "up: $kubeconfig"
		kc get nodes -o wide
	else
		echo "down"
		exit 1
	fi
	;;
kubeconfig) echo "$kubeconfig" ;;
pids) cluster_pids ;;
env)
	echo "export KUBECONFIG=$kubeconfig"
	echo "export PATH=$(bin_dir):\$PATH"
	;;
*)
	sed -n '10,18p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac
