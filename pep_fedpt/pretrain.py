"""A backbone this project pre-trains itself, for when no pretrained weights can be had.

Prompt tuning on a randomly initialised ViT measures nothing (its attention is nearly
uniform, so z(x) is almost the same for every image), and offline no pretrained ViT can
be downloaded. ``model.pretrained = "local:0-4"`` therefore means: train the configured
architecture with timm on classes 0-4 of the run's own data set, on the client pool only
(never on the central test split), freeze it, and tune prompts on all classes. The
weights are cached under ``~/.cache/pep-fedpt/backbones/`` (``PEP_FEDPT_CACHE`` moves
it), keyed by everything that shapes them, so every process of a run on one host loads
the same file and only the first one trains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from pep_fedpt.atomic import atomic_write
from pep_fedpt.config import ConfigError, DataConfig, ModelConfig

LOCAL_PREFIX = "local:"
RECIPE_VERSION = 1  # bump when the training recipe below changes
# An estimate longer than this (seconds) without model.pretrain-minutes says how to cap it.
LONG_PRETRAINING = 10 * 60
# Training accuracy below this multiple of chance (1 / classes) counts as near chance.
NEAR_CHANCE = 1.5


def cache_root() -> Path:
    return Path(os.environ.get("PEP_FEDPT_CACHE", Path.home() / ".cache" / "pep-fedpt"))


def parse_local_classes(source: str) -> tuple[int, ...]:
    """``"local:0-4"`` -> (0, 1, 2, 3, 4); ``"local:0,2,5"`` -> (0, 2, 5)."""
    spec = source.removeprefix(LOCAL_PREFIX)
    classes: set[int] = set()
    try:
        for part in filter(None, (p.strip() for p in spec.split(","))):
            lo, _, hi = part.partition("-")
            classes.update(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        classes.clear()
    if not classes or min(classes) < 0:
        raise ConfigError(
            f"model.pretrained = {source!r}: write the classes to pre-train on as "
            "'local:0-4' or 'local:0,2,5' (class indices of the run's data set)"
        )
    return tuple(sorted(classes))


def local_backbone_path(model: ModelConfig, data: DataConfig) -> Path:
    """Where the pre-trained weights for this (architecture, data, classes, recipe) live.

    The run seed is not part of the key: every seed of a comparison shares one backbone.
    """
    key = json.dumps(
        {
            "recipe": RECIPE_VERSION,
            "model": model.name,
            "arch": model.timm_overrides(),
            "classes": parse_local_classes(model.pretrained),
            "epochs": model.pretrain_epochs,
            "minutes": model.pretrain_minutes,
            "dataset": data.dataset,
            "data-dir": data.data_dir,
            "central-test-fraction": data.central_test_fraction,
            "split-seed": data.split_seed,
            "seed": model.pretrain_seed,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root() / "backbones" / f"{model.name}-{data.dataset}-{digest}.pth"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """One trainer per host: Ray workers that start together wait for the first one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # say why this process sits still, then wait
            print(
                f"pep-fedpt: another process on this host is pre-training {path.name}; "
                "waiting for it to finish (its progress is in that process's output)",
                flush=True,
            )
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_local_backbone(model: ModelConfig, data: DataConfig) -> Path:
    """The cached weights' path, training them first if no process has yet."""
    path = local_backbone_path(model, data)
    if path.is_file():
        return path
    with _file_lock(path):
        if not path.is_file():
            pretrain_to(path, model, data)
    return path


