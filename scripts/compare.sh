#!/usr/bin/env bash
# Compare methods: set up on first use, then one `flwr run` per (method, seed) in Flower's
# simulation engine, and a table (results.md, results.csv) and a plot (accuracy.png), e.g.
#   scripts/compare.sh --run-config conf/X.toml --methods pep-fedpt,fedavg-vpt-deep \
#     --seeds 0,1,2 --out /abs/dir [--num-supernodes 10] [-c "num-server-rounds=20"] \
#     [--grid "train.lr=0.01,0.05,0.25,1"] [--val-fraction 0.1]
# --grid: per method, every grid point on the first seed, scored on the clients' validation
# splits; the best point then runs on every seed (docs/benchmark-method.md). Paths are taken
# relative to the current folder. Exits non-zero if any run failed; invoked again with the
# same arguments it skips the runs that completed. `python -m bench.report OUT` rewrites the
# tables from the result files alone. Ctrl-C, SIGTERM or SIGHUP stop the run under way with
# the SuperLink and simulation it started, say so in one line and exit 130, 143 or 129; the
# same command again goes on from the completed runs. SKIP_SETUP=1 skips scripts/setup.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ "${SKIP_SETUP:-0}" = 1 ] || "$root/scripts/setup.sh"  # as in scripts/run.sh
# Flower's environment as scripts/run.sh has it (FLWR_HOME inside the project)
pushd "$root" >/dev/null
source scripts/flwr-env.sh
# Ports of its own for the local SuperLink that `flwr run` starts, never another
# checkout's on the default 39091 (the runner stops the SuperLinks it started).
source scripts/local-superlink.sh
superlink_free_ports
popd >/dev/null
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$root/.venv/bin/python" -m bench.compare "$@"
