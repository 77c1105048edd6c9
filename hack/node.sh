#!/usr/bin/env bash
# The real node of the local cluster: containerd + runc, the CNI bridge, kubelet and
# kube-proxy on this machine, registered with the control plane of hack/cluster.sh
# beside kwok's fake GPU nodes. Its pods run real images (hack/images.sh).
#
# Usage: hack/node.sh net-up       the bridge (before the control plane: the
#                                  apiserver advertises the bridge address)
#        hack/node.sh up           containerd, the sandbox image, kubelet,
#                                  kube-proxy; waits for the node to be Ready
#        hack/node.sh down         stop everything and remove what it left:
#                                  processes, mounts, bridge, iptables chains,
#                                  cgroups; fails naming anything that survived
#        hack/node.sh leftovers    print what a stopped node left behind (or nothing)
#        hack/node.sh status       exit 0 when containerd answers
#        hack/node.sh ctr ARGS...  ctr against the node's containerd (namespace k8s.io)
#
# Called by hack/cluster.sh (LAMINA_REAL_NODE=0 there leaves the node out). Needs
# root. One real node per machine: it owns the bridge and addresses of
# hack/cluster/network.env (pods 10.244.0.0/24, node IP 10.244.0.1, Services
# 10.96.0.0/16 routed onto the bridge), ports 10250 (kubelet, bridge address), 10248/10249/10256
# (health and metrics, loopback), /run/lamina-node and $LAMINA_CACHE/node.
# Images survive `down` (containerd's root is kept, like an image cache).
# Measured facts behind the settings: ../shared/REAL_NODE.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${LAMINA_CACHE:-$HOME/.cache/lamina}"
state="$cache/node"             # kept: containerd's root (images)
run=/run/lamina-node            # wiped on down: sockets, configs, pids, runtime state
node_name=lamina-node
# shellcheck source=hack/cluster/network.env
source "$here/cluster/network.env"
bridge=$BRIDGE pod_cidr=$POD_CIDR node_ip=$NODE_IP
sock="$run/containerd.sock"
kubelet_root="$state/kubelet"
pod_logs="$state/pod-logs"

log_tag=node
# shellcheck source=hack/lib.sh
source "$here/lib.sh"

# (containerd warns on every call that cgroup v1 is deprecated: this machine has only v1.)
ctr_() { "$(bin_dir)/ctr" --address "$sock" --namespace k8s.io "$@" 2> >(grep -v DEPRECATION >&2); }

# The control plane's files, for the kubelet's and kube-proxy's credentials and CA.
cluster_pki() { echo "${LAMINA_CLUSTER_PKI:?LAMINA_CLUSTER_PKI (set by hack/cluster.sh)}"; }
cluster_kubeconfig() { echo "${LAMINA_CLUSTER_KUBECONFIG:?LAMINA_CLUSTER_KUBECONFIG (set by hack/cluster.sh)}"; }

# ----------------------------------------------------------------- processes
pid_alive() { [[ -s $run/$1.pid ]] && kill -0 "$(<"$run/$1.pid")" 2>/dev/null; }

start() { # start NAME CMD...: a daemon in its own session, log in $state/logs
	local name="$1"
	shift
	mkdir -p "$state/logs"
	setsid "$@" >"$state/logs/$name.log" 2>&1 </dev/null 9>&- &
	echo $! >"$run/$name.pid"
}

daemon_pids() { # daemon_pids NAME: its pid file's and any other process of its binary
	{
		[[ -s $run/$1.pid ]] && cat "$run/$1.pid"
		pgrep -f "$(bin_dir)/$1( |$)" || true
	} | sort -u
}

