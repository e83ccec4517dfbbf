"""FedMVP: one training step and one evaluation with cached text features vs re-encoding the
attribute sentences every step (as the authors' code does), and peak memory of a batch
against the size of the attribute bank.

    .venv/bin/python bench/fedmvp_step.py                    # tiny CLIP, 100 classes x 10
    .venv/bin/python bench/fedmvp_step.py --repeats 20 --batch 64
    .venv/bin/python bench/fedmvp_step.py --clip-model ViT-B-16 --batch 8 --repeats 3 \\
        --memory-classes 10,50 --skip-timing                 # the paper's widths (slow on CPU)

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

The sentences come from ``--attributes`` (default: caltech101.json of ../shared/
fedmvp-attributes, read in place, 100 classes x 10 phrases) or, without that file, from
synthetic phrases of the same count. Random CLIP weights: the figures are costs, not
accuracies.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from pep_fedpt.config import FedMVPConfig
from pep_fedpt.fedmvp import FedMVPModel, PromptFormer, TextBank, build_clip, build_text_bank
from pep_fedpt.fedmvp.clip import ClipBundle
from pep_fedpt.fedmvp.text_bank import encode_sentences

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ATTRIBUTES = ROOT.parent / "shared" / "fedmvp-attributes" / "caltech101.json"


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip-model", default="tiny")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--memory-classes", default="10,50,100,200")
    parser.add_argument("--attributes", type=Path, default=DEFAULT_ATTRIBUTES)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--skip-timing", action="store_true", help="part 2 (memory) only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = FedMVPConfig(clip_model=args.clip_model)
    bundle = build_clip(cfg, seed=0, device=device)
    model = FedMVPModel(bundle, cfg, seed=0)
    cache = Path(tempfile.mkdtemp(prefix="fedmvp-bench-"))

    def bank_of(classes: int) -> TextBank:
        table = phrase_table(args.attributes, classes, args.per_class)
        return build_text_bank(bundle, list(table), table, cfg, cache)

    print(
        f"CLIP {args.clip_model} (vision width {bundle.vision_width}, text dim "
        f"{bundle.text_dim}, {bundle.spec.size} px), {args.device}, torch threads "
        f"{torch.get_num_threads()}, batch {args.batch}, {args.per_class} sentences per class "
        f"({'from ' + args.attributes.name if args.attributes.is_file() else 'synthetic'})"
    )
    if not args.skip_timing:
        bank = bank_of(args.classes)
        print(f"time: bank of {bank.num_classes} classes = {len(bank.sentences)} sentences")
        timing(model, bundle, bank, args)
    memory(model, bundle, args, device, bank_of)


def timing(
    model: FedMVPModel, bundle: ClipBundle, bank: TextBank, args: argparse.Namespace
) -> None:
    gen = torch.Generator().manual_seed(0)
    size = bundle.spec.size
    images = torch.randn(args.batch, 3, size, size, generator=gen).to(bundle.device)
    labels = torch.randint(0, bank.num_classes, (args.batch,), generator=gen).to(bundle.device)
    params = [p for p in model.promptformer.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.003, momentum=0.9, weight_decay=1e-5)

    def features_of(reencode: bool) -> TextBank:
        if not reencode:
            return bank
        fresh = encode_sentences(bundle, bank.sentences).to(bundle.device)
        return TextBank(fresh, bank.class_index, bank.num_classes, bank.classnames, bank.sentences)

    def step(reencode: bool) -> float:
        start = _now(bundle)
        current = features_of(reencode)
        features = model.encode_image(images, current)
        loss = F.cross_entropy(model.logits_from_features(features, current), labels)
        loss = loss + 10.0 * model.consistency_loss(features, images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return _now(bundle) - start

    @torch.no_grad()
    def evaluation(reencode: bool) -> float:
        start = _now(bundle)
        model.logits(images, features_of(reencode)).argmax(-1)
        return _now(bundle) - start

    for name, fn in (("training step", step), ("evaluation", evaluation)):
        model.train(name == "training step")
        for _ in range(2):  # warm-up
            fn(False), fn(True)
        cached, again = [], []
        for _ in range(args.repeats):
            cached.append(fn(False))
            again.append(fn(True))
        m_cached, m_again = statistics.median(cached), statistics.median(again)
        print(
            f"{name:14s} median cached {m_cached * 1e3:9.2f} ms, re-encoding "
            f"{m_again * 1e3:9.2f} ms: re-encoding / cached = {m_again / m_cached:.2f} "
            f"({args.repeats} interleaved pairs)"
        )


def memory(
    model: FedMVPModel,
    bundle: ClipBundle,
    args: argparse.Namespace,
    device: torch.device,
    bank_of: Callable[[int], TextBank],
) -> None:
    size = bundle.spec.size
    images = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    images = images.to(device)
    former = model.promptformer
    print(f"peak memory of one training step (forward + backward), batch {args.batch}:")
    print(f"{'classes':>8} {'sentences':>10} {'this project':>14} {'per-element proj.':>18}")
    for classes in [int(c) for c in args.memory_classes.split(",")]:
        bank = bank_of(classes)
        labels = torch.arange(args.batch, device=device) % classes
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
                        features, bank, classes, args.per_class, model.logit_scale
                    )
                else:
                    features = model.encode_image(images, bank)
                    logits = model.logits_from_features(features, bank)
                F.cross_entropy(logits, labels).backward()
            peaks.append(tracker.peak)
        mib = [p / 2**20 for p in peaks]
        print(f"{classes:>8} {len(bank.sentences):>10} {mib[0]:>11.1f} MiB {mib[1]:>14.1f} MiB")


def _now(bundle: ClipBundle) -> float:
    if bundle.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


if __name__ == "__main__":
    main()
