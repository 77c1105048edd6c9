#!/usr/bin/env bash
# Install (or reuse) the pinned TypeScript compiler and @types/node that the seed
# client test compiles with (tests/server/test_seed_client.py). Node and npm are the
# machine's (node >= 18: the seed client uses the global fetch and AbortSignal.timeout).
#
# The versions are pinned in hack/node-tools/package.json and package-lock.json
# (installed with `npm ci`, so every machine gets the same tree). They land in
#   ${LAMINA_CACHE:-$HOME/.cache/lamina}/node-tools/<versions>/node_modules
# and are reused when present with the same lock file (a warm run does no network).
# ($LAMINA_CACHE/node is the real node's state, hack/node.sh: not used here.)
#
# Usage:
#   hack/node-tools.sh        install what is missing, print the directory on stdout
#   hack/node-tools.sh bin    install what is missing, print the path of tsc
#
# Environment: NODE, NPM (default: node, npm on PATH). npm's registry, proxy and CA
# settings are npm's own (NODE_EXTRA_CA_CERTS, ~/.npmrc, npm_config_*).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
pins="$here/node-tools"
cache="${LAMINA_CACHE:-$HOME/.cache/lamina}"
node="${NODE:-node}"
npm="${NPM:-npm}"

log_tag="node-tools"
# shellcheck source=hack/lib.sh
source "$here/lib.sh"

what=dir
case "${1:-}" in
"") ;;
bin) what=bin ;;
-h | --help) usage ;;
*) die "unknown argument: $1 (try --help)" ;;
esac

command -v "$node" >/dev/null || die "node (>= 18) is required: install Node.js, or set NODE"
command -v "$npm" >/dev/null || die "npm is required: install it beside node, or set NPM"
node_version="$("$node" --version)" # v20.20.2
node_major="${node_version#v}"
node_major="${node_major%%.*}"
[[ $node_major =~ ^[0-9]+$ ]] || die "cannot read node's version from '$node_version'"
((node_major >= 18)) || die "node $node_version is too old: >= 18 is required (global fetch, AbortSignal.timeout)"

# The cache key: the pinned versions, as package.json names them.
key="$("$node" -e '
const d = require(process.argv[1]).devDependencies;
process.stdout.write(Object.keys(d).sort().map((n) => n.replace(/^@/, "").replace("/", "-") + "-" + d[n]).join("_"));
' "$pins/package.json")"
[[ -n $key ]] || die "no devDependencies in $pins/package.json"
root="$cache/node-tools/$key"
lock_sum="$(sha256sum "$pins/package-lock.json" | cut -d' ' -f1)"
tsc="$root/node_modules/.bin/tsc"

installed() { [[ -x $tsc && "$(cat "$root/.lock-sha256" 2>/dev/null)" == "$lock_sum" ]]; }

if ! installed; then
	t0=$SECONDS
	log "installing $key with npm ci into $root"
	mkdir -p "$cache/node-tools"
	tmp="$(mktemp -d "$cache/node-tools/.install-XXXXXX")"
	chmod 755 "$tmp"
	trap 'rm -rf "$tmp"' EXIT
	cp "$pins/package.json" "$pins/package-lock.json" "$tmp/"
	(cd "$tmp" && "$npm" ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2) ||
		die "npm ci failed in $tmp (registry: $("$npm" config get registry 2>/dev/null))"
	[[ -x $tmp/node_modules/.bin/tsc ]] || die "npm ci installed no tsc"
	echo "$lock_sum" >"$tmp/.lock-sha256"
	# Into place in one rename; a concurrent install that got there first wins.
	rm -rf "$root.old"
	if [[ -e $root ]]; then mv "$root" "$root.old"; fi
	mv -T "$tmp" "$root" 2>/dev/null || installed || die "could not move $tmp to $root"
	rm -rf "$root.old"
	installed || die "the install in $root is incomplete"
	log "installed $key in $((SECONDS - t0))s ($("$tsc" --version))"
fi

case "$what" in
dir) echo "$root" ;;
bin) echo "$tsc" ;;
esac
