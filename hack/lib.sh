# Helpers shared by the hack/ scripts; source it after setting `here` (this folder)
# and `log_tag` (the word in front of each log line).

log() { printf '[%s %(%H:%M:%S)T] %s\n' "$log_tag" -1 "$*" >&2; }

die() {
	log "error: $*"
	exit 1
}

wait_for() { # wait_for SECONDS WHAT CMD...: poll CMD until it succeeds, or die
	local deadline=$((SECONDS + $1)) what="$2"
	shift 2
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || die "timed out waiting for $what"
		sleep 0.5
	done
}

bin_dir() { # the built tools (kubectl, helm, ctr, ...), built first if missing
	if [[ -z "${_bin:-}" ]]; then
		_bin="$("$here/cluster-tools.sh" --print-bin-dir)"
	fi
	echo "$_bin"
}

usage() { # print the script's header comment, exit 2
	awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
	exit 2
}
