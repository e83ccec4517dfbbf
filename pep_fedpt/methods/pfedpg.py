"""pFedPG's client side (Yang et al., ICCV 2023): personalised prompt adaptation.

The server sends this client the VPT-shallow prompt its generator made from the client's
descriptor; the client trains that prompt together with its own classification head and
replies with the trained prompt P̃ (the server takes ΔP = P̃ − P itself) and head. The
head never comes back from the server: the node keeps it (``personal_arrays``, in
``context.state``) and evaluates the prompt the server generates for it with that head.
A node that has not trained yet starts from the run's seeded initial head; one that never
trains (held out) evaluates with the head in the message, the mean of the uploaded heads.
Its server is ``strategies/pfedpg.py``; its registration is at the end.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from pep_fedpt.config import ConfigError, RunConfig
from pep_fedpt.engine import evaluate, no_features, unit_weights
from pep_fedpt.methods.central import PromptedViTServer
from pep_fedpt.methods.common import PromptClient, initial_arrays
from pep_fedpt.methods.registry import VPT_SHALLOW, Method, register
from pep_fedpt.state import trainable_arrays
from strategies import wire

HEAD_KEYS = (wire.HEAD_WEIGHT, wire.HEAD_BIAS)


class PFedPGClient(PromptClient):
    """One client's pFedPG routines: local prompt + head tuning, own head kept."""

    def personal_arrays(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The head only: the prompt is the server's (its generator's) every round."""
        return {key: arrays[key] for key in HEAD_KEYS if key in arrays}

    @functools.cached_property
    def initial_head(self) -> dict[str, np.ndarray]:
        """The run's seeded initial head (the server's initial state has the same)."""
        start = initial_arrays(self.cfg, self.backbone, self.data.num_classes)
        return {key: start[key] for key in HEAD_KEYS}

    def train(
        self,
        arrays: Mapping[str, np.ndarray],
        prototypes: np.ndarray | None = None,
        server_round: int = 0,
    ) -> tuple[dict[str, np.ndarray], dict[str, float | int | list[int]]]:
        model = self._model({**self.initial_head, **arrays})
        result = self.train_local(model, no_features(self.data.train), unit_weights, server_round)
        metrics = self.train_metrics(result)
        # The server checks that the reply comes from the partition the prompt was made for.
        metrics[wire.PARTITION_ID] = self.data.partition_id
        return trainable_arrays(model), metrics

    def evaluate(
        self, arrays: Mapping[str, np.ndarray], prototypes: np.ndarray | None = None
    ) -> dict[str, float | int]:
        model = self._model(arrays)
        return self.evaluated(
            lambda split: evaluate(
                model,
                self.data.split(split),
                no_features(self.data.split(split)),
                unit_weights,
                self.device,
            )
        )


def _strategy_kwargs(cfg: RunConfig) -> dict[str, Any]:
    return {"generator_lr": cfg.fed.generator_lr, "descriptor_dim": cfg.prompt.descriptor_dim}


def _check_config(cfg: RunConfig) -> None:
    if cfg.prompt.shared_length < 1:
        raise ConfigError(
            f"method = 'pfedpg' needs prompt.shared-length >= 1 (got "
            f"{cfg.prompt.shared_length}): its generator makes the VPT-shallow prompt"
        )


register(
    Method(
        name="pfedpg",
        client=PFedPGClient,
        strategy="strategies.pfedpg:PFedPG",
        strategy_kwargs=_strategy_kwargs,
        layout=VPT_SHALLOW,  # the generated prompt is VPT-shallow, as in its paper
        server=PromptedViTServer,
        personal=True,  # the node keeps its head (personal_arrays)
        own_aggregation=True,  # the generator step
        check_config=_check_config,
    )
)
