"""FedMVP's step costs: one training step and one evaluation with cached text features
against re-encoding the attribute sentences every step (as the authors' code does), and
the peak memory of a training step against the attribute bank's size. The commands and
what they showed: bench/probes/README.md.

Part 1 (time): a step = [text features] + prompted forward + CE + consistency loss +
backward + SGD update on one batch; an evaluation = [text features] + logits of one batch
without gradients. "cached" reads the features of the bank computed once (the project's
text bank); "re-encode" runs the frozen text tower over all S sentences first. The two are
timed interleaved in one run and compared by medians, so machine noise hits both alike.

Part 2 (memory): peak bytes allocated during one training step (forward + backward) for
banks of C classes x A sentences, measured by tracking every tensor storage an op creates
until it is freed (``PeakBytes``: a torch dispatch mode, the same on the CPU and CUDA),
for this project's PromptFormer (the bank projected once: keys and values S x width,
logits B x S) and for the same computation with the bank projected per batch element, as
the authors' code does (B x C x A x width). Both give the same prompts (checked).

The sentences come from ``attributes`` (default: caltech101.json of ../shared/
fedmvp-attributes, read in place, 100 classes x 10 phrases) or, without that file, from
synthetic phrases of the same count. Random CLIP weights: the figures are costs, not
accuracies. ``--out`` writes every timed sample with its medians and ratio and the memory
rows in bytes (``bench.probes.result_file.header`` first); all but the samples is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from bench.comma import comma_ints
from bench.probes.result_file import header, write
from pep_fedpt.config import FedMVPConfig
from pep_fedpt.engine import autocast
from pep_fedpt.fedmvp import FedMVPModel, PromptFormer, TextBank, build_clip, build_text_bank
from pep_fedpt.fedmvp.clip import ClipBundle
from pep_fedpt.fedmvp.text_bank import encode_sentences

DEFAULT_ATTRIBUTES = (
    Path(__file__).resolve().parents[3] / "shared" / "fedmvp-attributes" / "caltech101.json"
)


def phrase_table(path: Path, classes: int, per_class: int) -> dict[str, list[str]]:
    """``classes`` classes of ``per_class`` phrases: from the file, else synthetic."""
    table: dict[str, list[str]] = {}
    if path.is_file():
        raw = json.loads(path.read_text())
        for name, phrases in list(raw.items())[:classes]:
            table[name] = (phrases * per_class)[:per_class]
    for k in range(len(table), classes):
        table[f"object {k}"] = [
            f"distinctive part number {j} of object {k}" for j in range(per_class)
        ]
    return table


def released_style_prompts(
    former: PromptFormer, patches: torch.Tensor, bank: torch.Tensor
) -> torch.Tensor:
    """The PromptFormer with the bank projected per batch element (B x S x width)."""
    batch, num_patches, width = patches.shape
    projected = former.proj(bank.expand(batch, -1, -1))  # (B, S, width): the authors' way
    att, heads = former.attn, former.attn.num_heads
    keys, values = att.k(att.k_norm(projected)), att.v(projected)
    q = att.q(att.q_norm(patches)).view(batch, num_patches, heads, -1).transpose(1, 2)
    k = keys.view(batch, -1, heads, width // heads).transpose(1, 2)
    v = values.view(batch, -1, heads, width // heads).transpose(1, 2)
    mixed = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape_as(patches)
    hidden = att.out(mixed)
    hidden = hidden + former.ffn(hidden)
    return F.adaptive_avg_pool1d(hidden.transpose(1, 2), former.num_prompts).transpose(1, 2)


def released_style_logits(
    features: torch.Tensor, bank: TextBank, classes: int, per_class: int, scale: float
) -> torch.Tensor:
    """Per-class mean cosine through a (B, C, A, D) tensor, as the authors' code builds it."""
    text = bank.features.view(1, classes, per_class, -1).expand(features.shape[0], -1, -1, -1)
    return scale * (features[:, None, None, :] * text).sum(-1).mean(-1)