def pretrain_to(path: Path, model_cfg: ModelConfig, data_cfg: DataConfig) -> None:
    # Here, not at the top: pep_fedpt.models imports this module (models.backbone).
    from pep_fedpt.data.client_data import client_pool
    from pep_fedpt.models.image_spec import image_spec

    seed = model_cfg.pretrain_seed
    # The full pool: data.subsample shrinks the federated part, not the stand-in for hub
    # weights (and is left out of the cache key above).
    data_cfg = dataclasses.replace(data_cfg, subsample=1.0)
    classes = parse_local_classes(model_cfg.pretrained)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(
            model_cfg.name, num_classes=len(classes), **model_cfg.timm_overrides()
        )
    assert isinstance(model, VisionTransformer)
    dataset, pool = client_pool(data_cfg, image_spec(model))
    num_classes = int(np.max(dataset.targets)) + 1
    if max(classes) >= num_classes:
        raise ConfigError(
            f"model.pretrained = {model_cfg.pretrained!r}: data set {data_cfg.dataset!r} "
            f"has classes 0..{num_classes - 1}"
        )
    targets = np.asarray(dataset.targets)[pool]
    chosen = pool[np.isin(targets, classes)]
    remap = {c: i for i, c in enumerate(classes)}
    images = torch.stack([dataset[int(i)][0] for i in chosen])
    labels = torch.tensor([remap[int(dataset.targets[i])] for i in chosen])
    print(
        f"pep-fedpt: pre-training {model_cfg.name} {model_cfg.timm_overrides()} on classes "
        f"{list(classes)} of {data_cfg.dataset} ({len(chosen)} images, "
        f"{model_cfg.pretrain_epochs} epochs"
        + (f", at most {model_cfg.pretrain_minutes} min" if model_cfg.pretrain_minutes else "")
        + f") -> {path}",
        flush=True,
    )
    start = time.monotonic()
    accuracy, epochs_done = train_classifier(
        model,
        images,
        labels,
        epochs=model_cfg.pretrain_epochs,
        seed=seed,
        max_seconds=model_cfg.pretrain_minutes * 60 or None,
        progress=PretrainProgress(len(images)),
    )
    model.reset_classifier(0)
    weights = io.BytesIO()
    torch.save(model.state_dict(), weights)
    atomic_write(path, weights.getvalue())
    info = {
        "source": model_cfg.pretrained,
        "dataset": data_cfg.dataset,
        "classes": list(classes),
        "images": len(chosen),
        "epochs": round(epochs_done, 2),
        "train-accuracy": accuracy,
        "minutes": round((time.monotonic() - start) / 60, 2),
    }
    warning = near_chance_warning(
        accuracy, len(classes), epochs_done, model_cfg.pretrain_epochs, model_cfg.pretrain_minutes
    )
    if warning:
        info["warning"] = warning
    atomic_write(path.with_suffix(".json"), json.dumps(info, indent=2).encode())
    print(f"pep-fedpt: pre-trained backbone ready ({info})", flush=True)
    if warning:
        banner = "!" * 78
        for stream in (sys.stdout, sys.stderr):
            print(f"{banner}\npep-fedpt: WARNING: {warning}\n{banner}", file=stream, flush=True)


def near_chance_warning(
    accuracy: float, num_classes: int, epochs_done: float, epochs: int, minutes: float
) -> str | None:
    """What to tell a user whose backbone ends near chance (None when it does not)."""
    chance = 1.0 / num_classes
    if accuracy >= NEAR_CHANCE * chance:
        return None
    why = (
        f"It stopped after {epochs_done:.2g} of {epochs} epochs at model.pretrain-minutes = "
        f"{minutes:g}: give it more minutes (or a GPU)"
        if epochs_done < epochs
        else f"It ran all {epochs} epochs: raise model.pretrain-epochs"
    )
    return (
        f"the pre-trained backbone ends at training accuracy {accuracy:.3f} on "
        f"{num_classes} classes (chance {chance:.3f}): its features are barely better than "
        f"a random network's, so prompt tuning on it measures little. {why}, or use "
        "model.pretrained = 'hub' or a checkpoint file"
    )


