"""FedMVP's local training and evaluation on one client.

Objective per batch: CE(logits, y) + alpha (1 - cos(f(x), g(x'))), alpha =
``fedmvp.consistency-weight``. SGD with ``train.lr`` / momentum / weight-decay, a fresh
optimiser per call (as for every method of the project); the server's cosine schedule over
rounds arrives as ``lr``. ``fedmvp.step-every``:

- "batch" (the design): one optimiser step per batch;
- "round": what the released code does, one step per round on the loss of the round's last
  batch (in the seeded order of the last epoch). The released code runs the earlier batches
  forward and discards them; they change nothing (CLIP is frozen in eval mode, the
  PromptFormer has no batch statistics), so they are not computed here;
- "round-mean": one step per round on the round's mean loss: every batch's gradient is
  accumulated, weighted by its share of the examples, and applied once, at no extra memory.

The adapter switch: at the end of each epoch (with a step per round: at the end of the
round, on the loss that step follows) a client whose training objective fell below
``fedmvp.adapter-threshold`` switches to training the adapters, and stays switched; the
switch is returned so that it can travel with the client's reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, RandomSampler, Subset

from pep_fedpt.config import RunConfig
from pep_fedpt.engine import (
    Batches,
    autocast,
    grad_scaler,
    indexed_batches,
    training_precision,
)
from pep_fedpt.fedmvp.model import FedMVPModel
from pep_fedpt.fedmvp.text_bank import TextBank


@dataclass
class FedMVPTrainResult:
    loss: float  # mean training objective per example (CE + alpha * consistency)
    accuracy: float  # of the training predictions
    num_examples: int  # examples in the local training set
    adapters_on: bool  # the switch after this call (it persists)
    ce_loss: float
    consistency_loss: float
    steps: int  # optimiser steps taken


class FedMVPEval(NamedTuple):
    correct: int
    total: int
    loss: float  # mean cross-entropy

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@torch.no_grad()
def flipped_features(
    model: FedMVPModel, dataset: Dataset, device: torch.device, batch_size: int = 128
) -> torch.Tensor:
    """g(x') of every example, in dataset order: (N, D) float32 on the CPU.

    The consistency target never changes (frozen encoder, deterministic flip): computed once
    (and cached by the caller like z(x)), it saves the frozen forward of every step.
    """
    chunks = [torch.zeros(0, model.clip.visual.output_dim)]
    for images, _, _ in indexed_batches(dataset, batch_size, False, 0, device):
        with autocast(device):
            chunks.append(model.frozen_features(images.flip(-1)).float().cpu())
    return torch.cat(chunks)


def _optimizer(model: FedMVPModel, cfg: RunConfig, lr: float) -> torch.optim.SGD:
    params = [p for p in model.promptformer.parameters() if p.requires_grad]
    return torch.optim.SGD(
        params, lr=lr, momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay
    )


def train_local(
    model: FedMVPModel,
    dataset: Dataset,
    bank: TextBank,
    cfg: RunConfig,
    device: torch.device,
    seed: int,
    adapters_on: bool,
    lr: float | None = None,
    flipped: torch.Tensor | None = None,
) -> FedMVPTrainResult:
    """``train.local-epochs`` epochs over ``dataset`` (labels index ``bank``'s classes).

    ``lr`` overrides ``train.lr`` (the round's value of a schedule); ``flipped``: g(x') of
    every example (``flipped_features``), else computed in every step. The forward pass
    runs in ``train.precision`` (``training_precision``: "auto" is bf16 on a CUDA device
    with bf16, fp32 on the CPU; fp16 with a gradient scaler); the PromptFormer's
    parameters, gradients and what the client sends stay float32.
    """
    size = len(dataset)  # type: ignore[arg-type]  # torch's Dataset declares no __len__; every dataset here has one
    if size == 0:
        raise ValueError("the local training split is empty")
    if flipped is not None and flipped.shape[0] != size:
        raise ValueError(f"flipped holds {flipped.shape[0]} features for {size} examples")
    per_round = cfg.fedmvp.step_every == "round-mean"
    last_batch = cfg.fedmvp.step_every == "round"
    epochs, alpha = cfg.train.local_epochs, cfg.fedmvp.consistency_weight
    precision = training_precision(cfg.train.precision, device)
    scaler = grad_scaler(device, precision)
    model.adapters_on = adapters_on
    model.train()
    optimizer = _optimizer(model, cfg, cfg.train.lr if lr is None else lr)
    optimizer.zero_grad(set_to_none=True)
    total, ce_total, cons_total, correct, steps = 0.0, 0.0, 0.0, 0, 0
    if last_batch:
        return _step_on_last_batch(model, dataset, bank, cfg, device, seed, optimizer, flipped)
    batches = Batches(dataset, cfg.train.batch_size, True, device)
    for epoch in range(epochs):
        epoch_loss = 0.0
        for images, labels, positions in batches.epoch(seed + epoch):
            target = None if flipped is None else flipped[positions].to(device)
            with autocast(device, precision):
                features = model.encode_image(images, bank)
                logits = model.logits_from_features(features, bank)
                ce = F.cross_entropy(logits.float(), labels)
                cons = model.consistency_loss(features.float(), images, target)
            loss = ce + alpha * cons
            if per_round:
                scaler.scale(loss * (len(labels) / (size * epochs))).backward()
            else:
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                steps += 1
            n = len(labels)
            epoch_loss += loss.item() * n
            ce_total += ce.item() * n
            cons_total += cons.item() * n
            correct += int((logits.argmax(dim=-1) == labels).sum())
        total += epoch_loss
        below = epoch_loss / size < cfg.fedmvp.adapter_threshold
        if not per_round and below and not model.adapters_on:
            model.adapters_on = True  # from the next epoch on, the adapters alone train
            optimizer = _optimizer(model, cfg, cfg.train.lr if lr is None else lr)
    if per_round:
        scaler.step(optimizer)
        scaler.update()
        steps += 1
        if total / (size * epochs) < cfg.fedmvp.adapter_threshold:
            model.adapters_on = True
    seen = size * epochs
    return FedMVPTrainResult(
        loss=total / seen,
        accuracy=correct / seen,
        num_examples=size,
        adapters_on=model.adapters_on,
        ce_loss=ce_total / seen,
        consistency_loss=cons_total / seen,
        steps=steps,
    )


def _step_on_last_batch(
    model: FedMVPModel,
    dataset: Dataset,
    bank: TextBank,
    cfg: RunConfig,
    device: torch.device,
    seed: int,
    optimizer: torch.optim.SGD,
    flipped: torch.Tensor | None,
) -> FedMVPTrainResult:
    """``step-every = "round"``: one step on the last batch of the last epoch's seeded order;
    the loss and accuracy reported are that batch's, as the released code logs them."""
    epoch = cfg.train.local_epochs - 1
    # The order indexed_batches shuffles into (the DataLoader's own sampler and seed),
    # without reading an image: only the last batch's are read.
    generator = torch.Generator().manual_seed(seed + epoch)
    order = list(RandomSampler(dataset, generator=generator))  # type: ignore[arg-type]  # torch's Dataset declares no __len__; every dataset here has one
    tail = order[(len(order) - 1) // cfg.train.batch_size * cfg.train.batch_size :]
    batch = next(indexed_batches(Subset(dataset, tail), len(tail), False, 0, device, 0))
    images, labels, inside = batch
    positions = torch.as_tensor(tail)[inside]
    target = None if flipped is None else flipped[positions].to(device)
    precision = training_precision(cfg.train.precision, device)
    scaler = grad_scaler(device, precision)
    with autocast(device, precision):
        features = model.encode_image(images, bank)
        logits = model.logits_from_features(features, bank)
        ce = F.cross_entropy(logits.float(), labels)
        cons = model.consistency_loss(features.float(), images, target)
    loss = ce + cfg.fedmvp.consistency_weight * cons
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    if loss.item() < cfg.fedmvp.adapter_threshold:
        model.adapters_on = True  # decided on the loss the step followed; from the next round
    return FedMVPTrainResult(
        loss=loss.item(),
        accuracy=float((logits.argmax(dim=-1) == labels).float().mean()),
        num_examples=len(dataset),  # type: ignore[arg-type]  # torch's Dataset declares no __len__; every dataset here has one
        adapters_on=model.adapters_on,
        ce_loss=ce.item(),
        consistency_loss=cons.item(),
        steps=1,
    )


class Scorer(Protocol):
    """What ``evaluate_local`` calls: a FedMVPModel, or zero-shot CLIP's ``ZeroShot``."""

    def eval(self) -> Any: ...

    def logits(self, images: torch.Tensor, bank: TextBank) -> torch.Tensor: ...


@torch.no_grad()
def evaluate_local(
    model: Scorer,
    dataset: Dataset,
    bank: TextBank,
    device: torch.device,
    batch_size: int = 128,
) -> FedMVPEval:
    """Accuracy and cross-entropy over ``bank``'s classes, adapters as ``model.adapters_on``."""
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    for images, labels, _ in indexed_batches(dataset, batch_size, False, 0, device):
        with autocast(device):
            logits = model.logits(images, bank).float()
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=-1) == labels).sum())
        total += len(labels)
    return FedMVPEval(correct=correct, total=total, loss=loss_sum / max(total, 1))