class PeakBytes(TorchDispatchMode):
    """Peak bytes of the tensor storages created under this mode and alive at the same time.

    Every op's outputs pass through ``__torch_dispatch__`` (autograd's backward ops too); a
    storage counts from its creation until torch frees it (a weakref finalizer on the
    storage, whose Python object torch keeps for as long as the storage lives). Parameters
    and inputs created before the mode are not counted: this is what one batch adds.
    Works the same on the CPU and on CUDA.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if key in self._seen or size == 0:  # a view, an in-place result, or nothing
            return
        self._seen.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, size)

    def _free(self, key: int, size: int) -> None:
        self._seen.discard(key)
        self.live -= size


def measure(
    clip_model: str,
    classes: int,
    per_class: int,
    batch: int,
    repeats: int,
    memory_classes: Sequence[int],
    attributes: Path = DEFAULT_ATTRIBUTES,
    device: str = "",
    threads: int = 0,
    skip_timing: bool = False,
) -> dict[str, Any]:
    """Both parts on random CLIP weights: what the CLIP and the machine were (``clip``,
    ``device``, ``threads``, ``sentences_from``), the ``timing`` samples (None when
    skipped) and the ``memory`` rows, in seconds and bytes."""
    if threads:
        torch.set_num_threads(threads)
    where = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = FedMVPConfig(clip_model=clip_model)
    bundle = build_clip(cfg, seed=0, device=where)
    model = FedMVPModel(bundle, cfg, seed=0)
    cache = Path(tempfile.mkdtemp(prefix="fedmvp-bench-"))

    def bank_of(count: int) -> TextBank:
        table = phrase_table(attributes, count, per_class)
        return build_text_bank(bundle, list(table), table, cfg, cache)

    return {
        "clip": {
            "vision_width": bundle.vision_width,
            "text_dim": bundle.text_dim,
            "image_size": bundle.spec.size,
        },
        "device": str(where),
        "threads": torch.get_num_threads(),
        "sentences_from": attributes.name if attributes.is_file() else "synthetic",
        "timing": None if skip_timing else timing(model, bundle, bank_of(classes), batch, repeats),
        "memory": memory(model, bundle, batch, per_class, memory_classes, bank_of),
    }


def train_step(
    model: FedMVPModel,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    bank: TextBank,
    precision: str = "fp32",
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """One FedMVP training step as ``pep_fedpt.fedmvp.train_local`` takes it: the prompted
    forward (PromptFormer over the bank, prompts into the image tower) under ``precision``'s
    autocast, CE + 10 x consistency in float32 (``target``: the cached g(x'); None: the
    frozen forward of the flipped images in the step), backward, SGD update. The loss."""
    with autocast(images.device, precision):
        features = model.encode_image(images, bank)
        loss = F.cross_entropy(model.logits_from_features(features, bank).float(), labels)
        loss = loss + 10.0 * model.consistency_loss(features.float(), images, target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def timing(
    model: FedMVPModel, bundle: ClipBundle, bank: TextBank, batch: int, repeats: int
) -> dict[str, Any]:
    """Seconds of ``repeats`` interleaved (cached, re-encoding) pairs per measured call,
    after two warm-up pairs, and the bank they used."""
    gen = torch.Generator().manual_seed(0)
    size = bundle.spec.size
    images = torch.randn(batch, 3, size, size, generator=gen).to(bundle.device)
    labels = torch.randint(0, bank.num_classes, (batch,), generator=gen).to(bundle.device)
    params = [p for p in model.promptformer.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.003, momentum=0.9, weight_decay=1e-5)

    def features_of(reencode: bool) -> TextBank:
        if not reencode:
            return bank
        fresh = encode_sentences(bundle, bank.sentences).to(bundle.device)
        return TextBank(fresh, bank.class_index, bank.num_classes, bank.classnames, bank.sentences)

    def step(reencode: bool) -> float:
        start = _now(bundle)
        train_step(model, optimizer, images, labels, features_of(reencode))
        return _now(bundle) - start

    @torch.no_grad()
    def evaluation(reencode: bool) -> float:
        start = _now(bundle)
        model.logits(images, features_of(reencode)).argmax(-1)
        return _now(bundle) - start

    calls: dict[str, dict[str, list[float]]] = {}
    for name, fn in (("training step", step), ("evaluation", evaluation)):
        model.train(name == "training step")
        for _ in range(2):  # warm-up
            fn(False), fn(True)
        cached, again = [], []
        for _ in range(repeats):
            cached.append(fn(False))
            again.append(fn(True))
        m_cached, m_again = statistics.median(cached), statistics.median(again)
        calls[name] = {
            "cached_s": cached,
            "reencode_s": again,
            "median_cached_s": m_cached,
            "median_reencode_s": m_again,
            "reencode_over_cached": m_again / m_cached,
        }
        _progress(f"{name}: {repeats} pairs timed")
    return {
        "bank_classes": bank.num_classes,
        "bank_sentences": len(bank.sentences),
        "calls": calls,
    }


def memory(
    model: FedMVPModel,
    bundle: ClipBundle,
    batch: int,
    per_class: int,
    memory_classes: Sequence[int],
    bank_of: Callable[[int], TextBank],
) -> list[dict[str, int]]:
    """Per bank size, the peak bytes one training step adds: this project's PromptFormer
    (``this_project_bytes``) and the bank projected per batch element (``per_element_bytes``)."""
    size = bundle.spec.size
    device = bundle.device
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    images = images.to(device)
    former = model.promptformer
    rows = []
    for classes in memory_classes:
        bank = bank_of(classes)
        labels = torch.arange(batch, device=device) % classes
        tokens = model.embed(images)
        check = released_style_prompts(former, tokens[:, 1:], bank.features)
        assert torch.allclose(check, former(tokens[:, 1:], bank.features), atol=1e-4)
        peaks = []
        for released in (False, True):
            model.zero_grad(set_to_none=True)
            with PeakBytes() as tracker:
                tokens = model.embed(images)
                if released:
                    prompts = released_style_prompts(former, tokens[:, 1:], bank.features)
                    features = model.encode_tokens(torch.cat([tokens, prompts], dim=1))
                    logits = released_style_logits(
                        features, bank, classes, per_class, model.logit_scale
                    )
                else:
                    features = model.encode_image(images, bank)
                    logits = model.logits_from_features(features, bank)
                F.cross_entropy(logits, labels).backward()
            peaks.append(tracker.peak)
        _progress(f"memory: bank of {len(bank.sentences)} sentences measured")
        rows.append(
            {
                "classes": classes,
                "sentences": len(bank.sentences),
                "this_project_bytes": peaks[0],
                "per_element_bytes": peaks[1],
            }
        )
    return rows


def _progress(text: str) -> None:
    """A line on stderr: at the paper's widths on a CPU a part takes minutes, and the
    tables (stdout) come only at the end."""
    print(f"fedmvp_step: {text}", file=sys.stderr, flush=True)


def _now(bundle: ClipBundle) -> float:
    if bundle.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


# ---------------------------------------------------------------- command
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip-model", default="tiny")
    parser.add_argument("--classes", type=int, default=100, help="bank size for the timing")
    parser.add_argument("--per-class", type=int, default=10, help="sentences per class")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10, help="interleaved timed pairs")
    parser.add_argument(
        "--memory-classes",
        type=comma_ints(minimum=1, example="10,50"),
        default="10,50,100,200",
        help="bank sizes (numbers of classes), a,b,..",
    )
    parser.add_argument("--attributes", type=Path, default=None, help="a phrases JSON file")
    parser.add_argument("--device", default="", help="default: cuda if there is one, else cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--skip-timing", action="store_true", help="part 2 (memory) only")
    parser.add_argument("--out", type=Path, help="write the figures here (JSON)")
    args = parser.parse_args(argv)
    for name in ("classes", "per_class", "batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} = {getattr(args, name)}: at least 1")
    if args.threads < 0:
        parser.error(f"--threads = {args.threads}: a number of threads, 0 for torch's default")
    if args.attributes is not None and not args.attributes.is_file():
        parser.error(f"--attributes {args.attributes}: no such file (a JSON of class -> phrases)")
    memory_classes = args.memory_classes

    load_start = os.getloadavg()
    measured = measure(
        args.clip_model,
        args.classes,
        args.per_class,
        args.batch,
        args.repeats,
        memory_classes,
        attributes=args.attributes or DEFAULT_ATTRIBUTES,
        device=args.device,
        threads=args.threads,
        skip_timing=args.skip_timing,
    )
    setting = {
        "clip_model": args.clip_model,
        **measured["clip"],
        "device": measured["device"],
        "threads": measured["threads"],
        "batch": args.batch,
        "per_class": args.per_class,
        "sentences_from": measured["sentences_from"],
        "classes": args.classes,
        "repeats": args.repeats,
        "memory_classes": memory_classes,
        "skip_timing": args.skip_timing,
    }
    argv = sys.argv[1:] if argv is None else list(argv)
    document = header("bench/probes/fedmvp_step.py", argv, setting, load_start, os.getloadavg())
    # ``timing``: null when skipped; else the bank and, per call, every interleaved sample.
    document |= {"timing": measured["timing"], "memory": measured["memory"]}
    if args.out is not None:
        write(args.out, document)
    timing = measured["timing"]
    if timing is not None:  # the medians and ratio of each call, not its samples
        kept = ("median_cached_s", "median_reencode_s", "reencode_over_cached")
        timing = {name: {k: c[k] for k in kept} for name, c in timing["calls"].items()}
    print(json.dumps({"timing": timing, "memory": measured["memory"]}, indent=1))


if __name__ == "__main__":
    main()
