"""Local training and evaluation loops, and the cache of frozen query features z(x)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from pep_fedpt.config import TrainConfig
from pep_fedpt.corrections import prior_corrected_logits
from pep_fedpt.models.prompted_vit import PromptedViT

# (z(x), labels, training) -> mixing weights (B, num_prompt_sets)
WeightsFn = Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]


def unit_weights(query: torch.Tensor, labels: torch.Tensor, training: bool) -> torch.Tensor:
    """Weights (B, 1) of one: the single prompt set of VPT-deep, no CCMP."""
    return torch.ones(labels.shape[0], 1, device=labels.device)


def no_features(dataset: Dataset) -> torch.Tensor:
    """An (N, 0) stand-in for z(x), for methods whose weights ignore it (no frozen pass)."""
    return torch.zeros(len(dataset), 0)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; every dataset here has one


def pick_device() -> torch.device:
    """CUDA when present, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(requested: str, device_type: str, bf16_supported: bool) -> str:
    """The autocast precision local training runs in: ``requested`` unless it is "auto",
    which is "bf16" on a CUDA device with bf16 (Ampere and later: full speed, no loss
    scaling) and "fp32" everywhere else (a CPU's bf16 matmuls are slower than its fp32 ones,
    and an older GPU's fp16 needs a gradient scaler a user should ask for)."""
    if requested != "auto":
        return requested
    return "bf16" if device_type == "cuda" and bf16_supported else "fp32"


def training_precision(requested: str, device: torch.device) -> str:
    """``resolve_precision`` with this process's facts about ``device`` (asked only for
    "auto": autocast calls this for every batch)."""
    if requested != "auto":
        return requested
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    return resolve_precision(requested, device.type, bf16)


@dataclass(frozen=True)
class LoaderOptions:
    """How a DataLoader feeds ``device``: pinned host memory and asynchronous copies on
    CUDA (a pinned batch's copy overlaps the previous step), and worker processes kept
    from one epoch to the next when there are workers on CUDA (each epoch would start
    them again, seconds per epoch at 224 px)."""

    pin_memory: bool
    non_blocking: bool
    persistent_workers: bool


def loader_options(device_type: str, num_workers: int) -> LoaderOptions:
    """The DataLoader settings for a device type and a number of worker processes: on the
    CPU none of them (nothing to pin or overlap; a CPU run reads as it always did)."""
    cuda = device_type == "cuda"
    return LoaderOptions(
        pin_memory=cuda, non_blocking=cuda, persistent_workers=cuda and num_workers > 0
    )


def autocast(
    device: torch.device, precision: str = "fp32"
) -> contextlib.AbstractContextManager[object]:
    """Autocast to ``precision`` ("fp32": none; "auto": ``training_precision``) on
    ``device``'s type: one code path for CPU and CUDA (torch autocasts bf16 and fp16 on
    both)."""
    precision = training_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(
            f"precision = {precision!r}: use one of fp32, {', '.join(AUTOCAST_DTYPES)}"
        )
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """fp16 needs loss scaling (its small gradients underflow); bf16 and fp32 do not: the
    scaler is then disabled and passes the step through unchanged."""
    enabled = training_precision(precision, device) == "fp16"
    return torch.amp.GradScaler(device.type, enabled=enabled)


class _Indexed(Dataset):
    """Yields (image, label, position) so a batch can look up its cached z(x)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; every dataset here has one

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image, label = self.dataset[index]
        return image, label, index


def shuffle_order(size: int, seed: int) -> list[int]:
    """The order a fresh ``DataLoader(shuffle=True, generator=manual_seed(seed))`` visits
    ``size`` examples in: its iterator first draws the workers' base seed from the
    generator, then its sampler draws the permutation (``test_engine_loader`` checks the
    two against each other). A persistent loader reuses its iterator, so the draw is done
    here, and an epoch's order stays what it is without persistent workers."""
    generator = torch.Generator().manual_seed(seed)
    torch.empty((), dtype=torch.int64).random_(generator=generator)
    return torch.randperm(size, generator=generator).tolist()


