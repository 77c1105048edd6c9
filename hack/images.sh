#!/usr/bin/env bash
# Container images without a Docker daemon or a registry: built with buildah from
# the repository's Dockerfiles on a Debian base made by debootstrap, and imported
# into the local real node's containerd (hack/node.sh).
#
# Usage: hack/images.sh build [IMAGE...]   build (cached by content; default: all)
#        hack/images.sh load [IMAGE...]    build, then import into the node's
#                                          containerd what it does not have yet
#        hack/images.sh prune              drop images a newer import replaced
#                                          (load does it after importing)
#        hack/images.sh list               the image references, one a line
#        hack/images.sh ref IMAGE          the reference of one image
#        hack/images.sh inspect IMAGE      its configuration (buildah inspect, JSON)
#        hack/images.sh run IMAGE CMD...   run CMD in a container of it (as its user)
# IMAGE is one of: pause, operator, server-cpu; and, built only when asked for,
# server-gpu: server/Dockerfile (the GPU image) on vllm-standin, a stand-in for
# vLLM's CUDA image (which no registry here serves) made from server-cpu, so that
# the GPU Dockerfile's own steps are built and checked here (tests/e2e).
#
# Caching: buildah's layer cache keys every Dockerfile step by its text and the
# checksums of what it copies, so a warm build takes seconds and only what changed
# is rebuilt (the ~6 GB torch/vLLM layer of server-cpu only when
# hack/install-python.sh changes). An import is skipped when containerd already
# holds the same image ID (label lamina.dev/image-id).
#
# State: $LAMINA_CACHE/images/ (buildah storage, pip's download cache). Needs root
# (buildah with the overlay driver, debootstrap, chroot).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cache="${LAMINA_CACHE:-$HOME/.cache/lamina}"
state="$cache/images"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/pyproject.toml" | head -n 1)"
registry=ghcr.io/lamina-dev
debian_suite=bookworm
debian_mirror="${LAMINA_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# What debootstrap puts in the base: the Dockerfiles' own apt-get steps then find
# everything installed (they stay for builders that start from debian:bookworm-slim).
base_packages=python3,python3-venv,ca-certificates,libnuma1

log_tag=images
# shellcheck source=hack/lib.sh
source "$here/lib.sh"

declare -A refs=(
	[pause]="localhost/lamina/pause:$version"
	[operator]="$registry/lamina-operator:$version"
	[server-cpu]="$registry/lamina-server:$version-cpu"
	[vllm-standin]="localhost/lamina/vllm-openai-standin:$version"
	# not the published name: its base is a stand-in, it is built to be checked
	[server-gpu]="localhost/lamina/lamina-server:$version-standin-base"
)
declare -A dockerfiles=(
	[pause]="$here/node/pause/Dockerfile"
	[operator]="$repo/operator/Dockerfile"
	[server-cpu]="$repo/server/Dockerfile.cpu"
	[vllm-standin]="$here/vllm-standin/Dockerfile"
	[server-gpu]="$repo/server/Dockerfile"
)
# What an image is built on, when not the Debian base: the build argument naming it,
# and the image that must be built first.
declare -A base_args=(
	[vllm-standin]="BASE_IMAGE=${refs[server-cpu]}"
	[server-gpu]="VLLM_IMAGE=${refs[vllm-standin]}"
)
declare -A built_on=([vllm-standin]=server-cpu [server-gpu]=vllm-standin)
all=(pause operator server-cpu)

bah() {
	# TMPDIR: buildah keeps RUN --mount=type=cache directories (pip's downloads) there.
	TMPDIR="$state/tmp" buildah --root "$state/storage" --runroot "$state/run" \
		--storage-driver overlay "$@"
}

has_image() { bah images --quiet "$1" >/dev/null 2>&1; }

# The Debian base, from Debian's packages (no registry is reachable). Its tag is a
# hash of what went into it, so a change rebuilds it.
base_ref() {
	local key
	key="$(printf '%s\n' "$debian_suite" "$base_packages" | sha256sum | cut -c1-12)"
	echo "localhost/lamina/debian-base:$debian_suite-$key"
}

build_base() {
	local ref rootfs ctr t0=$SECONDS
	ref="$(base_ref)"
	has_image "$ref" && return 0
	command -v debootstrap >/dev/null || die "debootstrap is missing (make cluster-tools installs it)"
	rootfs="$state/tmp/rootfs"
	rm -rf "$rootfs"
	log "base: debootstrap $debian_suite ($base_packages), ~1-2 min"
	debootstrap --variant=minbase --include="$base_packages" "$debian_suite" "$rootfs" \
		"$debian_mirror" >"$state/debootstrap.log" 2>&1 ||
		{
			tail -n 20 "$state/debootstrap.log" >&2
			die "debootstrap failed (log: $state/debootstrap.log)"
		}
	rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
	ctr="$(bah from scratch)"
	bah copy "$ctr" "$rootfs/" / >/dev/null
	bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		--cmd /bin/bash "$ctr"
	bah commit --quiet --rm "$ctr" "$ref" >/dev/null
	rm -rf "$rootfs"
	log "base: $ref in $((SECONDS - t0))s"
}

# Build-time only (never in an image): this machine's CA bundle and a pip config
# pointing at it, for networks that inspect TLS with their own CA.
build_mounts() {
	local ca="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
	[[ -r $ca ]] || return 0
	printf '[global]\ncert = /run/lamina-build/ca.crt\n' >"$state/pip.conf"
	echo "--volume=$ca:/run/lamina-build/ca.crt:ro"
	echo "--volume=$state/pip.conf:/etc/pip.conf:ro"
}

