"""Per-message cold start of a ClientApp process against one round of compute.

Flower 1.42 starts a fresh ``flwr-clientapp`` process for every message in deployment, so
each round a node pays: process start, imports, building the backbone, loading its
weights, loading the data and loading z(x) from the node's disk cache, before it trains.
This measures each stage in fresh child processes, for the tiny default config
(``RunConfig()``, the pyproject defaults: 32 px ViT, width 96, depth 4, digits) and
compares it with one round's compute (1 local epoch on one partition).

The commands and what they showed: bench/probes/README.md.

``--image-folder N`` writes N synthetic JPEG files in a temporary ImageFolder tree
(``data.dataset = "imagefolder"``), so that data loading decodes and resizes files as a
real image data set does (the default digits set is one in-memory tensor).

The first child runs with an empty cache folder (it computes z(x) and writes it); the
next ones are the steady state of every later round (z(x) loaded from disk). The default
``model.pretrained = "local:0-4"`` weights are a state-dict file loaded into timm's ViT;
the bench loads a same-shaped state dict from a file, so that it never pre-trains.

``--out`` writes every process's stage seconds, their medians, the setting and the
machine (``bench.probes.result_file.header``); the medians are printed.
"""

from __future__ import annotations

import time

_T0 = time.time()  # as early as possible: the interpreter is up, nothing imported yet

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def bench_config(image_dir: str = "", overrides: str = ""):  # -> RunConfig (imported late)
    """The default run config, with weights loaded from a file rather than pre-trained;
    ``image_dir``: an ImageFolder tree instead of the digits; ``overrides``: ``-c``'s
    ``key=value`` pairs on top (e.g. ``model.img-size=224 data.pixel-cache=false``)."""
    from pep_fedpt.config import RunConfig
    from pep_fedpt.preflight import parse_config_args

    flat = {**RunConfig().to_flat(), "model.pretrained": "random"}
    if image_dir:
        flat.update({"data.dataset": "imagefolder", "data.data-dir": image_dir})
    flat.update(parse_config_args([overrides]) if overrides.strip() else {})
    return RunConfig.from_flat(flat)