class _SeededOrder(torch.utils.data.Sampler[int]):
    """``shuffle_order`` of the seed set before each epoch."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.seed = 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        return iter(shuffle_order(self.size, self.seed))


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Batches:
    """The batches of one split on ``device``, epoch after epoch (``epoch(seed)``).

    ``num_workers`` > 0 reads them in that many worker processes (None: the split's
    ``loader_workers``, which ``data.pixel_cache.node_splits`` sets from
    ``data.num-workers``; else 0); ``loader_options`` says how (pinned, asynchronous,
    persistent workers). A split from the pixel cache loads its pixels first, so that the
    workers inherit them instead of each decoding the split."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool,
        device: torch.device,
        num_workers: int | None = None,
    ) -> None:
        if num_workers is None:
            num_workers = int(getattr(dataset, "loader_workers", 0))
        prepare = getattr(dataset, "prepare", None)
        if callable(prepare):
            prepare()
        self.dataset = _Indexed(dataset)
        self.batch_size, self.shuffle, self.device = batch_size, shuffle, device
        self.num_workers = num_workers
        self.options = loader_options(device.type, num_workers)
        self._order = _SeededOrder(len(self.dataset)) if shuffle else None
        self._persistent: DataLoader | None = None

    def _loader(self, seed: int) -> DataLoader:
        common: dict[str, Any] = {  # DataLoader's keyword arguments
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
            "pin_memory": self.options.pin_memory,
        }
        if not self.options.persistent_workers:
            generator = torch.Generator().manual_seed(seed)
            return DataLoader(self.dataset, shuffle=self.shuffle, generator=generator, **common)
        if self._order is not None:
            self._order.seed = seed
        if self._persistent is None:
            self._persistent = DataLoader(
                self.dataset, sampler=self._order, persistent_workers=True, **common
            )
        return self._persistent

    def epoch(self, seed: int) -> Iterator[Batch]:
        """(images, labels) on the device and the examples' positions, in the order of
        ``seed`` when shuffled."""
        non_blocking = self.options.non_blocking
        for images, labels, positions in self._loader(seed):
            yield (
                images.to(self.device, non_blocking=non_blocking),
                labels.to(self.device, non_blocking=non_blocking),
                positions,
            )


def indexed_batches(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int,
    device: torch.device,
    num_workers: int | None = None,
) -> Iterator[Batch]:
    """One pass over ``dataset``: ``Batches(...).epoch(seed)``."""
    return Batches(dataset, batch_size, shuffle, device, num_workers).epoch(seed)


@torch.no_grad()
def compute_query_features(
    model: PromptedViT,
    dataset: Dataset,
    device: torch.device,
    batch_size: int = 128,
    num_workers: int | None = None,
) -> torch.Tensor:
    """z(x) for every example, in dataset order: (N, D) float32 on the CPU, computed in
    float32 on every device (the node caches it; a cached value must not depend on a
    training option)."""
    chunks = []
    for images, _, _ in indexed_batches(dataset, batch_size, False, 0, device, num_workers):
        chunks.append(model.query_features(images).float().cpu())
    if not chunks:
        return torch.zeros(0, model.backbone.embed_dim)
    return torch.cat(chunks)