stop() { # stop NAME: TERM, then KILL after 10 s
	local pids
	pids="$(daemon_pids "$1" | tr '\n' ' ')"
	rm -f "$run/$1.pid"
	[[ -n ${pids// /} ]] || return 0
	# shellcheck disable=SC2086
	kill -TERM $pids 2>/dev/null || true
	local p
	for _ in $(seq 50); do
		pids="$(for p in $pids; do if kill -0 "$p" 2>/dev/null; then echo "$p"; fi; done)"
		[[ -n $pids ]] || return 0
		sleep 0.2
	done
	# shellcheck disable=SC2086
	kill -KILL $pids 2>/dev/null || true
}

# ------------------------------------------------------------------- network
net_up() {
	mkdir -p "$run"
	if ! ip link show "$bridge" >/dev/null 2>&1; then
		ip link add "$bridge" type bridge
		ip addr add "$node_ip/${pod_cidr#*/}" dev "$bridge"
	fi
	ip link set "$bridge" up
	# Service addresses are DNATed to pods by kube-proxy; route them onto the bridge
	# so such traffic never takes the default route off this machine.
	ip route replace "$SERVICE_CIDR" dev "$bridge" src "$node_ip"
	# Service traffic between pods on the bridge is DNATed by the host: it must
	# forward, and bridged packets must pass iptables (br_netfilter).
	[[ -s $run/ip_forward.before ]] || cat /proc/sys/net/ipv4/ip_forward >"$run/ip_forward.before"
	echo 1 >/proc/sys/net/ipv4/ip_forward
	local nf=/proc/sys/net/bridge/bridge-nf-call-iptables
	[[ -e $nf ]] || die "br_netfilter is not loaded (modprobe br_netfilter): Service traffic between pods needs it"
	[[ $(<"$nf") == 1 ]] || echo 1 >"$nf"
}

# ------------------------------------------------------------------- configs
# kube-proxy exits when its config file is written to, even with the same content:
# only write what changed.
write_if_changed() { # write_if_changed PATH < content
	local tmp="$1.new"
	cat >"$tmp"
	if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv -f "$tmp" "$1"; fi
}

write_configs() {
	local pki b
	pki="$(cluster_pki)"
	b="$(bin_dir)"
	mkdir -p "$run/cni/net.d" "$state/containerd" "$kubelet_root" "$pod_logs"
	write_if_changed "$run/containerd.toml" <<EOF
# containerd 2.x for the local real node (generated by hack/node.sh).
version = 4
root = '$state/containerd'
state = '$run/containerd'
disabled_plugins = [
  'io.containerd.snapshotter.v1.btrfs', 'io.containerd.snapshotter.v1.zfs',
  'io.containerd.snapshotter.v1.devmapper', 'io.containerd.snapshotter.v1.blockfile',
  'io.containerd.snapshotter.v1.erofs', 'io.containerd.differ.v1.erofs',
  'io.containerd.tracing.processor.v1.otlp', 'io.containerd.internal.v1.tracing',
  'io.containerd.nri.v1.nri',
]
[plugins.'io.containerd.server.v1.grpc']
  address = '$sock'
[plugins.'io.containerd.server.v1.ttrpc']
  address = '$sock.ttrpc'
[plugins.'io.containerd.shim.v1.manager']
  socket_dir = '$run/s'
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = '$("$here/images.sh" ref pause)'
[plugins.'io.containerd.cri.v1.runtime']
  # No process here has CAP_SYS_RESOURCE; the kubelet asks for oom_score_adj -998.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  ignore_deprecation_warnings = ['io.containerd.deprecation/cgroup-v1']
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['$b/cni']
    conf_dir = '$run/cni/net.d'
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = 'io.containerd.runc.v2'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = '$(command -v runc)'
      SystemdCgroup = false
      Root = '$run/runc'
EOF
	write_if_changed "$run/cni/net.d/10-lamina.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "lamina",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$pod_cidr", "gateway": "$node_ip"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$run/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
	write_if_changed "$run/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Kubernetes 1.35+ refuses cgroup v1 unless told otherwise; this machine has only v1.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$sock
address: $node_ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
# Images exist only locally (no registry to pull them back from): never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 200Mi, nodefs.available: 2%, imagefs.available: 2%}
podLogsDir: $pod_logs
clusterDomain: cluster.local
serializeImagePulls: false
maxPods: 32
EOF
	write_if_changed "$run/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $(cluster_kubeconfig)}
hostnameOverride: $node_name
mode: iptables
clusterCIDR: $pod_cidr
bindAddress: $node_ip
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the host's conntrack sysctls alone, and NodePorts off loopback.
conntrack: {maxPerCore: 0}
iptables: {localhostNodePorts: false}
nodePortAddresses: [$node_ip/32]
EOF
}

# --------------------------------------------------------------------- up
up() {
	local b t0=$SECONDS
	((EUID == 0)) || die "the real node needs root (containerd, kubelet, iptables)"
	b="$(bin_dir)"
	command -v runc >/dev/null || die "runc is missing (make cluster-tools installs it)"
	net_up
	write_configs
	if ! pid_alive containerd; then
		start containerd "$b/containerd" --config "$run/containerd.toml"
		wait_for 30 "containerd" ctr_ version
	fi
	# The sandbox image must be there before the kubelet starts any pod.
	"$here/images.sh" load pause
	if ! pid_alive kubelet; then
		start kubelet "$b/kubelet" --config "$run/kubelet.yaml" \
			--kubeconfig "$(cluster_kubeconfig)" --root-dir "$kubelet_root" \
			--cert-dir "$run/kubelet-pki" --node-ip "$node_ip" \
			--hostname-override "$node_name" --node-labels lamina.dev/node=real
	fi
	if ! pid_alive kube-proxy; then
		start kube-proxy "$b/kube-proxy" --config "$run/kube-proxy.yaml"
	fi
	wait_for 120 "node $node_name to be Ready (log: $state/logs/kubelet.log)" \
		"$b/kubectl" --kubeconfig "$(cluster_kubeconfig)" wait --for=condition=Ready \
		"node/$node_name" --timeout=2s
	log "node $node_name Ready in $((SECONDS - t0))s (containerd, kubelet, kube-proxy; logs: $state/logs)"
}

status() { [[ -S $sock ]] && ctr_ version; }

# -------------------------------------------------------------------- down
# Every process in the pods' cgroups: the containers and their sandboxes.
pod_processes() {
	[[ -d /sys/fs/cgroup/pids/kubepods ]] || return 0
	find /sys/fs/cgroup/pids/kubepods -name cgroup.procs -exec cat {} + 2>/dev/null || true
}

our_mounts() { # mount points under our directories, deepest first
	awk '{print $2}' /proc/self/mounts |
		grep -E "^($run|$state|/run/netns/cni-)" | sort -r || true
}

our_chains() { # iptables lines that name the kubelet's, kube-proxy's or CNI's chains
	local t
	for t in iptables ip6tables; do
		command -v "$t-save" >/dev/null || continue
		"$t-save" 2>/dev/null | grep -E '(KUBE|CNI)-' | sed "s/^/$t: /" || true
	done
}

strays() { # what a stopped node must not leave behind, one a line
	local p
	for p in kubelet kube-proxy containerd containerd-shim-runc-v2; do
		daemon_pids "$p" | sed "s/^/process $p: /"
	done
	pod_processes | sed 's/^/pod process: /'
	our_mounts | sed 's/^/mount: /'
	ip -o link show "$bridge" 2>/dev/null | awk '{print "interface: " $2}' || true
	ip -o link show type veth 2>/dev/null | grep -F "master $bridge" | awk '{print "interface: " $2}' || true
	our_chains
	find /sys/fs/cgroup -maxdepth 2 -name kubepods -type d 2>/dev/null | sed 's/^/cgroup: /'
}

remove_cgroup_tree() { # depth-first rmdir (cgroup directories hold only pseudo-files)
	find "$1" -depth -type d -exec rmdir {} + 2>/dev/null || true
}

down() {
	local p b
	b="$(bin_dir)"
	mkdir -p "$run"
	stop kubelet
	# The containers themselves: kill every process in the pods' cgroups, then let
	# containerd notice before it stops.
	for _ in 1 2 3; do
		p="$(pod_processes)"
		[[ -z $p ]] && break
		# shellcheck disable=SC2086
		kill -KILL $p 2>/dev/null || true
		sleep 0.5
	done
	# Forget the dead containers and sandboxes (the images stay): the next kubelet
	# starts from a clean runtime and creates its pods' sandboxes anew.
	if status >/dev/null 2>&1; then
		for p in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete --force "$p" >/dev/null 2>&1 || true; done
		p="$(ctr_ containers ls -q 2>/dev/null | tr '\n' ' ')"
		# shellcheck disable=SC2086
		[[ -z ${p// /} ]] || ctr_ containers rm $p >/dev/null 2>&1 || true
	fi
	stop kube-proxy
	if [[ -s $run/kube-proxy.yaml ]]; then
		"$b/kube-proxy" --config "$run/kube-proxy.yaml" --cleanup >/dev/null 2>&1 || true
	fi
	stop containerd
	stop containerd-shim-runc-v2
	for p in $(our_mounts); do umount "$p" 2>/dev/null || umount -l "$p" 2>/dev/null || true; done
	ip link del "$bridge" 2>/dev/null || true
	for p in $(ip -o link show type veth 2>/dev/null | grep -F "master $bridge" | awk -F': ' '{print $2}' | cut -d@ -f1); do
		ip link del "$p" 2>/dev/null || true
	done
	local t
	for t in iptables ip6tables; do
		command -v "$t-save" >/dev/null || continue
		if "$t-save" | grep -qE '(KUBE|CNI)-'; then
			"$t-save" | grep -vE '(KUBE|CNI)-' | "$t-restore"
		fi
	done
	for p in /sys/fs/cgroup/*/kubepods; do [[ -d $p ]] && remove_cgroup_tree "$p"; done
	[[ -s $run/ip_forward.before ]] && cat "$run/ip_forward.before" >/proc/sys/net/ipv4/ip_forward
	rm -rf "$run" "$kubelet_root" "$pod_logs"
	local left
	left="$(strays)"
	[[ -z $left ]] || die "the node left behind:"$'\n'"$left"
	log "node down: no process, mount, interface, iptables chain or cgroup left"
}

case "${1:-}" in
net-up) net_up ;;
up) up ;;
down) down ;;
leftovers) strays ;;
status) status >/dev/null ;;
ctr)
	shift
	ctr_ "$@"
	;;
*) usage ;;
esac
