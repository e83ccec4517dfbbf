"""Per-message cold start of a ClientApp process against one round of compute.

Flower 1.42 starts a fresh ``flwr-clientapp`` process for every message in deployment, so
each round a node pays: process start, imports, building the backbone, loading its
weights, loading the data and loading z(x) from the node's disk cache, before it trains.
This measures each stage in fresh child processes, for the tiny default config
(``RunConfig()``, the pyproject defaults: 32 px ViT, width 96, depth 4, digits) and
compares it with one round's compute (1 local epoch on one partition).

Run from the repository root::

    python bench/cold_start.py                      # 2 partitions, 3 cold processes
    python bench/cold_start.py --num-partitions 10 --repeats 5

The first child runs with an empty cache folder (it computes z(x) and writes it); the
next ones are the steady state of every later round (z(x) loaded from disk). The default
``model.pretrained = "local:0-4"`` weights are a state-dict file loaded into timm's ViT;
the bench loads a same-shaped state dict from a file, so that it never pre-trains.
"""

from __future__ import annotations

import time

_T0 = time.time()  # as early as possible: the interpreter is up, nothing imported yet

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def bench_config():  # -> RunConfig; imported late so that the child times its imports
    """The default run config, with weights loaded from a file rather than pre-trained."""
    import dataclasses

    from pep_fedpt.config import RunConfig

    cfg = RunConfig()
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained="random"))


def child(partition_id: int, num_partitions: int, cache_dir: str, checkpoint: str) -> None:
    """One cold ClientApp-like process: time every stage, print them as JSON."""
    sys.path.insert(0, str(ROOT))  # this checkout, not an installed copy
    stages: dict[str, float] = {}
    clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages[name] = now - clock
        clock = now

    import torch

    import client_app.app  # noqa: F401  (what flwr-clientapp imports: flwr, torch, timm, app)
    from pep_fedpt.data import load_client_data
    from pep_fedpt.engine import compute_query_features, pick_device, train_epochs
    from pep_fedpt.feature_cache import FeatureStore
    from pep_fedpt.methods.common import build_model
    from pep_fedpt.methods.pep_fedpt import ccmp_weights_fn
    from pep_fedpt.models import backbone_fingerprint, create_backbone, image_spec

    stage("imports")
    cfg = bench_config()
    device = pick_device()
    backbone = create_backbone(cfg.model, cfg.seed).to(device)
    stage("model build")
    backbone.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True))
    stage("weight load")
    data = load_client_data(cfg.data, image_spec(backbone), cfg.seed, partition_id, num_partitions)
    stage("data load")
    model = build_model(backbone, cfg, data.num_classes).to(device)
    store = FeatureStore(Path(cache_dir))
    key = f"{backbone_fingerprint(cfg.model, cfg.seed)}|{data.cache_key}|train|{device.type}"
    # (the ClientApp's key also hashes the example indices; same cost class: microseconds)
    features = store.get(key, lambda: compute_query_features(model, data.train, device))
    stage("z(x) computed" if store.computed else "z(x) cache load")
    weights = ccmp_weights_fn(
        torch.randn(data.num_classes, backbone.embed_dim, device=device),
        torch.full((data.num_classes,), -float(torch.log(torch.tensor(data.num_classes)))),
        cfg.prompt.tau,
        onehot_in_training=False,
    )
    train_epochs(model, data.train, features, weights, cfg.train, device, seed=1)
    stage("train 1 round (cold)")
    train_epochs(model, data.train, features, weights, cfg.train, device, seed=2)
    stage("train 1 round (warm)")
    print(json.dumps({"start": _T0, "stages": stages, "examples": len(data.train)}))


def run_child(args: argparse.Namespace, cache_dir: str, checkpoint: str) -> dict:
    spawned = time.time()
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            f"--partition-id={args.partition_id}",
            f"--num-partitions={args.num_partitions}",
            f"--cache-dir={cache_dir}",
            f"--checkpoint={checkpoint}",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["stages"] = {"process start": result["start"] - spawned, **result["stages"]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--partition-id", type=int, default=0)
    parser.add_argument("--num-partitions", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="cold processes after the first")
    parser.add_argument("--cache-dir", default="")
    parser.add_argument("--checkpoint", default="")
    args = parser.parse_args()
    if args.child:
        child(args.partition_id, args.num_partitions, args.cache_dir, args.checkpoint)
        return

    sys.path.insert(0, str(ROOT))
    import torch

    from pep_fedpt.engine import pick_device
    from pep_fedpt.models import create_backbone

    with tempfile.TemporaryDirectory(prefix="pep-fedpt-bench-") as tmp:
        cfg = bench_config()
        checkpoint = str(Path(tmp) / "backbone.pth")  # plays model.pretrained = <path>
        torch.save(create_backbone(cfg.model, cfg.seed).state_dict(), checkpoint)
        cache_dir = str(Path(tmp) / "features")
        first = run_child(args, cache_dir, checkpoint)  # empty cache: computes z(x)
        runs = [run_child(args, cache_dir, checkpoint) for _ in range(args.repeats)]

    names = list(runs[0]["stages"])
    median = {n: statistics.median(r["stages"][n] for r in runs) for n in names}
    cold = sum(v for n, v in median.items() if not n.startswith("train"))
    compute = median["train 1 round (cold)"]
    print(
        f"\ncold start per message, {cfg.model.name} {cfg.model.img_size}px "
        f"d={cfg.model.embed_dim} L={cfg.model.depth}, {cfg.data.dataset}, partition "
        f"{args.partition_id}/{args.num_partitions} ({runs[0]['examples']} train examples), "
        f"median of {len(runs)} fresh processes, device {pick_device()}\n"
    )
    print("| stage | seconds |\n|---|---|")
    for name in names:
        print(f"| {name} | {median[name]:.3f} |")
    missed = first["stages"]["z(x) computed"]
    print(f"| (first message only: z(x) computed, empty cache) | {missed:.3f} |")
    print(f"\ncold start (process start .. z(x) cache load): {cold:.3f} s")
    print(f"one round's compute (train, cold process):    {compute:.3f} s")
    print(f"ratio cold start / round compute:             {cold / compute:.2f}")
    print(
        "ratio cold start / (cold start + compute):     "
        f"{cold / (cold + compute):.2f} of each message's time"
    )


if __name__ == "__main__":
    main()
