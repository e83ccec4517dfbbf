# Sourced by scripts/run.sh (after scripts/flwr-env.sh): a local SuperLink of this script's
# own, for Flower's simulation. `flwr run` would otherwise start one on the fixed port
# 127.0.0.1:39091 and leave it running, and a second checkout's `flwr run` would attach to
# it. Here each run gets free ports (FLWR_LOCAL_SUPERLINK_HTTP_API_PORT and
# FLWR_LOCAL_CONTROL_API_PORT, which flwr reads), the SuperLink is started by this script in
# a process group of its own, and clean-up stops exactly that group, by its id.
#
# Its state lives in $FLWR_HOME/local-superlink/ (state.db, superlink.log, and run.sh.pid:
# "<pid> <port>" while it runs). One checkout runs one SuperLink at a time: while the one in
# run.sh.pid is alive, another start is refused with its pid and port.

superlink_dir="$FLWR_HOME/local-superlink"
superlink_pidfile="$superlink_dir/run.sh.pid"
superlink_pid=""
superlink_port=""
superlink_tree=""  # its descendants seen so far (a Ray worker may outlive its parent)

# The pid and port in run.sh.pid when that process is still a SuperLink; else nothing.
superlink_running() {
  local pid port
  [ -f "$superlink_pidfile" ] || return 1
  read -r pid port <"$superlink_pidfile" || true
  [ -n "${pid:-}" ] && superlink_alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q flower-superlink || return 1
  echo "$pid ${port:-?}"
}

# Start the SuperLink on two free ports and wait until it answers (at most 30 s).
superlink_start() {
  local other ports deadline
  if other=$(superlink_running); then
    echo "run.sh: this checkout's SuperLink is still running (pid ${other% *}, 127.0.0.1:${other#* }, FLWR_HOME=$FLWR_HOME): another scripts/run.sh of this checkout is using it, or KEEP_SUPERLINK=1 kept it. Wait for that run, or stop it with: kill ${other% *}" >&2
    return 1
  fi
  superlink_free_ports
  superlink_port=$FLWR_LOCAL_SUPERLINK_HTTP_API_PORT
  mkdir -p "$superlink_dir"
  # setsid: a process group of its own (its pid is the group id), out of reach of the
  # terminal's Ctrl-C, so that this script decides how the run ends.
  setsid flower-superlink --insecure --simulation --isolation subprocess \
    --host 127.0.0.1 --port "$superlink_port" \
    --log-file "$superlink_dir/superlink.log" --database "$superlink_dir/state.db" \
    </dev/null >/dev/null 2>&1 &
  superlink_pid=$!
  echo "$superlink_pid $superlink_port" >"$superlink_pidfile"
  deadline=$((SECONDS + 30))
  until curl -sf "http://127.0.0.1:$superlink_port/health" >/dev/null 2>&1; do
    if ! superlink_alive "$superlink_pid" || [ "$SECONDS" -ge "$deadline" ]; then
      echo "run.sh: the local SuperLink did not start; its log: $superlink_dir/superlink.log" >&2
      tail -n 20 "$superlink_dir/superlink.log" >&2 2>/dev/null || true
      superlink_stop
      return 1
    fi
    sleep 0.2
  done
  echo "run.sh: local SuperLink pid $superlink_pid on 127.0.0.1:$superlink_port (FLWR_HOME=$FLWR_HOME)"
}

# Two free ports for flwr's local SuperLink (HTTP API, Control API), exported where flwr
# reads them: a SuperLink that flwr starts (scripts/compare.sh) uses them, not 39091.
superlink_free_ports() {
  local ports
  ports=$("${PEP_FEDPT_PYTHON:-.venv/bin/python}" -m pep_fedpt.local_flwr free-ports 2)
  export FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=${ports% *}
  export FLWR_LOCAL_CONTROL_API_PORT=${ports#* }
}

# Whether a process runs (a zombie, dead but not yet reaped, does not).
superlink_alive() {
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "${state:0:1}" != Z ]
}

# Every descendant of a pid (the SuperExec, the simulation, Ray), by parent id.
superlink_descendants() {
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do
    echo "$child"
    superlink_descendants "$child"
  done
}

# Remember the SuperLink's descendants now, before stopping a run re-parents any of them.
superlink_snapshot() {
  [ -n "$superlink_pid" ] || return 0
  superlink_tree="$superlink_tree $(superlink_descendants "$superlink_pid" | tr '\n' ' ')"
}

# Stop the SuperLink this script started and everything under it; nothing else: SIGTERM,
# then SIGKILL after a grace, to it, every descendant remembered or still found, and every
# process left in a session one of them leads (a simulation or Ray worker re-parented
# before the snapshot keeps its session). pep_fedpt/local_flwr.py's stop_superlinks.
superlink_stop() {
  local pids pid
  [ -n "$superlink_pid" ] || return 0
  superlink_snapshot
  pids=$(echo "$superlink_pid $superlink_tree" | tr ' ' '\n' | sort -un | tr '\n' ' ')
  # shellcheck disable=SC2086  # one argument per pid
  if ! "${PEP_FEDPT_PYTHON:-.venv/bin/python}" -m pep_fedpt.local_flwr stop-tree $pids; then
    kill -KILL -- "-$superlink_pid" 2>/dev/null || true
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
  fi
  wait "$superlink_pid" 2>/dev/null || true
  rm -f "$superlink_pidfile"
  superlink_pid=""
}
