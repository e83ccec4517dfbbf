"""SGPT's client side (Deng et al., CVPR 2024): shared and keyed group prompts.

Local training is SGPT's block coordinate descent, each block ``train.local-epochs``
epochs: first the shared prompt and head (group prompts and keys fixed), then the group
prompts, keys and head (shared prompt fixed) under cross-entropy plus
``prompt.key-loss-weight`` × the key loss. Each sample uses the prompts of the group whose
key is nearest to its cached z(x) (``pep_fedpt.groups``). The train reply adds the
group counts: how many local train examples select each group with the trained keys, the
server's weights for the group rows. See docs/baselines.md for what follows SGPT's code
and what this project decided.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from pep_fedpt.engine import WeightsFn, evaluate, train_epochs
from pep_fedpt.groups import group_counts, group_weights, key_loss
from pep_fedpt.methods.common import PromptClient
from pep_fedpt.models import PromptedViT
from pep_fedpt.state import trainable_arrays
from strategies import wire


def group_weights_fn(keys: torch.Tensor) -> WeightsFn:
    """One-hot weights on the nearest key, the same at training and at test time.

    ``keys`` is read at every call, so that during training the selection follows the keys
    as they learn (SGPT selects with the current keys too).
    """

    def weights(query: torch.Tensor, labels: torch.Tensor, training: bool) -> torch.Tensor:
        return group_weights(query, keys.detach())

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
        prototypes: np.ndarray | None = None,
        server_round: int = 0,
    ) -> tuple[dict[str, np.ndarray], dict[str, float | int | list[int]]]:
        model = self._model(arrays)
        keys = _group_keys(model)
        features = self.features("train")
        weights = group_weights_fn(keys)
        seed = self.train_seed(server_round)
        group_params = (model.class_prompts, keys)

        # Block 1: the shared prompt and head; the group prompts and keys stay fixed.
        for p in group_params:
            p.requires_grad_(False)
        train_epochs(model, self.data.train, features, weights, self.cfg.train, self.device, seed)
        # Block 2: the group prompts, keys and head, with the key loss; shared fixed.
        for p in group_params:
            p.requires_grad_(True)
        model.shared_prompt.requires_grad_(False)
        weight = self.cfg.prompt.key_loss_weight
        result = train_epochs(
            model,
            self.data.train,
            features,
            weights,
            self.cfg.train,
            self.device,
            seed + self.cfg.train.local_epochs,  # other shuffles than block 1's
            query_loss=lambda query: weight * key_loss(query, keys),
        )
        model.shared_prompt.requires_grad_(True)

        metrics = self.train_metrics(result)
        counts = group_counts(features, keys.detach().float().cpu())
        metrics[wire.GROUP_COUNTS] = [int(n) for n in counts]
        return trainable_arrays(model), metrics

    def evaluate(
        self, arrays: Mapping[str, np.ndarray], prototypes: np.ndarray | None = None
    ) -> dict[str, float | int]:
        model = self._model(arrays)
        result = evaluate(
            model,
            self.data.test,
            self.features("test"),
            group_weights_fn(_group_keys(model)),
            self.device,
        )
        return self.evaluate_metrics(result)