def write_image_folder(root: Path, count: int, classes: int = 10, size: int = 96) -> None:
    """``count`` random-noise JPEGs in ``root/train/<class>/``: decoding and resizing cost
    what real photos of that size cost."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / "train" / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


def child(
    partition_id: int,
    num_partitions: int,
    cache_dir: str,
    checkpoint: str,
    image_dir: str,
    overrides: str = "",
) -> None:
    """One cold ClientApp-like process: time every stage, print them as JSON."""
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
    from pep_fedpt.data.client_data import partition_cache_dir
    from pep_fedpt.data.pixel_cache import node_splits
    from pep_fedpt.engine import compute_query_features, pick_device, train_epochs
    from pep_fedpt.feature_cache import FeatureStore
    from pep_fedpt.methods.common import build_model
    from pep_fedpt.methods.pep_fedpt import ccmp_weights_fn
    from pep_fedpt.models import backbone_fingerprint, create_backbone, image_spec

    stage("imports")
    cfg = bench_config(image_dir, overrides)
    device = pick_device()
    backbone = create_backbone(cfg.model, cfg.seed).to(device)
    stage("model build")
    backbone.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True))
    stage("weight load")
    data = load_client_data(
        cfg.data,
        image_spec(backbone),
        cfg.seed,
        partition_id,
        num_partitions,
        partition_cache_dir(Path(cache_dir)),
    )
    # As PromptClient reads it: decoded images from the node's pixel cache (image files).
    data = node_splits(data, cfg.data, Path(cache_dir))
    prepare = getattr(data.train, "prepare", None)
    if callable(prepare):
        prepare()
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


def run_child(
    args: argparse.Namespace, cache_dir: str, checkpoint: str, image_dir: str = ""
) -> dict:
    spawned = time.time()
    command = [
        sys.executable, "-m", "bench.probes.cold_start", "--child",
        f"--partition-id={args.partition_id}", f"--num-partitions={args.num_partitions}",
        f"--cache-dir={cache_dir}", f"--checkpoint={checkpoint}",
        f"--image-dir={image_dir}", f"--config={args.config}",
    ]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["stages"] = {"process start": result["start"] - spawned, **result["stages"]}
    return result


# ---------------------------------------------------------------- command
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--partition-id", type=int, default=0)
    parser.add_argument("--num-partitions", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="cold processes after the first")
    parser.add_argument("--cache-dir", default="")
    parser.add_argument("--checkpoint", default="")
    parser.add_argument("--image-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument(
        "--image-folder", type=int, default=0, help="N synthetic JPEGs instead of the digits"
    )
    parser.add_argument(
        "-c",
        "--config",
        default="",
        help='run-config overrides, e.g. "model.img-size=224 model.patch-size=16 '
        'data.pixel-cache=false"',
    )
    parser.add_argument("--out", type=Path, help="write the figures here (JSON)")
    args = parser.parse_args(argv)
    if args.child:
        dirs = (args.cache_dir, args.checkpoint, args.image_dir)
        child(args.partition_id, args.num_partitions, *dirs, args.config)
        return
    if args.repeats < 1:
        parser.error(f"--repeats = {args.repeats}: at least 1 cold process after the first")
    if args.num_partitions < 1 or not 0 <= args.partition_id < args.num_partitions:
        parser.error(
            f"--partition-id = {args.partition_id}, --num-partitions = {args.num_partitions}: "
            "need 0 <= partition id < number of partitions"
        )
    if args.image_folder < 0:
        parser.error(f"--image-folder = {args.image_folder}: a number of images, 0 for digits")
    try:  # a bad override is said now, not as a child's traceback
        bench_config("/placeholder" if args.image_folder else "", args.config)
    except ValueError as exc:  # ConfigError, PreflightError
        parser.error(f"-c {args.config!r}: {exc}")

    import torch

    from bench.probes.result_file import header, write
    from pep_fedpt.engine import pick_device
    from pep_fedpt.models import create_backbone

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="pep-fedpt-bench-") as tmp:
        image_dir = ""
        if args.image_folder:
            image_dir = str(Path(tmp) / "images")
            write_image_folder(Path(image_dir), args.image_folder)
        cfg = bench_config(image_dir, args.config)
        checkpoint = str(Path(tmp) / "backbone.pth")  # plays model.pretrained = <path>
        torch.save(create_backbone(cfg.model, cfg.seed).state_dict(), checkpoint)
        cache_dir = str(Path(tmp) / "features")
        first = run_child(args, cache_dir, checkpoint, image_dir)  # empty cache: computes z(x)
        runs = [run_child(args, cache_dir, checkpoint, image_dir) for _ in range(args.repeats)]

    setting = {
        "model": cfg.model.name,
        "img_size": cfg.model.img_size,
        "embed_dim": cfg.model.embed_dim,
        "depth": cfg.model.depth,
        "dataset": cfg.data.dataset,
        "image_folder": args.image_folder,
        "partition_id": args.partition_id,
        "num_partitions": args.num_partitions,
        "train_examples": runs[0]["examples"],
        "repeats": args.repeats,
        "device": str(pick_device()),
        "pixel_cache": cfg.data.pixel_cache,
        "overrides": args.config,
    }
    # The ``first`` process (empty caches) apart; ``median_s``: each stage over the ``runs``.
    argv = sys.argv[1:] if argv is None else list(argv)
    document = header("bench/probes/cold_start.py", argv, setting, load_start, os.getloadavg())
    later = [run["stages"] for run in runs]
    document |= {
        "first": {"stages": first["stages"]},
        "runs": [{"stages": stages} for stages in later],
        "median_s": {n: statistics.median(stages[n] for stages in later) for n in later[0]},
    }
    if args.out is not None:
        write(args.out, document)
    print(json.dumps(document["median_s"], indent=1))


if __name__ == "__main__":
    main()