build_one() {
	local name="$1" ref="${refs[$1]}" context="$repo" t0=$SECONDS mounts=()
	log "$name: buildah bud -f ${dockerfiles[$name]#"$repo/"} -t $ref"
	if [[ $name == pause ]]; then
		# A static binary from hack/node/pause/main.go is the whole image.
		context="$state/tmp/pause"
		mkdir -p "$context"
		(cd "$here/node/pause" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=mod \
			go build -trimpath -ldflags='-s -w' -o "$context/pause" .)
	fi
	mapfile -t mounts < <(build_mounts)
	bah bud --quiet --layers --force-rm --isolation chroot --network host \
		"${mounts[@]}" --build-arg "${base_args[$name]:-BASE_IMAGE=$(base_ref)}" \
		-f "${dockerfiles[$name]}" -t "$ref" "$context" >"$state/$name.log" 2>&1 ||
		{
			tail -n 30 "$state/$name.log" >&2
			die "$name: build failed (log: $state/$name.log)"
		}
	log "$name: $ref ($(image_id "$ref" | cut -c1-12)) in $((SECONDS - t0))s"
}

image_id() { bah images --no-trunc --quiet "$1" | head -n 1 | sed 's/^sha256://'; }

# with_bases IMAGE...: each image after the images it is built on.
with_bases() {
	local name chain
	for name in "$@"; do
		chain=("$name")
		while [[ -n ${built_on[${chain[0]}]:-} ]]; do
			chain=("${built_on[${chain[0]}]}" "${chain[@]}")
		done
		echo "${chain[@]}"
	done
}

build() {
	mkdir -p "$state/tmp"
	command -v buildah >/dev/null || die "buildah is missing (make cluster-tools installs it)"
	exec 8>"$state/.lock"
	flock 8
	local name done=" "
	for name in $(with_bases "$@"); do
		[[ $done == *" $name "* ]] && continue
		[[ $name == pause ]] || build_base
		build_one "$name"
		done+="$name "
	done
	# Intermediate images of superseded builds would pile up (GBs for server-cpu).
	bah rmi --prune >/dev/null 2>&1 || true
	flock -u 8
}

# Import into the node's containerd, named as the chart and the operator reference
# them, pinned (never garbage-collected: there is no registry to pull them back from).
load() {
	local name ref id archive t0
	"$here/node.sh" status >/dev/null 2>&1 || die "the real node is not running (make cluster-up)"
	for name in "$@"; do
		ref="${refs[$name]}"
		id="$(image_id "$ref")"
		if "$here/node.sh" ctr images ls "name==$ref" 2>/dev/null |
			grep -q "lamina.dev/image-id=$id"; then
			continue
		fi
		t0=$SECONDS
		archive="$state/tmp/$name.oci.tar"
		rm -f "$archive"
		bah push --quiet --disable-compression "$ref" "oci-archive:$archive:$ref" >/dev/null
		"$here/node.sh" ctr images import "$archive" >/dev/null
		rm -f "$archive"
		"$here/node.sh" ctr images label "$ref" io.cri-containerd.pinned=pinned \
			"lamina.dev/image-id=$id" >/dev/null
		log "$name: imported into the node's containerd in $((SECONDS - t0))s"
	done
	prune_replaced
}

# containerd's CRI plugin also names every image by its id (sha256:...); when a newer
# build takes the name, that second ref keeps the old image (GBs) alive forever, and the
# node ends up tainted with disk pressure. Drop id refs whose image no name points at.
prune_replaced() {
	local named ref digest
	named="$("$here/node.sh" ctr images ls 2>/dev/null | awk 'NR > 1 && $1 !~ /^sha256:/ {print $3}')"
	"$here/node.sh" ctr images ls 2>/dev/null | awk 'NR > 1 && $1 ~ /^sha256:/ {print $1, $3}' |
		while read -r ref digest; do
			grep -qxF "$digest" <<<"$named" && continue
			"$here/node.sh" ctr images rm "$ref" >/dev/null && log "removed replaced image $ref"
		done
}

names() { # names [IMAGE...]: validated names, all when none given
	local n
	(($#)) || set -- "${all[@]}"
	for n in "$@"; do [[ -n ${refs[$n]:-} ]] || die "unknown image '$n' (one of: ${all[*]})"; done
	echo "$@"
}

cmd="${1:-}"
shift || true
case "$cmd" in
build)
	# shellcheck disable=SC2046
	build $(names "$@")
	;;
load)
	# shellcheck disable=SC2046
	set -- $(names "$@")
	build "$@"
	load "$@"
	;;
prune) prune_replaced ;;
list) for n in "${all[@]}"; do echo "${refs[$n]}"; done ;;
ref)
	names "${1:?usage: images.sh ref IMAGE}" >/dev/null
	echo "${refs[$1]}"
	;;
inspect)
	names "${1:?usage: images.sh inspect IMAGE}" >/dev/null
	bah inspect --type image "${refs[$1]}"
	;;
run)
	names "${1:?usage: images.sh run IMAGE CMD...}" >/dev/null
	ctr="$(bah from --pull=never --quiet "${refs[$1]}")"
	trap 'bah rm "$ctr" >/dev/null' EXIT
	shift
	bah run --isolation chroot "$ctr" -- "$@"
	;;
*) usage ;;
esac
