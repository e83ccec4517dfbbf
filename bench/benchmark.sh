#!/usr/bin/env bash
# Issue 11's whole CPU accuracy benchmark, one command, resumable (docs/benchmark.md):
#   bench/benchmark.sh [OUT]      # OUT defaults to ~/.cache/pep-fedpt/bench/cifar10-v2
# In this order (so that a cut-short run has a complete first setting and its ablations):
# 1. Dirichlet alpha = 0.1 (alpha = 0.5 runs after the ablations), on
#    conf/cifar10-bench.toml (10 training clients + 2 held out): every ViT method gets the same learning-rate grid (GRID), run on the first seed
#    and scored on the clients' validation splits; the chosen point then runs on every seed
#    (SEEDS) and is scored on test.
# 2. One-seed ablations of PEP-FedPT's choices at the point its own alpha = 0.1 search
#    chose (bench/chosen.py reads it from the result files), one sweep per folder
#    ablation-NAME; only non-default values run (the reference is PEP-FedPT's seed-0 run
#    at alpha = 0.1). The two with the largest one-seed effects in the first benchmark
#    (one-hot training weights; the prior at test, the extension) run on every seed,
#    against the reference over the same seeds.
# 3. Dirichlet alpha = 0.5, as 1; then the one-hot training weights again at alpha = 0.5,
#    on every seed, at the point PEP-FedPT's alpha = 0.5 search chose, into
#    ablation-alpha-0.5-train-weights (the reference: PEP-FedPT's runs at alpha = 0.5).
# 4. bench.report per folder, bench.collect into bench/results/cifar10 (the small result
#    files, no weights), bench.paste rewrites the README's and docs' pasted tables.
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

ablation() {  # ALPHA NAME SWEEP [SEEDS]: PEP-FedPT at the point its ALPHA search chose
  local at folder="$out/ablation-$2"
  [[ $1 == 0.1 ]] || folder="$out/ablation-alpha-$1-$2"  # alpha = 0.1's names stay as they were
  at=$(PYTHONPATH="$root" "$root/.venv/bin/python" -m bench.chosen "$out/alpha-$1" pep-fedpt) \
    || { status=1; return 0; }  # no chosen point (bench.chosen said why): skip this one
  echo "bench/benchmark.sh: ablation $2 of pep-fedpt at $at (its alpha = $1 choice)"
  "${compare[@]}" --methods pep-fedpt --seeds "${4:-0}" -c "$cfg data.alpha=$1 $at" \
    --sweep "$3" --out "$folder" || status=1
}
# What the client's prior contributes first (a benchmark cut short keeps these).
ablation 0.1 mixing-prior "prompt.mixing-prior='uniform'"
ablation 0.1 test-prior "prompt.test-prior-correction=true" "$seeds"
ablation 0.1 train-weights "prompt.train-weights='onehot'" "$seeds"
ablation 0.1 aggregation "fed.class-prompt-aggregation='fedavg'"
ablation 0.1 tau "prompt.tau=0.03,0.3,1.0"
ablation 0.1 prior-smoothing "prompt.prior-smoothing=0.1,10.0"
ablation 0.1 class-length "prompt.class-length=2,4"
ablation 0.1 ccmp-blocks "prompt.ccmp-blocks='1-L','4'"
ablation 0.1 refresh "fed.prototype-refresh-every=2"
ablation 0.1 wire-dtype "fed.wire-dtype='float16'"
setting 0.5
# Does one-hot's lead at alpha = 0.1 hold at alpha = 0.5? (every seed, against alpha-0.5)
ablation 0.5 train-weights "prompt.train-weights='onehot'" "$seeds"

for folder in "$out"/*/; do
  PYTHONPATH="$root" "$root/.venv/bin/python" -m bench.report "$folder" >/dev/null
done
PYTHONPATH="$root" "$root/.venv/bin/python" -m bench.collect "$out" "$root/bench/results/cifar10"
# The pages' blocks name their commands relative to the repository root.
(cd "$root" && "$root/.venv/bin/python" -m bench.paste) || status=1
exit $status