class FeatureCache:
    """z(x) per (backbone, examples): the backbone is frozen, so z(x) is computed once."""

    def __init__(self) -> None:
        self._store: dict[str, torch.Tensor] = {}

    def get(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key not in self._store:
            self._store[key] = compute()
        return self._store[key]

    def __len__(self) -> int:
        return len(self._store)


@dataclass
class TrainResult:
    loss: float
    accuracy: float
    num_examples: int


HEAD_PREFIX = "head."  # PromptedViT's linear head; every other trainable tensor is a prompt


def build_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, lr_scale: float = 1.0
) -> torch.optim.Optimizer:
    """``train.optimizer`` over the parameters that require a gradient, in two parameter
    groups: ``"prompts"`` (everything but the head: SGPT's keys, pFedPG's prompt) at
    ``prompt-lr`` and ``"head"`` at ``head-lr``, both times ``lr_scale`` (the schedule's
    factor for this round). A group without a trainable tensor is left out.

    A fresh optimiser per local training, as the clients of FedAvg-style methods use:
    no momentum or Adam moments are carried from one round to the next.
    """
    # Empty tensors (a model without a shared prompt has a (0, D) one) never move.
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.numel() > 0]
    groups = [
        {"name": group, "params": params, "lr": base * lr_scale}
        for group, base, params in (
            ("prompts", cfg.prompt_base_lr, [p for n, p in named if not n.startswith(HEAD_PREFIX)]),
            ("head", cfg.head_base_lr, [p for n, p in named if n.startswith(HEAD_PREFIX)]),
        )
        if params
    ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr * lr_scale, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        groups, lr=cfg.lr * lr_scale, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def train_epochs(
    model: PromptedViT,
    dataset: Dataset,
    features: torch.Tensor,
    weights_fn: WeightsFn,
    cfg: TrainConfig,
    device: torch.device,
    seed: int,
    regularizer: Callable[[], torch.Tensor] | None = None,
    query_loss: Callable[[torch.Tensor], torch.Tensor] | None = None,
    lr_scale: float = 1.0,
    num_workers: int | None = None,
) -> TrainResult:
    """E epochs of ``train.optimizer`` on cross-entropy over the parameters that require
    a gradient (``build_optimizer``).

    ``regularizer``: a term added to every batch's loss (FedProx's proximal term).
    ``query_loss``: a term of the batch's z(x) added to its loss (SGPT's key loss).
    ``lr_scale``: the schedule's factor for this round (``PromptClient.lr_scale``).
    The reported loss is the cross-entropy alone.

    ``cfg.precision``: the forward pass runs under ``autocast`` in that dtype ("auto":
    ``training_precision``, bf16 on a CUDA device that has it, else fp32); parameters,
    gradients and optimiser state stay float32 (autocast never changes them), so what the
    client sends is float32 whatever the precision. fp16 scales the loss (``grad_scaler``).
    """
    optimizer = build_optimizer(model, cfg, lr_scale)
    precision = training_precision(cfg.precision, device)
    scaler = grad_scaler(device, precision)
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    batches = Batches(dataset, cfg.batch_size, True, device, num_workers)
    for epoch in range(cfg.local_epochs):
        for images, labels, positions in batches.epoch(seed + epoch):
            query = features[positions].to(device)
            weights = weights_fn(query, labels, True)
            with autocast(device, precision):
                logits = model(images, weights)
                loss = F.cross_entropy(logits.float(), labels)
            objective = loss if regularizer is None else loss + regularizer()
            if query_loss is not None:
                objective = objective + query_loss(query)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(objective).backward()
            scaler.step(optimizer)
            scaler.update()
            total_loss += loss.item() * len(labels)
            correct += int((logits.argmax(dim=-1) == labels).sum())
            seen += len(labels)
    if seen == 0:
        raise ValueError("the local training split is empty")
    return TrainResult(
        loss=total_loss / seen, accuracy=correct / seen, num_examples=seen // cfg.local_epochs
    )


@dataclass
class EvalResult:
    correct: int
    total: int
    loss: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@torch.no_grad()
def evaluate(
    model: PromptedViT,
    dataset: Dataset,
    features: torch.Tensor,
    weights_fn: WeightsFn,
    device: torch.device,
    batch_size: int = 128,
    log_prior: torch.Tensor | None = None,
    num_workers: int | None = None,
) -> EvalResult:
    """Accuracy and loss; ``log_prior`` (C,): add it to the logits (prior correction).
    Always float32: reported accuracies do not depend on the training precision."""
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for images, labels, positions in indexed_batches(
        dataset, batch_size, False, 0, device, num_workers
    ):
        weights = weights_fn(features[positions].to(device), labels, False)
        logits = model(images, weights).float()
        if log_prior is not None:
            logits = prior_corrected_logits(logits, log_prior)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=-1) == labels).sum())
        total += len(labels)
    return EvalResult(correct=correct, total=total, loss=loss_sum / max(total, 1))