class PretrainProgress:
    """What a person sees while a backbone pre-trains: an estimate, then per-epoch progress.

    A tqdm bar when the stream is a terminal; otherwise (a log, a Ray worker) one plain
    line per epoch: epoch, images/s, accuracy so far, elapsed and ETA.
    """

    def __init__(self, num_images: int, stream: TextIO | None = None) -> None:
        self.num_images = num_images
        self.stream = stream if stream is not None else sys.stdout
        self.bar: object | None = None
        self.start = time.monotonic()

    def _print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)  # type: ignore[attr-defined]
        else:
            print(line, file=self.stream, flush=True)

    def estimate(
        self, per_step: float, total_steps: int, steps_per_epoch: int, max_seconds: float | None
    ) -> None:
        """Said once, after the first steps are timed: how long the whole schedule takes."""
        seconds = per_step * total_steps
        epochs = total_steps / steps_per_epoch
        line = (
            f"pep-fedpt: pre-training estimate: {_duration(seconds)} for {epochs:.3g} epochs "
            f"of {self.num_images} images ({per_step * 1000:.0f} ms per step)"
        )
        if max_seconds is not None:
            line += f", fitted to model.pretrain-minutes = {max_seconds / 60:g}"
        elif seconds > LONG_PRETRAINING:
            line += (
                ". That is long: cap it with model.pretrain-minutes = N (the schedule is "
                "fitted to the steps that fit in N minutes) or lower model.pretrain-epochs; "
                "data.subsample does not shrink pre-training (the backbone stands in for "
                "hub weights and is shared by every subsample)"
            )
        self._print(line)
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, unit="step", file=self.stream, desc="pre-training")

    def step(self, done: int, total_steps: int) -> None:
        if self.bar is not None:
            bar = self.bar
            bar.total = total_steps  # type: ignore[attr-defined]
            bar.update(done - bar.n)  # type: ignore[attr-defined]

    def epoch(
        self, epoch: int, epochs: float, seen: int, accuracy: float, done: int, total: int
    ) -> None:
        """The end of an epoch (the last one possibly partial)."""
        elapsed = time.monotonic() - self.start
        rate = seen / elapsed if elapsed > 0 else 0.0
        eta = elapsed / done * (total - done) if done else 0.0
        if self.bar is not None:
            self.bar.set_postfix(  # type: ignore[attr-defined]
                epoch=f"{epoch}/{math.ceil(epochs)}", img_s=f"{rate:.0f}", acc=f"{accuracy:.3f}"
            )
            return
        self._print(
            f"pep-fedpt: pre-training epoch {epoch}/{math.ceil(epochs)}: {rate:.0f} images/s, "
            f"accuracy {accuracy:.3f}, {_duration(elapsed)} elapsed, ETA {_duration(eta)}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()  # type: ignore[attr-defined]
            self.bar = None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def train_classifier(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    max_seconds: float | None = None,
    probe_steps: int = 10,
    progress: PretrainProgress | None = None,
) -> tuple[float, float]:
    """AdamW with warm-up and cosine decay, random shifts and label smoothing.

    The first ``probe_steps`` steps are timed, for ``progress``'s estimate of the whole
    schedule and, with ``max_seconds``, to shorten the schedule to the steps that fit
    (re-fitted after every epoch, never lengthened), so a time-capped run still decays to
    zero instead of stopping mid-schedule. Returns the last (possibly partial) epoch's
    training accuracy and the number of epochs done.
    images: (N, 3, H, W), already normalised.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = max(1, math.ceil(len(images) / batch_size))
    plan = {"steps": steps_per_epoch * epochs}
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, plan["steps"])
    )
    accuracy, step, start, seen_total, epoch = 0.0, 0, time.monotonic(), 0, 0
    probe = min(probe_steps, steps_per_epoch, plan["steps"])
    model.train()
    try:
        while step < plan["steps"]:
            order = torch.randperm(len(images), generator=generator)
            correct = seen = 0
            epoch += 1
            for i in range(0, len(order), batch_size):
                if step >= plan["steps"]:
                    break
                idx = order[i : i + batch_size]
                logits = model(random_shift(images[idx], generator))
                loss = F.cross_entropy(logits, labels[idx], label_smoothing=0.1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                correct += int((logits.argmax(-1) == labels[idx]).sum())
                seen += len(idx)
                per_step = (time.monotonic() - start) / step
                if max_seconds is not None and (step == probe or step % steps_per_epoch == 0):
                    # Re-fitted every epoch too: a machine that gets busier must not overrun.
                    plan["steps"] = max(step, min(plan["steps"], int(max_seconds / per_step)))
                if progress is not None:
                    if step == probe:
                        progress.estimate(per_step, plan["steps"], steps_per_epoch, max_seconds)
                    progress.step(step, plan["steps"])
            accuracy = correct / max(1, seen)
            seen_total += seen
            if progress is not None:
                progress.epoch(
                    epoch,
                    plan["steps"] / steps_per_epoch,
                    seen_total,
                    accuracy,
                    step,
                    plan["steps"],
                )
    finally:
        if progress is not None:
            progress.close()
    model.eval()
    return accuracy, step / steps_per_epoch


def warmup_cosine(step: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over the first 10% of steps, then cosine to 0."""
    warmup = max(1, total // 10)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def random_shift(images: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Shift each image by up to ``pad`` pixels (replicate-padded crop)."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2, n), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
