"""Zero-shot CLIP (method = "zeroshot-clip"): the baseline of the base->new protocol.

No training: the frozen, un-prompted CLIP image feature g(x) against the same text bank
as FedMVP's (logits = scale x mean over a class's sentences of cos(g(x), t)), so the
numbers differ from FedMVP's only by what the PromptFormer learned. With
``fedmvp.plain-template = true`` and an attributes folder without the data set's file,
every class has the single sentence "a photo of a {class}." (plain zero-shot CLIP).

It runs through the same app as every method (prototype round, rounds, Local/Base/New/HM on disk):
the state holds no trainable array, a train reply carries none and reports the zero-shot
cross-entropy of the client's training examples; every round scores the same.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from pep_fedpt.methods.fedmvp import (
    FedMVPClient,
    FedMVPServer,
    _adapter_switch,
    _check_config,
    _strategy_kwargs,
    build_fedmvp_model,
)
from pep_fedpt.methods.registry import Method, register
from strategies import wire


class ZeroShot:
    """The evaluation interface of a FedMVPModel (``eval``, ``logits``) with g(x) in place
    of the prompted f(x): the PromptFormer is never called."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def eval(self) -> ZeroShot:
        self.model.eval()
        return self

    def logits(self, images: torch.Tensor, bank) -> torch.Tensor:  # bank: TextBank
        return self.model.logits_from_features(self.model.frozen_features(images), bank)


class ZeroShotClient(FedMVPClient):
    """Evaluates zero-shot on its own classes; "training" only scores its train set."""

    def train(
        self, arrays: Mapping[str, np.ndarray], adapters_on: bool, server_round: int
    ) -> tuple[dict[str, np.ndarray], dict[str, float | int | list[int]]]:
        from pep_fedpt.fedmvp import evaluate_local

        result = evaluate_local(
            self.eval_model(arrays, False), self.data.train, self.bank(), self.device
        )
        metrics: dict[str, float | int | list[int]] = {
            wire.NUM_EXAMPLES: int(result.total),
            wire.CLASS_COUNTS: [int(n) for n in self.data.train_counts],
            wire.TRAIN_LOSS: float(result.loss),
            "train-accuracy": result.correct / result.total if result.total else 0.0,
            wire.PARTITION_ID: self.data.partition_id,
            wire.ADAPTERS_ON: 0,
        }
        return {}, metrics

    def eval_model(self, arrays: Mapping[str, np.ndarray], adapters_on: bool) -> ZeroShot:
        return ZeroShot(build_fedmvp_model(self.cfg, self.bundle))


class ZeroShotServer(FedMVPServer):
    """Base and New zero-shot; the state has nothing to train."""

    def initial_arrays(self) -> dict[str, np.ndarray]:
        return {}

    def eval_model(self, state: Mapping[str, np.ndarray]) -> ZeroShot:
        return ZeroShot(build_fedmvp_model(self.cfg, self.bundle))


register(
    Method(
        name="zeroshot-clip",
        client=ZeroShotClient,
        strategy="strategies.fedmvp:FedMVP",  # checks and counts; nothing to average
        strategy_kwargs=_strategy_kwargs,
        layout=None,
        server=ZeroShotServer,
        extra=_adapter_switch,
        check_config=_check_config,
    )
)
