#!/usr/bin/env bash
# Build the local Kubernetes toolchain from Go modules (no prebuilt downloads):
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
#   kwok, kwokctl, helm, and for the real node: kubelet, kube-proxy,
#   containerd (+ containerd-shim-runc-v2, ctr) and the CNI plugins (bridge,
#   host-local, loopback, portmap). runc, iptables, conntrack and the image
#   tools (debootstrap, buildah) come from Debian's packages, installed when missing.
# Versions are pinned in hack/tools.env. Binaries land in
#   ${LAMINA_CACHE:-$HOME/.cache/lamina}/tools/<key>/bin
# and are reused when present (a warm run takes well under a second).
#
# Usage:
#   hack/cluster-tools.sh                 build what is missing, print progress
#   hack/cluster-tools.sh --print-bin-dir build what is missing, then print the
#                                         bin dir on stdout (progress on stderr)
#
# Binaries you already have win over building (only what is still missing
# gets built):
#   KUBEBUILDER_ASSETS=DIR  etcd, kube-apiserver and, if present there,
#                           kube-controller-manager, kube-scheduler, kubectl
#   KUBECTL=PATH HELM=PATH KWOKCTL=PATH KWOK=PATH
# When any of these is set, the bin dir printed is a directory of symlinks
# (tools/custom-<hash>/bin) mixing your binaries with built ones.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/tools.env
source "$here/tools.env"

cache="${LAMINA_CACHE:-$HOME/.cache/lamina}"
key="k8s-${KUBE_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_containerd-${CONTAINERD_VERSION}_cni-${CNI_PLUGINS_VERSION}"
root="$cache/tools/$key"
bin="$root/bin"

log_tag=cluster-tools
# shellcheck source=hack/lib.sh
source "$here/lib.sh"

print_bin_dir=0
case "${1:-}" in
--print-bin-dir) print_bin_dir=1 ;;
"") ;;
-h | --help)
	sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
	exit 0
	;;
*) die "unknown argument: $1 (try --help)" ;;
esac

# ---------------------------------------------------------------- overrides
declare -A override=()
if [[ -n "${KUBEBUILDER_ASSETS:-}" ]]; then
	for t in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl; do
		if [[ -x "$KUBEBUILDER_ASSETS/$t" ]]; then
			override[$t]="$KUBEBUILDER_ASSETS/$t"
		elif [[ $t == etcd || $t == kube-apiserver ]]; then
			die "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS has no executable $t"
		fi
	done
fi
for pair in kubectl:KUBECTL helm:HELM kwokctl:KWOKCTL kwok:KWOK; do
	t="${pair%%:*}" var="${pair#*:}"
	if [[ -n "${!var:-}" ]]; then
		p="$(command -v -- "${!var}" || true)"
		[[ -n $p && -x $p ]] || die "$var=${!var} is not an executable"
		override[$t]="$p"
	fi
done

needed() { # needed TOOL... -> true if any of them is not overridden
	local t
	for t in "$@"; do [[ -z "${override[$t]:-}" ]] && return 0; done
	return 1
}

# ------------------------------------------------------------------- builds
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=mod"
export GOTOOLCHAIN=local CGO_ENABLED=0
command -v go >/dev/null || die "the Go toolchain (go >= 1.26) is required to build the tools"

# scratch_module DIR NAME: a fresh, empty module to build other modules' mains.
scratch_module() {
	rm -rf "$1"
	mkdir -p "$1"
	(cd "$1" && go mod init "lamina.local/tools/$2" >/dev/null 2>&1)
}

# have TOOL...: all built already?
have() {
	local t
	for t in "$@"; do [[ -x "$bin/$t" ]] || return 1; done
}

# finish SRC_OUT TOOL...: move freshly built binaries into bin/ atomically.
finish() {
	local out="$1" t
	shift
	for t in "$@"; do mv -f "$out/$t" "$bin/$t"; done
}

