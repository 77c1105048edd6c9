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

# Daemons of a script: it sets $run (pid files) and $state (logs/), and defines
# daemon_binary NAME (the daemon's executable, to find strays without a pid file).
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
		pgrep -f "$(daemon_binary "$1")( |$)" || true
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
