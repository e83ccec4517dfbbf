"""Time one local training step of CCMP against VPT-deep with the same prompt tokens.

The commands and what they showed: bench/probes/README.md.

Both models share one frozen backbone, the shared prompt (M_s tokens at the input) and one
prompt token per block 2..L; they differ only in where that token comes from: VPT-deep
learns one per block, CCMP mixes C class prompts per sample with weights from the cached
z(x), the global prototypes and the client prior. A step = weights + forward + backward +
SGD update on one batch. The two are timed interleaved, many times, and compared by
medians, so machine noise hits both alike.

``--out`` writes every timed sample of both paths with their medians and ratio, the
setting and the machine (``bench.probes.result_file.header``); the ratio is printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.probes.result_file import header, write

WRITER = "bench/probes/ccmp_step.py"
WARMUP = 3  # untimed pairs before the timed ones
TARGET = 1.10  # CCMP's step may cost at most this many VPT-deep steps


# ---------------------------------------------------------------- the run
# The pieces bench/probes/device_check.py reuses on a GPU: both models around one backbone, and
# one training step of either.


def prompt_pair(backbone: Any, classes: int, shared_length: int) -> tuple[Any, Any]:
    """(VPT-deep, CCMP) PromptedViTs around one frozen ``backbone``: the same shared prompt
    and one prompt token per block 2..L; VPT-deep learns one set, CCMP one per class."""
    from pep_fedpt.models import PromptedViT

    common = {
        "shared_length": shared_length,
        "class_length": 1,
        "ccmp_blocks": tuple(range(1, len(backbone.blocks))),
        "head_init": "normal",
    }
    ccmp = PromptedViT(backbone, classes, **common)
    deep = PromptedViT(backbone, classes, num_prompt_sets=1, **common)
    return deep, ccmp


def sgd(model: Any) -> Any:
    """The clients' optimiser over the trainable tensors (prompts and head)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=0.01, momentum=0.9)


def train_step(
    model: Any,
    optimizer: Any,
    images: Any,
    labels: Any,
    weights: Callable[[], Any],
    precision: str = "fp32",
) -> Any:
    """One local training step as ``pep_fedpt.engine.train_epochs`` takes it: the mixing
    ``weights()`` (CCMP: from z(x); VPT-deep: ones) + forward under ``precision``'s autocast
    + cross-entropy in float32 + backward + SGD update. Returns the loss."""
    import torch.nn.functional as F

    from pep_fedpt.engine import autocast

    mix = weights()
    with autocast(images.device, precision):
        loss = F.cross_entropy(model(images, mix).float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def measure(settings: argparse.Namespace) -> tuple[list[float], list[float], int]:
    """Every timed VPT-deep and CCMP step (seconds, interleaved) and torch's thread count."""
    import time

    import torch

    from pep_fedpt.ccmp import mixing_weights, smoothed_prior
    from pep_fedpt.config import ModelConfig
    from pep_fedpt.models import create_backbone

    if settings.threads:
        torch.set_num_threads(settings.threads)
    cfg = ModelConfig(
        pretrained="random",
        img_size=settings.img_size,
        patch_size=settings.patch,
        embed_dim=settings.width,
        depth=settings.depth,
        num_heads=settings.heads,
    )
    backbone = create_backbone(cfg, seed=0)
    deep, ccmp = prompt_pair(backbone, settings.classes, settings.shared_length)

    torch.manual_seed(0)
    batch, size, width = settings.batch, settings.img_size, settings.width
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, settings.classes, (batch,))
    cached_z = torch.randn(1000, width)  # the client's z(x) cache
    positions = torch.randint(0, 1000, (batch,))
    prototypes = torch.randn(settings.classes, width)
    log_prior = smoothed_prior(torch.randint(0, 50, (settings.classes,))).log()
    ones = torch.ones(batch, 1)

    def ccmp_weights() -> torch.Tensor:
        z = ccmp.query_features(images) if settings.recompute_z else cached_z[positions]
        return mixing_weights(z, prototypes, log_prior, 0.1)

    def step(model: Any, optimizer: torch.optim.Optimizer, is_ccmp: bool) -> float:
        start = time.perf_counter()
        train_step(model, optimizer, images, labels, ccmp_weights if is_ccmp else lambda: ones)
        return time.perf_counter() - start

    opt_ccmp, opt_deep = sgd(ccmp), sgd(deep)
    for _ in range(WARMUP):
        step(ccmp, opt_ccmp, True)
        step(deep, opt_deep, False)
    t_ccmp, t_deep = [], []
    for _ in range(settings.repeats):
        t_ccmp.append(step(ccmp, opt_ccmp, True))
        t_deep.append(step(deep, opt_deep, False))
    return t_deep, t_ccmp, torch.get_num_threads()


# ---------------------------------------------------------------- command
_POSITIVE = ("width", "depth", "heads", "img_size", "patch", "classes", "batch", "repeats")


def _refuse_bad_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every flaw a run would only hit inside torch, said before anything is built."""
    for name in _POSITIVE:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} = {getattr(args, name)}: at least 1")
    if args.depth < 2:
        parser.error(f"--depth = {args.depth}: at least 2 (prompts go into blocks 2..depth)")
    if args.shared_length < 0:
        parser.error(f"--shared-length = {args.shared_length}: at least 0")
    if args.threads < 0:
        parser.error(f"--threads = {args.threads}: a number of threads, 0 for torch's default")
    if args.img_size % args.patch:
        parser.error(f"--img-size = {args.img_size}: not a multiple of --patch = {args.patch}")
    if args.width % args.heads:
        parser.error(f"--width = {args.width}: not a multiple of --heads = {args.heads}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--shared-length", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=40, help="interleaved timed pairs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument(
        "--recompute-z",
        action="store_true",
        help="run the frozen prompt-free forward for z(x) every step instead of caching it",
    )
    parser.add_argument("--out", type=Path, help="write every sample and setting here (JSON)")
    args = parser.parse_args(argv)
    _refuse_bad_settings(parser, args)
    load_start = os.getloadavg()
    t_deep, t_ccmp, threads = measure(args)
    setting = {key: value for key, value in vars(args).items() if key != "out"}
    setting |= {
        "tokens": 1 + args.shared_length + 1 + (args.img_size // args.patch) ** 2,
        "threads": threads,
        "class_length": 1,
        "warmup": WARMUP,
    }
    m_deep, m_ccmp = statistics.median(t_deep), statistics.median(t_ccmp)
    ratio = m_ccmp / m_deep
    argv = sys.argv[1:] if argv is None else list(argv)
    document = header(WRITER, argv, setting, load_start, os.getloadavg())
    document["timing"] = {  # every interleaved sample of both paths, their medians, the ratio
        "vpt_deep_s": t_deep,
        "ccmp_s": t_ccmp,
        "median_vpt_deep_s": m_deep,
        "median_ccmp_s": m_ccmp,
        "ccmp_over_vpt_deep": ratio,
    }
    if args.out is not None:
        write(args.out, document)
    verdict = "met" if ratio <= TARGET else "MISSED"
    print(f"CCMP / VPT-deep {ratio:.3f}: target <= {TARGET:.2f} {verdict}")


if __name__ == "__main__":
    main()
