"""A backbone this project pre-trains itself, for when no pretrained weights can be had.

Prompt tuning on a randomly initialised ViT measures nothing (its attention is nearly
uniform, so z(x) is almost the same for every image), and offline no pretrained ViT can
be downloaded. ``model.pretrained = "local:0-4"`` therefore means: train the configured
architecture with timm on classes 0-4 of the run's own data set, on the client pool only
(never on the central test split), freeze it, and tune prompts on all classes. The
weights are cached under ``~/.cache/pep-fedpt/backbones/`` (``PEP_FEDPT_CACHE`` moves
it), keyed by everything that shapes them, so every process of a run on one host loads
the same file and only the first one trains.

The weights are fixed by the recipe alone: ``model.pretrain-steps`` (or, when 0,
``model.pretrain-epochs`` full epochs) steps of one warm-up/cosine schedule, never fitted
to the machine's speed. ``model.pretrain-minutes`` only stops a pre-training that runs
too long, with a loud line; weights stopped early are another backbone, cached under a
key that holds the steps actually done, and a run that uses them records that number.
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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from pep_fedpt.atomic import atomic_write
from pep_fedpt.config import ConfigError, DataConfig, ModelConfig

LOCAL_PREFIX = "local:"
RECIPE_VERSION = 2  # bump when the training recipe below changes
# An estimate longer than this (seconds) without model.pretrain-minutes says how to cap it.
LONG_PRETRAINING = 10 * 60
# Images per pre-training step.
PRETRAIN_BATCH = 64
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


def local_backbone_path(
    model: ModelConfig, data: DataConfig, steps_done: int | None = None
) -> Path:
    """Where the pre-trained weights for this (architecture, data, classes, recipe) live;
    ``steps_done``: those of a pre-training that ``model.pretrain-minutes`` stopped after
    that many steps (another backbone, another file).

    The run seed is not part of the key: every seed of a comparison shares one backbone.
    Neither is the time cap: it does not shape a pre-training that finishes.
    """
    recipe: dict[str, object] = (
        {"steps": model.pretrain_steps}
        if model.pretrain_steps
        else {"epochs": model.pretrain_epochs}
    )
    if steps_done is not None:
        recipe["steps-done"] = steps_done
    key = json.dumps(
        {
            "recipe": RECIPE_VERSION,
            "model": model.name,
            "arch": model.timm_overrides(),
            "classes": parse_local_classes(model.pretrained),
            **recipe,
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


def _stopped_pointer(path: Path, model: ModelConfig) -> Path:
    """The note that the recipe of ``path``, capped at ``model.pretrain-minutes``, stopped
    early on this host: it names the file of those weights, so the next run with the same
    cap reuses them instead of pre-training again."""
    return path.with_name(f"{path.stem}.stopped-at-{model.pretrain_minutes:g}-min.json")


def local_backbone_in_use(model: ModelConfig, data: DataConfig) -> Path:
    """The weights a run of this config uses: the recipe's, or, where a time cap stopped
    that recipe on this host, the stopped weights (their file's key holds the steps done)."""
    path = local_backbone_path(model, data)
    pointer = _stopped_pointer(path, model)
    if not path.is_file() and model.pretrain_minutes and pointer.is_file():
        stopped = path.with_name(json.loads(pointer.read_text())["file"])
        if stopped.is_file():
            return stopped
    return path


def backbone_record(model: ModelConfig, data: DataConfig) -> dict[str, Any] | None:
    """What the run's ``local:`` backbone is (its .json beside the weights: steps done of
    how many, train accuracy...), or None when it is not pre-trained yet."""
    info = local_backbone_in_use(model, data).with_suffix(".json")
    return json.loads(info.read_text()) if info.is_file() else None


def _say_stopped(info: Mapping[str, object]) -> None:
    """The loud line of a backbone that a time cap stopped before its recipe's end."""
    line = (
        f"pep-fedpt: WARNING: the {info['source']} backbone is NOT its recipe's: "
        f"model.pretrain-minutes = {info['minutes-cap']:g} stopped pre-training after "
        f"{info['steps-done']} of {info['steps']} steps, so the weights depend on this "
        f"machine's speed. For results that a command reproduces, set model.pretrain-steps "
        f"= {info['steps-done']} (these weights' count) or model.pretrain-minutes = 0"
    )
    banner = "!" * 78
    for stream in (sys.stdout, sys.stderr):
        print(f"{banner}\n{line}\n{banner}", file=stream, flush=True)


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
    path = local_backbone_in_use(model, data)
    if not path.is_file():
        with _file_lock(local_backbone_path(model, data)):
            path = local_backbone_in_use(model, data)
            if not path.is_file():
                path = pretrain_to(local_backbone_path(model, data), model, data)
                return path
    info = backbone_record(model, data)
    if info is not None and int(info.get("steps-done", 0)) < int(info.get("steps", 0)):
        _say_stopped(info)  # every run that uses such weights says so
    return path


def pretrain_to(path: Path, model_cfg: ModelConfig, data_cfg: DataConfig) -> Path:
    """Pre-train the recipe's weights into ``path``, or, if the time cap stops it early,
    into the file keyed by the steps done (returned)."""
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
    names = class_names(dataset, classes)
    note = narrow_pretraining_note(model_cfg.pretrained, names, num_classes)
    if note:
        print(note, flush=True)
    remap = {c: i for i, c in enumerate(classes)}
    images = torch.stack([dataset[int(i)][0] for i in chosen])
    labels = torch.tensor([remap[int(dataset.targets[i])] for i in chosen])
    print(
        f"pep-fedpt: pre-training {model_cfg.name} {model_cfg.timm_overrides()} on classes "
        f"{list(classes)} of {data_cfg.dataset} ({len(chosen)} images, "
        + (
            f"{model_cfg.pretrain_steps} steps"
            if model_cfg.pretrain_steps
            else f"{model_cfg.pretrain_epochs} epochs"
        )
        + (f", stopped at {model_cfg.pretrain_minutes:g} min" if model_cfg.pretrain_minutes else "")
        + f") -> {path}",
        flush=True,
    )
    start = time.monotonic()
    steps_per_epoch = max(1, math.ceil(len(images) / PRETRAIN_BATCH))
    planned = model_cfg.pretrain_steps or steps_per_epoch * model_cfg.pretrain_epochs
    accuracy, epochs_done = train_classifier(
        model,
        images,
        labels,
        epochs=model_cfg.pretrain_epochs,
        steps=planned,
        seed=seed,
        batch_size=PRETRAIN_BATCH,
        max_seconds=model_cfg.pretrain_minutes * 60 or None,
        progress=PretrainProgress(len(images)),
    )
    steps_done = round(epochs_done * steps_per_epoch)
    if steps_done < planned:  # the cap stopped it: another backbone, in another file
        stopped = local_backbone_path(model_cfg, data_cfg, steps_done)
        pointer = {"file": stopped.name, "steps-done": steps_done, "steps": planned}
        atomic_write(_stopped_pointer(path, model_cfg), json.dumps(pointer).encode())
        path = stopped
    model.reset_classifier(0)
    weights = io.BytesIO()
    torch.save(model.state_dict(), weights)
    atomic_write(path, weights.getvalue())
    info = {
        "source": model_cfg.pretrained,
        "dataset": data_cfg.dataset,
        "classes": list(classes),
        "class-names": names,
        "images": len(chosen),
        "steps": planned,
        "steps-done": steps_done,
        "epochs": round(epochs_done, 2),
        "train-accuracy": accuracy,
        "minutes": round((time.monotonic() - start) / 60, 2),
        "minutes-cap": model_cfg.pretrain_minutes,
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
    if steps_done < planned:
        _say_stopped(info)
    return path


def class_names(dataset: object, classes: tuple[int, ...]) -> list[str]:
    """The names of ``classes`` where the data set has them (torchvision's ``classes``,
    under this project's ``Labeled`` wrapper), else their indices as text."""
    names = getattr(getattr(dataset, "base", dataset), "classes", None)
    if isinstance(names, list | tuple) and len(names) > max(classes):
        return [str(names[c]) for c in classes]
    return [str(c) for c in classes]


def narrow_pretraining_note(source: str, names: list[str], num_classes: int) -> str | None:
    """For a data set of many classes (50 or more) pre-trained on under a tenth of them
    (the default local:0-4 on CIFAR-100: 5 of 100), which classes, and how to widen it."""
    if num_classes < 50 or len(names) * 10 >= num_classes:
        return None
    shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
    half = num_classes // 2
    return (
        f"pep-fedpt: model.pretrained = {source!r} pre-trains the backbone on {len(names)} of "
        f"{num_classes} classes ({shown}); to widen it, e.g. model.pretrained = "
        f"'local:0-{half - 1}' ({half} classes: about {half / len(names):.0f}x the images, so "
        f"{half / len(names):.0f}x the time of each pre-training epoch); docs/datasets.md"
    )


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
        self.bar: Any = None  # a tqdm bar (tqdm has no type information)
        self.start = time.monotonic()

    def _print(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
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
        if max_seconds is not None and seconds > max_seconds:
            line += (
                f"; model.pretrain-minutes = {max_seconds / 60:g} will stop it after about "
                f"{int(max_seconds / per_step)} steps, and those weights are not the recipe's"
            )
        elif max_seconds is None and seconds > LONG_PRETRAINING:
            line += (
                ". That is long: lower model.pretrain-steps or model.pretrain-epochs "
                "(model.pretrain-minutes = N stops it early, with other weights on a "
                "slower machine); "
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
            bar.total = total_steps
            bar.update(done - bar.n)

    def epoch(
        self, epoch: int, epochs: float, seen: int, accuracy: float, done: int, total: int
    ) -> None:
        """The end of an epoch (the last one possibly partial)."""
        elapsed = time.monotonic() - self.start
        rate = seen / elapsed if elapsed > 0 else 0.0
        eta = elapsed / done * (total - done) if done else 0.0
        if self.bar is not None:
            self.bar.set_postfix(
                epoch=f"{epoch}/{math.ceil(epochs)}", img_s=f"{rate:.0f}", acc=f"{accuracy:.3f}"
            )
            return
        self._print(
            f"pep-fedpt: pre-training epoch {epoch}/{math.ceil(epochs)}: {rate:.0f} images/s, "
            f"accuracy {accuracy:.3f}, {_duration(elapsed)} elapsed, ETA {_duration(eta)}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
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
    steps: int | None = None,
    batch_size: int = 64,
    lr: float = 1e-3,
    max_seconds: float | None = None,
    probe_steps: int = 10,
    progress: PretrainProgress | None = None,
) -> tuple[float, float]:
    """AdamW with warm-up and cosine decay, random shifts and label smoothing.

    ``steps`` steps (None: ``epochs`` full epochs) of one schedule, whatever the machine's
    speed; ``max_seconds`` stops it early, mid-schedule (the caller says so loudly). The
    first ``probe_steps`` steps are timed, for ``progress``'s estimate of the whole
    schedule. Returns the last (possibly partial) epoch's training accuracy and the number
    of epochs done (steps done / steps per epoch).
    images: (N, 3, H, W), already normalised.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = max(1, math.ceil(len(images) / batch_size))
    plan = {"steps": steps if steps is not None else steps_per_epoch * epochs}
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, plan["steps"])
    )
    accuracy, step, start, seen_total, epoch = 0.0, 0, time.monotonic(), 0, 0
    stopped = False
    probe = min(probe_steps, steps_per_epoch, plan["steps"])
    model.train()
    try:
        while step < plan["steps"] and not stopped:
            order = torch.randperm(len(images), generator=generator)
            correct = seen = 0
            epoch += 1
            for i in range(0, len(order), batch_size):
                if step >= plan["steps"] or stopped:
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
                elapsed = time.monotonic() - start
                per_step = elapsed / step
                if max_seconds is not None and elapsed >= max_seconds:
                    stopped = True
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
