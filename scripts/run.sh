#!/usr/bin/env bash
# The default federated run: set up on first use, then `flwr run .` in Flower's simulation
# engine with NUM_SUPERNODES (default 10) clients. Arguments: -c "key=value ...",
# --run-config FILE.toml (both may be combined; later ones win) and --federation-config, e.g.
#   scripts/run.sh -c "num-server-rounds=10 data.alpha=0.1"
#   scripts/run.sh --run-config conf/cifar100-dir0.3.toml -c "seed=1"
#
# - The command line is checked first (pep_fedpt/preflight.py: run config, data folder,
#   SuperNodes vs fed.min-*-nodes): a bad one exits 2 with one line, before anything starts.
# - The run has a local SuperLink of its own (scripts/local-superlink.sh: free ports, its own
#   process group), stopped at the end unless KEEP_SUPERLINK=1.
# - Ctrl-C or SIGTERM stops the run (`flwr stop`) and the SuperLink, says where the results
#   and the checkpoint are and how to resume, and exits 130 / 143.
# Exits non-zero unless the run ends finished:completed. docs/running.md has the details.
# SKIP_SETUP=1 skips scripts/setup.sh (a .venv that is set up already).
set -euo pipefail
cd "$(dirname "$0")/.."

# NUM_SUPERNODES is named as what the user set, not as the --federation-config it becomes.
if [ -n "${NUM_SUPERNODES:-}" ] && ! [[ $NUM_SUPERNODES =~ ^[1-9][0-9]*$ ]]; then
  echo "run.sh: NUM_SUPERNODES = '$NUM_SUPERNODES' is not accepted; give the number of simulated SuperNodes, a positive integer (e.g. NUM_SUPERNODES=10; unset: 10)" >&2
  exit 2
fi
federation_config="num-supernodes=${NUM_SUPERNODES:-10}"
[ -n "${FEDERATION_CONFIG:-}" ] && federation_config="$federation_config $FEDERATION_CONFIG"
args=(--federation-config "$federation_config" "$@")

work=$(mktemp -d)
run_config="$work/run-config.toml"
log="$work/flwr-run.log"
: >"$log"
checked=""
flwr_pid=""
cleanup() {
  local code=$?
  if [ -n "$flwr_pid" ]; then kill "$flwr_pid" 2>/dev/null || true; fi
  if [ "${KEEP_SUPERLINK:-0}" = 1 ] && [ -n "${superlink_pid:-}" ]; then
    echo "run.sh: KEEP_SUPERLINK=1: SuperLink pid $superlink_pid stays on 127.0.0.1:$superlink_port (flwr needs FLWR_HOME=$FLWR_HOME FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=$superlink_port); stop it with: kill $superlink_pid"
  elif declare -F superlink_stop >/dev/null; then
    superlink_stop
  fi
  rm -rf "$work"
  exit "$code"
}
trap cleanup EXIT

# The checks, in about a second; before setup when a .venv exists, so that a typo costs
# nothing even when pyproject.toml changed.
check() {
  .venv/bin/python -m pep_fedpt.preflight --app . --write-run-config "$run_config" -- "${args[@]}"
}
if [ -x .venv/bin/python ]; then
  checked=$(check) || exit 2
fi
[ "${SKIP_SETUP:-0}" = 1 ] || scripts/setup.sh
[ -n "$checked" ] || checked=$(check) || exit 2
output_dir=$(sed -n 's/^output-dir=//p' <<<"$checked")
federation_config=$(sed -n 's/^federation-config=//p' <<<"$checked")

source scripts/flwr-env.sh
source scripts/local-superlink.sh

# An argument as a person would type it: bare when safe, else in double quotes.
shell_word() {
  if [[ $1 =~ ^[A-Za-z0-9_./=:,+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf '"%s"' "$(sed 's/[\\"$`]/\\&/g' <<<"$1")"
  fi
}

# Where this run's results are, and how to continue it (the arguments: the script's own).
report_results() {
  local out
  out=$(sed -n 's/.*pep-fedpt: results go to //p' "$log" | tail -n 1)
  [ -n "$out" ] || out=$output_dir
  if [ -n "$out" ] && [ -f "$out/checkpoint.npz" ]; then
    echo "run.sh: results and the checkpoint of the last finished round: $out"
    local words="" arg
    [ -n "${NUM_SUPERNODES:-}" ] && words="NUM_SUPERNODES=$(shell_word "$NUM_SUPERNODES") "
    [ -n "${FEDERATION_CONFIG:-}" ] && words="${words}FEDERATION_CONFIG=$(shell_word "$FEDERATION_CONFIG") "
    words="${words}scripts/run.sh "
    for arg in "$@"; do words="$words$(shell_word "$arg") "; done
    echo "run.sh: to continue it: $words-c \"resume-from='$out'\""
  elif [ -n "$out" ]; then
    echo "run.sh: no round had finished, nothing to resume ($out); run the same command again"
  else
    echo "run.sh: the run stopped before it had a result folder; nothing to resume"
  fi
}

run_id_of_log() {
  grep -oE "\brun [0-9]{6,}" "$log" | head -n 1 | grep -oE "[0-9]+" || true
}

on_signal() {
  local name=$1 code=$2 run_id
  shift 2
  trap '' INT TERM
  superlink_snapshot
  echo >&2
  echo "run.sh: $name: stopping the run" >&2
  run_id=$(run_id_of_log)
  if [ -n "$run_id" ]; then
    timeout 30 flwr stop "$run_id" >/dev/null 2>&1 || echo "run.sh: flwr stop $run_id failed" >&2
  fi
  if [ -n "$flwr_pid" ]; then
    kill "$flwr_pid" 2>/dev/null || true
    wait "$flwr_pid" 2>/dev/null || true
    flwr_pid=""
  fi
  superlink_stop
  echo "run.sh: run ${run_id:-(not started)} stopped; its SuperLink and simulation are stopped too"
  report_results "$@"
  exit "$code"
}
trap 'on_signal SIGINT 130 "$@"' INT
trap 'on_signal SIGTERM 143 "$@"' TERM

superlink_start

# In the background, so that a signal reaches this script at once (a background job
# ignores the terminal's Ctrl-C: this script stops it).
# scripts/console-filter.awk leaves out what no one can act on (Flower's note on its default
# number of SuperNodes, the simulation engine's 60-line report of a client's exception).
# mawk (Debian's awk) reads its input in blocks unless told -W interactive: lines would
# wait there, and a Ctrl-C would lose them (the run id among them).
awk_line=()
awk -W version 2>&1 | grep -q mawk && awk_line=(-W interactive)
flwr run . --stream --run-config "$run_config" --federation-config "$federation_config" \
  > >(awk ${awk_line[@]+"${awk_line[@]}"} -f scripts/console-filter.awk | tee -a "$log") 2>&1 &
flwr_pid=$!
set +e
wait "$flwr_pid"
set -e
flwr_pid=""

run_id=$(run_id_of_log)
if [ -z "$run_id" ]; then
  echo "run.sh: could not find the run id in flwr's output" >&2
  exit 1
fi
status=$(flwr ls --run-id "$run_id" --format json 2>&1 | .venv/bin/python -c '
import json, sys
text = sys.stdin.read()
try:
    print(json.loads(text)["runs"][0]["status"])
except (ValueError, KeyError, IndexError):
    print("unknown (flwr ls: " + " ".join(text.split())[:200] + ")")')
echo "run.sh: run $run_id ended $status"
if [ "$status" != "finished:completed" ]; then
  report_results "$@"
  exit 1
fi
