"""SGPT's client side (Deng et al., CVPR 2024): shared and keyed group prompts.

Local training is SGPT's block coordinate descent, each block ``train.local-epochs``
epochs: first the shared prompt and head (group prompts and keys fixed), then the group
prompts, keys and head (shared prompt fixed) under cross-entropy plus
``prompt.key-loss-weight`` × the key loss. Each sample uses the prompts of one group,
picked from its cached z(x) by key matching (``pep_fedpt.groups``): balanced by the
server's ``group.count`` while training, the nearest key at evaluation. The train reply
adds the group counts: how many local train examples the trained keys assign to each
group (the training-time rule), the server's weights for the group rows. See
docs/baselines.md for what follows SGPT's code and what this project decided. Its server
is ``strategies/sgpt.py``; its registration is at the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from pep_fedpt.config import RunConfig
from pep_fedpt.engine import WeightsFn, evaluate
from pep_fedpt.groups import group_counts, group_weights, key_loss
from pep_fedpt.methods.central import PromptedViTServer
from pep_fedpt.methods.common import PromptClient
from pep_fedpt.methods.registry import Method, PromptLayout, from_record, register
from pep_fedpt.models import PromptedViT
from pep_fedpt.state import trainable_arrays
from strategies import wire


def group_weights_fn(keys: torch.Tensor, selected: torch.Tensor | None = None) -> WeightsFn:
    """One-hot weights on each sample's group: the nearest key (``selected`` None) or
    SGPT's balanced choice given the selections so far (``selected``, (G,)).

    ``keys`` is read at every call, so that during training the selection follows the keys
    as they learn (SGPT selects with the current keys too).
    """

    def weights(query: torch.Tensor, labels: torch.Tensor, training: bool) -> torch.Tensor:
        return group_weights(query, keys.detach(), selected)

    return weights


def _group_keys(model: PromptedViT) -> torch.nn.Parameter:
    if model.group_keys is None:
        raise ValueError("an SGPT client needs a model with group keys (method = 'sgpt')")
    return model.group_keys


class SGPTClient(PromptClient):
    """One client's SGPT routines over its partition."""

    def train(
        self,
        arrays: Mapping[str, np.ndarray],
        selected: np.ndarray | None = None,
        server_round: int = 0,
    ) -> tuple[dict[str, np.ndarray], dict[str, float | int | list[int]]]:
        """``selected``: the server's ``group.count``, each group's selections so far (None
        or zeros: no history, the nearest key)."""
        model = self._model(arrays)
        keys = _group_keys(model)
        num_groups = keys.shape[0]
        history = torch.zeros(num_groups) if selected is None else torch.as_tensor(selected)
        if history.shape != (num_groups,) or bool((history < 0).any()):
            raise ValueError(
                f"{wire.GROUP_COUNT} must be {num_groups} non-negative counts, got "
                f"{history.tolist()}"
            )
        features = self.features("train")
        weights = group_weights_fn(keys, history)
        group_params = (model.class_prompts, keys)

        # Block 1: the shared prompt and head; the group prompts and keys stay fixed.
        for p in group_params:
            p.requires_grad_(False)
        self.train_local(model, features, weights, server_round)
        # Block 2: the group prompts, keys and head, with the key loss; shared fixed.
        for p in group_params:
            p.requires_grad_(True)
        model.shared_prompt.requires_grad_(False)
        weight = self.cfg.prompt.key_loss_weight
        result = self.train_local(
            model,
            features,
            weights,
            server_round,
            seed_offset=self.cfg.train.local_epochs,  # other shuffles than block 1's
            query_loss=lambda query: weight * key_loss(query, keys, history),
        )
        model.shared_prompt.requires_grad_(True)

        metrics = self.train_metrics(result)
        counts = group_counts(features, keys.detach().float().cpu(), history)
        metrics[wire.GROUP_COUNTS] = [int(n) for n in counts]
        return trainable_arrays(model), metrics

    def evaluate(
        self, arrays: Mapping[str, np.ndarray], selected: np.ndarray | None = None
    ) -> dict[str, float | int]:
        """Accuracy with each test sample's nearest key (``selected`` is not used)."""
        model = self._model(arrays)
        weights = group_weights_fn(_group_keys(model))
        return self.evaluated(
            lambda split: evaluate(
                model, self.data.split(split), self.features(split), weights, self.device
            )
        )


def central_weights(
    cfg: RunConfig, state: Mapping[str, np.ndarray], log_prior: torch.Tensor, device: torch.device
) -> WeightsFn:
    """The server's weights: each sample's group by key matching, as on clients."""
    return group_weights_fn(torch.as_tensor(state[wire.GROUP_KEYS], device=device))


def _strategy_kwargs(cfg: RunConfig) -> dict[str, Any]:
    return {"group_momentum": cfg.fed.group_momentum}


register(
    Method(
        name="sgpt",
        client=SGPTClient,
        strategy="strategies.sgpt:SGPT",
        strategy_kwargs=_strategy_kwargs,
        layout=PromptLayout(per_block="group"),
        server=PromptedViTServer,
        central_weights=central_weights,
        extra=from_record(wire.GROUP, wire.GROUP_COUNT, "SGPT"),  # every message
        own_aggregation=True,  # group momentum
    )
)