build_etcd() {
	have etcd && return 0
	local m="$root/src/etcd" t0=$SECONDS
	log "etcd $ETCD_VERSION: fetching modules"
	scratch_module "$m" etcd
	(cd "$m" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" 2>&1 | tail -n 3 >&2)
	log "etcd $ETCD_VERSION: compiling"
	(cd "$m" && go build -trimpath -ldflags='-s -w' -o "$m/out/etcd" go.etcd.io/etcd/server/v3)
	finish "$m/out" etcd
	log "etcd: done in $((SECONDS - t0))s"
}

build_kube() {
	local tools=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy) want=() t
	for t in "${tools[@]}"; do needed "$t" && ! have "$t" && want+=("$t"); done
	((${#want[@]})) || return 0
	local m="$root/src/kube" t0=$SECONDS
	local staging="v0.${KUBE_VERSION#v1.}"
	log "kubernetes $KUBE_VERSION (${want[*]}): fetching modules"
	scratch_module "$m" kube
	local gomod
	gomod="$(cd "$m" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
		sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
	[[ -f $gomod ]] || die "could not download k8s.io/kubernetes@$KUBE_VERSION"
	# k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces
	# them with ./staging/src/...; a consumer must point them at the published
	# release of the same version instead (v1.N.M -> v0.N.M).
	local reps=()
	while read -r mod; do
		reps+=("-replace=$mod=$mod@$staging")
	done < <(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/.*#\1#p' "$gomod")
	((${#reps[@]})) || die "found no staging replace block in k8s.io/kubernetes go.mod"
	(cd "$m" && go mod edit "-require=k8s.io/kubernetes@$KUBE_VERSION" "${reps[@]}")
	local pkgs=()
	for t in "${want[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$t"); done
	(cd "$m" && go get "${pkgs[@]/%/@$KUBE_VERSION}" 2>&1 | tail -n 3 >&2)
	local v="$KUBE_VERSION" minor="${KUBE_VERSION#v1.}"
	minor="${minor%%.*}"
	local ld="-s -w" p
	# kwokctl reads `<binary> --version` to choose flags, so the binaries must
	# report their real version (a module build would say v0.0.0-master).
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor"
		ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
	done
	log "kubernetes $KUBE_VERSION: compiling ${want[*]} (the slow part: ~10-25 min cold on 2 cores)"
	(cd "$m" && go build -trimpath -ldflags="$ld" -o "$m/out/" "${pkgs[@]}")
	finish "$m/out" "${want[@]}"
	log "kubernetes: done in $((SECONDS - t0))s"
}

build_kwok() {
	local want=() t
	for t in kwok kwokctl; do needed "$t" && ! have "$t" && want+=("$t"); done
	((${#want[@]})) || return 0
	local m="$root/src/kwok" t0=$SECONDS pkgs=()
	log "kwok $KWOK_VERSION (${want[*]}): fetching modules"
	scratch_module "$m" kwok
	for t in "${want[@]}"; do pkgs+=("sigs.k8s.io/kwok/cmd/$t@$KWOK_VERSION"); done
	(cd "$m" && go get "${pkgs[@]}" 2>&1 | tail -n 3 >&2)
	log "kwok $KWOK_VERSION: compiling"
	(cd "$m" && go build -trimpath -ldflags="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" \
		-o "$m/out/" "${pkgs[@]%@*}")
	finish "$m/out" "${want[@]}"
	log "kwok: done in $((SECONDS - t0))s"
}

build_containerd() {
	local tools=(containerd containerd-shim-runc-v2 ctr)
	have "${tools[@]}" && return 0
	local m="$root/src/containerd" t0=$SECONDS mod=github.com/containerd/containerd/v2
	log "containerd $CONTAINERD_VERSION: fetching modules"
	scratch_module "$m" containerd
	(cd "$m" && go get "$mod/cmd/containerd@$CONTAINERD_VERSION" 2>&1 | tail -n 3 >&2)
	log "containerd $CONTAINERD_VERSION: compiling ${tools[*]}"
	# no_btrfs: the btrfs snapshotter needs cgo headers; overlayfs is what we use.
	(cd "$m" && go build -trimpath -tags no_btrfs \
		-ldflags="-s -w -X $mod/version.Version=$CONTAINERD_VERSION" \
		-o "$m/out/" "${tools[@]/#/$mod/cmd/}")
	finish "$m/out" "${tools[@]}"
	log "containerd: done in $((SECONDS - t0))s"
}

build_cni() {
	local plugins=(main/bridge main/loopback ipam/host-local meta/portmap) names=() p
	for p in "${plugins[@]}"; do names+=("${p#*/}"); done
	have "${names[@]/#/cni/}" && return 0
	local m="$root/src/cni" t0=$SECONDS mod=github.com/containernetworking/plugins
	log "CNI plugins $CNI_PLUGINS_VERSION: fetching modules"
	scratch_module "$m" cni
	local pkgs=("${plugins[@]/#/$mod/plugins/}")
	# Each package at the pinned version: a bare path means @upgrade, which conflicts
	# with the pin as soon as the proxy serves a newer release.
	(cd "$m" && go get "${pkgs[@]/%/@$CNI_PLUGINS_VERSION}" 2>&1 | tail -n 3 >&2)
	log "CNI plugins $CNI_PLUGINS_VERSION: compiling ${names[*]}"
	(cd "$m" && go build -trimpath -ldflags="-s -w" -o "$m/out/" "${pkgs[@]}")
	mkdir -p "$bin/cni"
	for p in "${names[@]}"; do mv -f "$m/out/$p" "$bin/cni/$p"; done
	log "CNI plugins: done in $((SECONDS - t0))s"
}

# Debian packages the real node and the image build use (we run as root).
debian_packages() {
	local want=() cmd pkg pair
	for pair in runc:runc iptables:iptables conntrack:conntrack debootstrap:debootstrap buildah:buildah; do
		cmd="${pair%%:*}" pkg="${pair#*:}"
		command -v "$cmd" >/dev/null || want+=("$pkg")
	done
	((${#want[@]})) || return 0
	((EUID == 0)) || die "need Debian packages ${want[*]}: run as root or install them"
	log "installing Debian packages: ${want[*]}"
	apt-get update -qq >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}" >&2
}

build_helm() {
	have helm && return 0
	local m="$root/src/helm" t0=$SECONDS
	log "helm $HELM_VERSION: fetching modules"
	scratch_module "$m" helm
	(cd "$m" && go get "$HELM_MODULE/cmd/helm@$HELM_VERSION" 2>&1 | tail -n 3 >&2)
	log "helm $HELM_VERSION: compiling"
	(cd "$m" && go build -trimpath \
		-ldflags="-s -w -X $HELM_MODULE/internal/version.version=$HELM_VERSION" \
		-o "$m/out/helm" "$HELM_MODULE/cmd/helm")
	finish "$m/out" helm
	log "helm: done in $((SECONDS - t0))s"
}

mkdir -p "$bin"
exec 9>"$root/.lock"
if ! flock -n 9; then
	log "another build holds $root/.lock; waiting"
	flock 9
fi
t_all=$SECONDS
needed etcd && build_etcd
build_kube
build_kwok
needed helm && build_helm
build_containerd
build_cni
debian_packages
rm -rf "$root/src" # sources are in the Go module cache; compiled objects in GOCACHE
flock -u 9

# ------------------------------------------------------------- the bin dir
all=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kwokctl helm
	kubelet kube-proxy containerd containerd-shim-runc-v2 ctr)
out="$bin"
if ((${#override[@]})); then
	spec="$(for t in "${all[@]}"; do echo "$t=${override[$t]:-$bin/$t}"; done)"
	out="$cache/tools/custom-$(sha256sum <<<"$spec$key" | cut -c1-12)/bin"
	mkdir -p "$out"
	for t in "${all[@]}"; do ln -sfn "${override[$t]:-$bin/$t}" "$out/$t"; done
	ln -sfn "$bin/cni" "$out/cni"
fi
for t in "${all[@]}"; do [[ -x "$out/$t" ]] || die "missing $out/$t"; done
if ((SECONDS - t_all > 2)) || ((print_bin_dir == 0)); then
	log "tools ready in $out ($((SECONDS - t_all))s)"
fi
if ((print_bin_dir)); then
	echo "$out"
fi
