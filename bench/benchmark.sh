#!/usr/bin/env bash
# Issue 11's whole CPU accuracy benchmark, one command, resumable (docs/benchmark.md):
#   bench/benchmark.sh [OUT]      # OUT defaults to ~/.cache/pep-fedpt/bench/cifar10-v2
# In this order (so that a cut-short run has a complete first setting and its ablations):
# 1. Dirichlet alpha = 0.1 (alpha = 0.5 runs last, after the ablations), on
#    conf/cifar10-bench.toml (10 training clients + 2 held out): every ViT method gets the same learning-rate grid (GRID), run on the first seed
#    and scored on the clients' validation splits; the chosen point then runs on every seed
#    (SEEDS) and is scored on test.
# 2. One-seed ablations of PEP-FedPT's choices at the point its own alpha = 0.1 search
#    chose (bench/chosen.py reads it from the result files), one sweep per folder; only
#    non-default values run (the reference is PEP-FedPT's seed-0 run at alpha = 0.1).
#    The two with the largest one-seed effects in the first benchmark (one-hot training
#    weights; the prior at test, the extension) run on every seed, against the reference
#    over the same seeds.
# 3. bench.report per folder, bench.collect into bench/results/cifar10 (the small result
#    files, no weights), bench.tables rewrites the README's and docs' tables from them.
# Interrupted, run it again: completed runs with the same config are skipped.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/cifar10-data.sh"  # sets $cache, $data
out="${1:-$cache/bench/cifar10-v2}"
mkdir -p "$out"
conf="$root/conf/cifar10-bench.toml"
seeds="${SEEDS:-0,1,2}"
grid="${GRID:-train.lr=0.01,0.05,0.25,1}"
methods="pep-fedpt,fedavg-vpt-shallow,fedavg-vpt-deep,fedprox-vpt,head-only,fedavg-vpt-prior,local,sgpt,pfedpg"
cfg="data.data-dir='$data'"
compare=("$root/scripts/compare.sh" --run-config "$conf" --num-supernodes 12 --val-fraction 0.1)
status=0

setting() {  # ALPHA
  "${compare[@]}" --methods "${METHODS:-$methods}" --seeds "$seeds" --grid "$grid" \
    -c "$cfg data.alpha=$1" --out "$out/alpha-$1" || status=1
}
setting 0.1

chosen=$(PYTHONPATH="$root" "$root/.venv/bin/python" -m bench.chosen "$out/alpha-0.1" pep-fedpt)
echo "bench/benchmark.sh: ablations of pep-fedpt at $chosen (its alpha = 0.1 choice)"
ablation() {  # NAME SWEEP [SEEDS]
  "${compare[@]}" --methods pep-fedpt --seeds "${3:-0}" -c "$cfg data.alpha=0.1 $chosen" \
    --sweep "$2" --out "$out/ablation-$1" || status=1
}
# What the client's prior contributes first (a benchmark cut short keeps these).
ablation mixing-prior "prompt.mixing-prior='uniform'"
ablation test-prior "prompt.test-prior-correction=true" "$seeds"
ablation train-weights "prompt.train-weights='onehot'" "$seeds"
ablation aggregation "fed.class-prompt-aggregation='fedavg'"
ablation tau "prompt.tau=0.03,0.3,1.0"
ablation prior-smoothing "prompt.prior-smoothing=0.1,10.0"
ablation class-length "prompt.class-length=2,4"
ablation ccmp-blocks "prompt.ccmp-blocks='1-L','4'"
ablation refresh "fed.prototype-refresh-every=2"
ablation wire-dtype "fed.wire-dtype='float16'"
setting 0.5

for folder in "$out"/*/; do
  PYTHONPATH="$root" "$root/.venv/bin/python" -m bench.report "$folder" >/dev/null
done
PYTHONPATH="$root" "$root/.venv/bin/python" -m bench.collect "$out" "$root/bench/results/cifar10"
PYTHONPATH="$root" "$root/.venv/bin/python" -m bench.tables "$root/bench/results/cifar10"
exit $status
